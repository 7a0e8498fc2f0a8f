"""How the Event API is served: uvicorn with the shim's connection limits.

* `limit_concurrency`: at most `max_connections` open connections are served; a request on
  one more gets uvicorn's 503 (retried by the SDKs).
* h11 always (also when httptools is installed), with a deadline on each request's head:
  uvicorn only times out idle keep-alive connections, so a client trickling its headers one byte
  at a time would hold its connection forever. The body has its own deadline (`shim.body`).
* No access log from uvicorn (it writes the path, which holds the event key): `shim.logs`.
"""

from __future__ import annotations

import asyncio
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from shim.settings import ShimSettings


class HeadDeadlineH11Protocol(H11Protocol):
    """uvicorn's h11 protocol; a connection whose next request head has not fully arrived
    `head_timeout` seconds after it opened (or after the previous response) is closed."""

    head_timeout: float = 30.0
    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._await_head()

    def data_received(self, data: bytes) -> None:
        cycle = self.cycle
        super().data_received(data)
        if self.cycle is not cycle:  # a request head was read: its app now runs
            self._stop_waiting()

    def on_response_complete(self) -> None:
        cycle = self.cycle
        super().on_response_complete()
        if self.cycle is cycle and not self.transport.is_closing():  # idle until the next head
            self._await_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_waiting()
        super().connection_lost(exc)

    def _await_head(self) -> None:
        self._stop_waiting()
        self._head_timer = self.loop.call_later(self.head_timeout, self._head_overdue)

    def _head_overdue(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing():
            self.transport.close()

    def _stop_waiting(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None


def server_config(app: Any, settings: ShimSettings, **overrides: Any) -> uvicorn.Config:
    """The uvicorn configuration of the Event API (`python -m shim` and the tests)."""

    class Protocol(HeadDeadlineH11Protocol):
        head_timeout = settings.read_timeout_seconds

    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "http": Protocol,
        # uvicorn counts the connection asking too: N + 1 lets N connections in at once
        "limit_concurrency": settings.max_connections + 1,
        "access_log": False,
        "log_config": None,  # our handlers (shim.logs), not uvicorn's
        **overrides,
    }
    return uvicorn.Config(app, **options)
