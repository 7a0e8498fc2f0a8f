"""JSON values read the way the Inngest server's Go decoder reads them, not the way Python does.

Python's `json` accepts NaN and ±Infinity, turns 1e400 into inf, raises ValueError on integers
of more than 4300 digits and RecursionError on deep nesting, and keeps lone UTF-16 surrogates
(`"\\ud800"`), which no UTF-8 database can store. Go's encoding/json refuses the first three
(every number it decodes into an `any` is a float64), replaces each lone surrogate with U+FFFD,
and stops at a nesting depth. This module does the same, with Go's error texts, and with its own
depth limit (MAX_DEPTH, lower than Go's 10 000 so that every accepted value can still be
serialised again by Python and PostgreSQL). Everything it refuses raises `JSONValueError`.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from shim.errors import ShimError

MAX_DEPTH = 512  # nesting levels of one event; Go allows 10 000, real events use 2 or 3
_NUMBER_ECHO = 40  # characters of a refused number repeated in the error text
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")
_WHITESPACE = re.compile(r"[ \t\n\r]*")
# A decoded JSON object: an event's data, a run's parameters, a Prefect event. Such documents stay
# plain dicts (that is what they are); the shim's own rows and results are dataclasses.
JSONObject = dict[str, Any]


class JSONValueError(ShimError, ValueError):
    """Not a JSON value the Inngest server would accept; the text is Go's (or Go-like). The
    request is refused with HTTP 400 (`shim.events` turns it into an `EventError`)."""

    status = 400
    reason = "bad_request"


def go_char(char: str) -> str:
    """A character as Go's encoding/json quotes it in its errors."""
    if char == "'":
        return "'\\''"
    if char == '"':
        return "'\"'"
    return f"'{char}'" if char.isprintable() else json.dumps(char)


def _refuse_constant(name: str) -> Any:
    # NaN, Infinity, -Infinity: not JSON. Go stops at their first letter.
    if name.startswith("-"):
        raise JSONValueError("invalid character 'I' in numeric literal")
    raise JSONValueError(f"invalid character {go_char(name[0])} looking for beginning of value")


def _out_of_range(literal: str) -> JSONValueError:
    shown = literal if len(literal) <= _NUMBER_ECHO else f"{literal[:_NUMBER_ECHO]}…"
    return JSONValueError(f"json: cannot unmarshal number {shown} into Go value of type float64")


def _float(literal: str) -> float:
    value = float(literal)
    if math.isinf(value):  # 1e400: Go's float64 cannot hold it
        raise _out_of_range(literal)
    return value


def _int(literal: str) -> int:
    # Past 18 digits check the float64 range first: Python's int() refuses 4300+ digits, and Go
    # refuses anything over ~1.8e308 (309 digits) anyway.
    if len(literal) > 18 and math.isinf(float(literal)):
        raise _out_of_range(literal)
    return int(literal)


_DECODER = json.JSONDecoder(parse_float=_float, parse_int=_int, parse_constant=_refuse_constant)

# Python's decoder messages, in Go's words.
_GO_SYNTAX = {
    "Expecting value": "looking for beginning of value",
    "Expecting property name enclosed in double quotes": "looking for beginning of object key string",
    "Expecting ':' delimiter": "after object key",
    "Expecting ',' delimiter": "after value: expecting ',' or a closing bracket",
    "Invalid control character at": "in string literal",
    "Invalid \\escape": "in string escape code",
    "Invalid \\uXXXX escape": "in \\u hexadecimal character escape",
}


def _syntax_error(exc: json.JSONDecodeError) -> JSONValueError:
    if exc.pos >= len(exc.doc) or exc.msg.startswith("Unterminated string"):
        return JSONValueError("unexpected end of JSON input")
    context = _GO_SYNTAX.get(exc.msg.split(":")[0] if exc.msg.startswith("Invalid \\") else exc.msg)
    return JSONValueError(f"invalid character {go_char(exc.doc[exc.pos])} {context or exc.msg}")


def skip_whitespace(text: str, pos: int) -> int:
    match = _WHITESPACE.match(text, pos)
    return match.end() if match else pos


def decode_value(text: str, pos: int) -> tuple[Any, int]:
    """The JSON value starting at `pos` (no leading whitespace) and the index just after it."""
    try:
        value, end = _DECODER.raw_decode(text, pos)
    except json.JSONDecodeError as exc:
        raise _syntax_error(exc) from None
    except RecursionError:  # deeper than Python's stack allows: deeper than MAX_DEPTH too
        raise _too_deep() from None
    # Cheap tests first: most events have neither many brackets nor surrogate escapes.
    if text.count("[", pos, end) + text.count("{", pos, end) > MAX_DEPTH and _depth(value) > MAX_DEPTH:
        raise _too_deep()
    if _SURROGATE_ESCAPE.search(text, pos, end):
        value = _replace_surrogates(value)
    return value, end


def _too_deep() -> JSONValueError:
    return JSONValueError(f"exceeded max depth: JSON nested more than {MAX_DEPTH} levels deep")


def _depth(value: Any) -> int:
    """Nesting depth (a scalar is 0, `[]` is 1), without recursion."""
    deepest = 0
    stack = [(value, 1)] if isinstance(value, dict | list) else []
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        children = node.values() if isinstance(node, dict) else node
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return deepest


def _replace_surrogates(value: Any) -> Any:
    """Lone surrogates (valid pairs were already joined by the decoder) become U+FFFD, as in Go.

    Recursive, which is safe: the value is at most MAX_DEPTH deep."""
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value)
    if isinstance(value, list):
        return [_replace_surrogates(item) for item in value]
    if isinstance(value, dict):
        return {_replace_surrogates(key): _replace_surrogates(item) for key, item in value.items()}
    return value
