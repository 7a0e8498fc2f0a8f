"""Parse and validate an Event API body the way the Inngest server does: one object or an array,
per-event decoding, then its normalisation and validation, in its order (docs/event-api-protocol.md).

Error texts are the server's, since clients show them to users. Differences, on purpose: a
request with a bad event is rejected whole (nothing is stored), where Inngest would already have
published the events before it; and a NUL in an event name is refused, since no PostgreSQL text
column holds it (docs/event-api-protocol.md, "What the shim does with bad input").
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from shim.errors import ShimError
from shim.jsonvalues import JSONValueError, decode_value, go_char, skip_whitespace

MAX_EVENT_BYTES = 3 * 1024 * 1024  # AbsoluteMaxEventSize
MAX_EVENTS = 5000
MIN_TS = 315532800000  # 1980-01-01T00:00:00Z in ms
MAX_TS = 4102444800000  # 2100-01-01T00:00:00Z in ms
INTERNAL_PREFIX = "inngest/"
_INT64 = (-(2**63), 2**63 - 1)


class EventError(ShimError, ValueError):
    """The request is refused with HTTP 400 and this text (the Inngest server's), nothing stored."""

    status: int = 400
    reason = "bad_request"


@dataclass
class InboundEvent:
    name: str
    data: dict[str, Any]
    ts: int
    id: str = ""
    v: str = ""
    extra: dict[str, Any] = field(default_factory=dict)  # user, meta: kept, unused

    def as_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"name": self.name, "data": self.data, "ts": self.ts}
        if self.id:
            body["id"] = self.id
        if self.v:
            body["v"] = self.v
        return {**body, **self.extra}


def parse_body(raw: bytes, now_ms: int | None = None) -> list[InboundEvent]:
    """The request's events, decoded and validated one after another as the server streams them.

    Invalid UTF-8 becomes U+FFFD (as in Go). An array is read element by element, so the count
    and size limits stop the work early and no single decoding step holds the interpreter long.
    """
    text = raw.decode("utf-8", errors="replace")
    now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
    pos = skip_whitespace(text, 0)
    if pos == len(text):
        return []  # an empty body is no events, answered 200
    try:
        if text[pos] == "{":
            if len(raw) > MAX_EVENT_BYTES:
                raise EventError(_too_big(len(raw)))
            item, end = decode_value(text, pos)
            end = skip_whitespace(text, end)
            if end < len(text):
                raise EventError(f"invalid character {go_char(text[end])} after top-level value")
            return [_event(item, now_ms)]
        if text[pos] == "[":
            return _array(text, skip_whitespace(text, pos + 1), now_ms, ascii_only=raw.isascii())
    except JSONValueError as exc:
        raise EventError(str(exc)) from None
    raise EventError("Request body must contain an event object or an array of event objects")


def _array(text: str, pos: int, now_ms: int, ascii_only: bool) -> list[InboundEvent]:
    """Events of a JSON array whose `[` is before `pos`; what follows its `]` is ignored, as Go
    stops reading there."""
    events: list[InboundEvent] = []
    if text.startswith("]", pos):
        return events
    while True:
        if len(events) == MAX_EVENTS:
            raise EventError(f"Cannot have more than {MAX_EVENTS} events in a batch")
        item, end = decode_value(text, pos)
        size = end - pos if ascii_only else len(text[pos:end].encode())
        if size > MAX_EVENT_BYTES:
            raise EventError(_too_big(size))
        events.append(_event(item, now_ms))
        pos = skip_whitespace(text, end)
        if text.startswith(",", pos):
            pos = skip_whitespace(text, pos + 1)
        elif text.startswith("]", pos):
            return events
        elif pos == len(text):
            raise EventError("unexpected end of JSON input")
        else:
            raise EventError(f"invalid character {go_char(text[pos])} after array element")


def _event(item: Any, now_ms: int) -> InboundEvent:
    return normalize(decode(item), now_ms)


def decode(item: Any) -> InboundEvent:
    """Go's json.Unmarshal into event.Event: field types are strict."""
    if not isinstance(item, dict):
        raise EventError(f"json: cannot unmarshal {_go_kind(item)} into Go value of type event.Event")
    name = _typed(item, "name", str, "string")
    data = item.get("data")
    if data is not None and not isinstance(data, dict):
        raise EventError(
            f"json: cannot unmarshal {_go_kind(data)} into Go struct field Event.data "
            "of type map[string]interface {}"
        )
    ts = item.get("ts")
    if ts is not None and (
        isinstance(ts, bool) or not isinstance(ts, int) or not _INT64[0] <= ts <= _INT64[1]
    ):
        raise EventError(
            f"json: cannot unmarshal {_go_kind(ts, with_value=True)} into Go struct field "
            "Event.ts of type int64"
        )
    user = item.get("user")
    if user is not None and not isinstance(user, dict):
        raise EventError(
            f"json: cannot unmarshal {_go_kind(user)} into Go struct field Event.user "
            "of type map[string]interface {}"
        )
    extra = {k: item[k] for k in ("user", "meta") if k in item}
    return InboundEvent(
        name=name or "",
        data=dict(data or {}),
        ts=int(ts or 0),
        id=_typed(item, "id", str, "string") or "",
        v=_typed(item, "v", str, "string") or "",
        extra=extra,
    )


def normalize(event: InboundEvent, now_ms: int) -> InboundEvent:
    """NormalizeInbound then Validate, in the server's order."""
    if event.name.lower().startswith(INTERNAL_PREFIX):
        raise EventError(f"event name is reserved for internal use: {event.name}")
    event.data.pop("_inngest", None)
    if event.ts == 0:
        event.ts = now_ms
    if not event.name:
        raise EventError("event name is empty")
    if "\x00" in event.name:  # no PostgreSQL text can hold it, and no real event has one
        raise EventError("event name contains a NUL character")
    if event.ts < MIN_TS:
        raise EventError("timestamp is before Jan 1, 1980")
    if event.ts > MAX_TS:
        raise EventError("timestamp is after Jan 1, 2100")
    return event


def _typed(item: dict[str, Any], key: str, kind: type, go_type: str) -> Any:
    value = item.get(key)
    if value is not None and not isinstance(value, kind):
        raise EventError(
            f"json: cannot unmarshal {_go_kind(value)} into Go struct field Event.{key} of type {go_type}"
        )
    return value


def _go_kind(value: Any, with_value: bool = False) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return f"number {json.dumps(value)}" if with_value else "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return "null"


def _too_big(size: int) -> str:
    return f"Event is over the max size: Max {MAX_EVENT_BYTES} bytes / Size {size} bytes"
