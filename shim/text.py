"""Untrusted text made safe to log or to store as a message: bounded, one line, no control
characters (a newline in an event name must not forge a log line, a 1 MB name must not write a
1 MB line, a NUL cannot go into a PostgreSQL `text` column)."""

from __future__ import annotations

import re

# C0/C1 controls (newlines, NUL, ESC...), line/paragraph separators, bidi overrides, surrogates
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


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
