"""Text from outside (a sync script's output, an exception's message) made safe to store and show.

One function, `safe_text`, everywhere such text reaches storage or display: the SyncJob row
(`error`, and the `result` values that carry output: `safe_values`), Prefect state messages,
artifacts, and the run log. Its output is:

* valid UTF-8 that PostgreSQL `text` and `jsonb` accept: no NUL, no lone surrogate (bytes that
  are not UTF-8 become `\\xNN`: decoded with `surrogateescape`, then escaped like a control
  character, after the ANSI sequences are gone, so an escape never joins one);
* free of ANSI escape sequences, which are *removed*, not escaped: colour codes (`\\x1b[31m`),
  cursor moves and terminal titles say how to paint text, not what it says; the Prefect UI, the
  admin page and psql would show them as noise (`\\x1b[32m✔\\x1b[0m done`), and a script that
  colours its output when it thinks it has a terminal (chalk with FORCE_COLOR) must read the same
  as one that does not. A lone ESC that starts no sequence is escaped like any control character;
* free of control characters: C0 and C1 controls (but `\\n` and `\\t` in multi-line text), line
  and paragraph separators and bidi overrides, escaped as Python writes them (`\\x00`, `\\r`,
  `\\u202e`), so that a line cannot forge another line or reorder what a reader sees;
* every other character kept as it is, in order: French accents, emoji (and their zero-width
  joiners), CJK, non-breaking spaces;
* at most `limit` characters when a limit is given, the cut said by a marker (`… [123 chars cut]`).

It is idempotent: safe text passes through unchanged, so each boundary may apply it again.
`plain_text` is the fallback a database still refusing a text gets (ASCII only: a database
whose encoding is not UTF-8). The core layer: nothing else of the project, no Prefect.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

# ECMA-48 escape sequences, as terminals read them: CSI (ESC [ params intermediates final: SGR
# colours, cursor moves, erase), OSC (ESC ] ... BEL or ESC \: titles, hyperlinks) and the two-byte
# Fe escapes. Written here because it is one expression: the libraries that strip ANSI codes
# (strip-ansi ports, rich's AnsiDecoder) use this same pattern, rich building styled text we would
# throw away. None of them crosses a newline (a line split first strips the same codes).
ANSI_SEQUENCE = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b\n]*(?:\x07|\x1b\\)|[@-Z\\-_])")

# What is escaped: C0 controls (but \t \n, which multi-line text keeps), DEL and C1 controls,
# surrogates (not encodable), line/paragraph separators, bidi embeddings, overrides and isolates.
# The one-line set is also the shim's (shim/text.py: one-line event text, escaped and bounded
# its own way for its logs).
_OTHERS = "\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff"
_UNSAFE_MULTILINE = re.compile(f"[\x00-\x08\x0b-\x1f{_OTHERS}]")
UNSAFE_ONE_LINE = re.compile(f"[\x00-\x1f{_OTHERS}]")  # what one line may not hold, wherever it is shown

CUT_MARKER = "… [{count:,} chars cut]"
PLAIN_CUT_MARKER = "... [{count:,} chars cut]"


def safe_text(value: str | bytes, limit: int | None = None, *, multiline: bool = True) -> str:
    """`value` (bytes are read as UTF-8) without ANSI sequences, its control characters escaped
    (`\\n` and `\\t` kept when `multiline`), at most `limit` characters (with a marker)."""
    text = value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value
    unsafe = _UNSAFE_MULTILINE if multiline else UNSAFE_ONE_LINE  # ESC (\x1b) is in both
    if unsafe.search(text) is None:  # the common case: nothing to strip or escape
        return text if limit is None or len(text) <= limit else _cut(text, limit, [])
    if "\x1b" in text:
        text = ANSI_SEQUENCE.sub("", text)
    if limit is not None and len(text) > limit:
        # only the head can be shown: escaping it alone keeps the work bounded by the limit
        return _cut(text, limit, list(unsafe.finditer(text, 0, limit + 1)))
    escaped = unsafe.sub(_escape, text)
    if limit is not None and len(escaped) > limit:  # short enough, until escaped
        return _cut(text, limit, list(unsafe.finditer(text)))
    return escaped


def plain_text(value: str | bytes, limit: int | None = None, *, multiline: bool = True) -> str:
    """`safe_text`, then every character outside printable ASCII escaped too (`é` -> `\\xe9`):
    what any database encoding takes. The fallback for a text a database still refused."""
    text = safe_text(value, limit, multiline=multiline).encode("ascii", "backslashreplace").decode("ascii")
    if limit is None or len(text) <= limit:
        return text
    marker = PLAIN_CUT_MARKER.format(count=len(text))  # the longest it can be
    keep = max(0, limit - len(marker))
    return (text[:keep] + PLAIN_CUT_MARKER.format(count=len(text) - keep))[:limit]


def safe_values(value: Any, clean: Callable[[str], str] = safe_text) -> Any:
    """A JSON-shaped value (a SyncJob `result`) with every string in it, keys too, passed
    through `clean`; other values as they are."""
    if isinstance(value, str):
        return clean(value)
    if isinstance(value, dict):
        return {clean(k) if isinstance(k, str) else k: safe_values(v, clean) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [safe_values(item, clean) for item in value]
    return value


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    if "\udc80" <= char <= "\udcff":  # a byte that was not UTF-8 (surrogateescape)
        return f"\\x{ord(char) - 0xDC00:02x}"
    return char.encode("unicode_escape").decode("ascii")


def _cut(text: str, limit: int, unsafe: list[re.Match[str]]) -> str:
    """The head of `text` (longer than `limit`) that fits in `limit` characters once its `unsafe`
    matches are escaped, never splitting an escape, then the marker with the characters cut."""
    room = limit - len(CUT_MARKER.format(count=len(text)))  # the longest marker this text can need
    if room < 0:
        return CUT_MARKER.format(count=len(text))[:limit]
    pieces: list[str] = []
    shown = end = 0  # characters written, and how far into `text` they reach
    for match in unsafe:
        gap = min(match.start() - end, room - shown)  # the plain characters before it that fit
        pieces.append(text[end : end + gap])
        shown, end = shown + gap, end + gap
        if end < match.start():
            break
        escaped = _escape(match)
        if shown + len(escaped) > room:
            break
        pieces.append(escaped)
        shown, end = shown + len(escaped), match.end()
    else:
        pieces.append(text[end : end + room - shown])
        end = min(len(text), end + room - shown)
    return "".join(pieces) + CUT_MARKER.format(count=len(text) - end)
