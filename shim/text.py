"""Untrusted text made safe to log or to store as a message: bounded, one line, no control
characters (a newline in an event name must not forge a log line, a 1 MB name must not write a
1 MB line, a NUL cannot go into a PostgreSQL `text` column).

The characters escaped are the core's one-line set (`deployments.safe_text.UNSAFE_ONE_LINE`);
the way they are escaped and cut is the shim's own, which its log lines depend on: every control
character escaped (`\\n` and `\\t` too), ANSI codes kept, escaped (`\\x1b[31m`), not removed,
the text cut *before* it is escaped and the cut said after it (`…(+N chars)`), a lone surrogate
as `\\uXXXX`. `safe_text` differs on each of the four, so this function stays here rather than
as four more parameters there."""

from __future__ import annotations

import re

from deployments.safe_text import UNSAFE_ONE_LINE

# C0/C1 controls (newlines, NUL, ESC...), line/paragraph separators, bidi overrides, surrogates
_UNSAFE = UNSAFE_ONE_LINE


def _escape(match: re.Match[str]) -> str:
    return match.group().encode("unicode_escape", "backslashreplace").decode("ascii")


def printable(text: str, limit: int = 200) -> str:
    """`text` cut to `limit` characters (saying how many were cut), control characters escaped
    as Python would write them (`\\n`, `\\x00`, `\\u202e`)."""
    cut = len(text) - limit
    if cut > 0:
        text = text[:limit]
    text = _UNSAFE.sub(_escape, text)
    return f"{text}…(+{cut} chars)" if cut > 0 else text
