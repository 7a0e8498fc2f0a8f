"""The Inngest Event API's reply shapes and header names, byte for byte what its server sends
(docs/event-api-protocol.md). Clients check the JSON `status` field, so every reply carries one."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SEED_HEADER = "x-inngest-event-id-seed"
SERVER_KIND_HEADER = "X-Inngest-Server-Kind"
# Seconds a client is told to wait before it sends again: the shim is busy (a moment), its
# database cannot take writes (a failover, a restart: longer).
BUSY_RETRY_AFTER = 1
UNAVAILABLE_RETRY_AFTER = 5


@dataclass(frozen=True)
class Reply:
    status: int
    body: dict[str, Any] = field(default_factory=dict)
    retry_after: int | None = None  # seconds, sent as the Retry-After header


def accepted(ids: list[str]) -> Reply:
    return Reply(200, {"ids": ids, "status": 200})


def refused(error: str, status: int = 400, retry_after: int | None = None) -> Reply:
    """The server's error shape; the SDKs read `error` whatever the HTTP status."""
    return Reply(status, {"ids": [], "status": status, "error": error}, retry_after)


def too_large(max_bytes: int) -> Reply:
    """413: inngest-py raises at once with this text; inngest-js shows it after its retries."""
    return refused(f"Request body is over the max size: Max {max_bytes} bytes", 413)


def too_slow(seconds: float) -> Reply:
    return refused(f"Request body was not received within {seconds:g} seconds", 408)


def unavailable() -> Reply:
    """The shim's own database is down or cannot take writes: a 5xx, so that every SDK sends the
    events again."""
    return refused("The event store is unavailable; send the events again", 503, UNAVAILABLE_RETRY_AFTER)


def busy() -> Reply:
    """As many requests as allowed are in progress, or their bodies hold as many bytes as
    allowed: a 5xx with Retry-After, so that every SDK sends the events again."""
    return refused("The event API is busy; send the events again", 503, BUSY_RETRY_AFTER)


def unknown_key() -> Reply:
    return Reply(401, {"status": 401, "message": "", "error": "Event key not found"})


def health() -> Reply:
    return Reply(200, {"status": 200, "message": "OK"})


def dev_info(missing_event_keys: bool) -> Reply:
    """What `GET /dev` answers: inngest-js v3 in inferred dev mode only needs valid JSON."""
    return Reply(
        200,
        {
            "version": "poligraph-jobs-shim",
            "isSingleNodeService": True,
            "isMissingSigningKey": True,
            "isMissingEventKeys": missing_event_keys,
            "functions": [],
            "handlers": [],
        },
    )
