"""How the Event API is served: uvicorn, with limits on what costs memory and CPU rather than on
quiet sockets (docs/event-api-protocol.md, "Limits and bad input").

* A connection costs a few kB while it waits for a request head, so many may be open at once:
  `max_connections` (10,000) of them are served (uvicorn's `limit_concurrency`: a request on one
  more gets uvicorn's 503). What a request holds once its head is in (its body, its parsing, its
  commit) is bounded by the app (`shim.admission`), not by counting sockets.
* File descriptors: the process's soft RLIMIT_NOFILE is raised towards its hard limit so that
  the connections fit, with `FD_RESERVE` kept for the databases, Prefect and the logs; when the
  hard limit is too low the ceiling is lowered to fit it (a warning says so). A connection
  accepted past what the descriptors allow is closed at once, before anything of it is read,
  so the shim never runs out of descriptors for its own database connections.
* h11 always (also when httptools is installed), with a deadline on each request's head
  (`head_deadline_seconds`, 10 s): uvicorn only times out idle keep-alive connections, so a
  client trickling its headers one byte at a time would hold its connection forever. The body
  has its own deadline (`shim.body`).
* No access log from uvicorn (it writes the path, which holds the event key): `shim.logs`.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import sys
from dataclasses import dataclass
from typing import Any

import psutil
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from shim.settings import ShimSettings

log = logging.getLogger("poligraph.shim.server")
# Descriptors kept for everything but client connections: the outbox's pool and the group
# committer's connection, the app's database, Prefect's client, SQLite's files, logs, the loop.
FD_RESERVE = 256


@dataclass(frozen=True)
class ConnectionLimits:
    served: int  # requests on connections past this many get uvicorn's 503
    open: int  # connections past this many are closed as they are accepted (descriptors)


def raise_fd_limit(wanted: int) -> int:
    """The soft RLIMIT_NOFILE raised to `wanted` (at most the hard limit); the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        raised = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        if raised > soft:
            resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
            soft = raised
    return soft


def connection_limits(max_connections: int, reserve: int = FD_RESERVE) -> ConnectionLimits:
    """The connection ceilings that the file-descriptor limit allows, raising its soft limit
    (up to the hard one) when `max_connections` would not fit."""
    used = psutil.Process().num_fds()
    # each served connection may have one more waiting for its 503 (up to twice the ceiling)
    soft = raise_fd_limit(used + reserve + 2 * max_connections)
    room = sys.maxsize if soft == resource.RLIM_INFINITY else max(1, soft - used - reserve)
    served = min(max_connections, room)
    if served < max_connections:
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        log.warning(
            "POLIGRAPH_SHIM_MAX_CONNECTIONS=%d does not fit the file-descriptor limit (%d, hard %s, "
            "%d in use): at most %d connections are served; raise the limit (systemd: LimitNOFILE=)",
            max_connections,
            soft,
            "unlimited" if hard == resource.RLIM_INFINITY else hard,
            used,
            served,
        )
    return ConnectionLimits(served=served, open=room)


class ShimH11Protocol(H11Protocol):
    """uvicorn's h11 protocol; a connection whose next request head has not fully arrived
    `head_timeout` seconds after it opened (or after the previous response) is closed, and one
    accepted past `most_connections` is closed at once."""

    head_timeout: float = 10.0
    most_connections: int = sys.maxsize
    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.most_connections:
            transport.abort()  # no descriptor to spare: nothing of it is read
            return
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
    limits = connection_limits(settings.max_connections)

    class Protocol(ShimH11Protocol):
        head_timeout = settings.head_deadline_seconds
        most_connections = limits.open

    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "http": Protocol,
        # uvicorn counts the connection asking too: N + 1 lets N connections in at once
        "limit_concurrency": limits.served + 1,
        "access_log": False,
        "log_config": None,  # our handlers (shim.logs), not uvicorn's
        **overrides,
    }
    return uvicorn.Config(app, **options)
