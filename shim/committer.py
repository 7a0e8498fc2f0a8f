"""Group commit: the events of requests that arrive together are stored in one transaction.

Each request hands its events to `store` and waits. One writer takes everything waiting, stores
it with one statement and one commit, then answers each request with its own events' fate.
While it commits, the next requests queue up, so the group grows with the load and no request
waits for a timer. A request is answered only after the commit that holds its events; when that
commit fails, every request of the group gets the error (the outbox down: each answers 503 and
its client sends again), and no other request does. A group whose transaction conflicted
(serialization failure, deadlock: `shim.db_errors`) is written again at once, a few times.

Two writers, the same contract (`committer_for` picks one):
* `AsyncGroupCommitter` (PostgreSQL): a task on the event loop, on one asyncio psycopg
  connection. Handing each request to a thread and back cost more CPU than the whole statement
  (~80 µs of ~700 per request, measured), and the intake is CPU-bound on one core.
* `GroupCommitter` (SQLite, whose driver has no asyncio side): a writer thread, through SQLAlchemy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import psycopg

from shim.db_errors import retry_conflicts, retry_conflicts_async
from shim.outbox import EventBatch, EventOutbox, Recorded

log = logging.getLogger("poligraph.shim.committer")
MAX_GROUP_EVENTS = 5000  # a group stops growing here (one request may hold that many alone)
# A connection idle this long is checked (one round trip) before a group is written on it, as
# SQLAlchemy's pre-ping does: after a database restart the first group is then not refused.
PING_AFTER_IDLE_SECONDS = 1.0
CONNECT_TIMEOUT_SECONDS = 10
WRITE_TIMEOUT_SECONDS = 30.0  # a group's connection and statement, together
OnStored = Callable[[list[EventBatch], list[list[Recorded]]], None]


class Committer(Protocol):
    async def store(self, events: EventBatch) -> list[Recorded]: ...

    def queued(self) -> int: ...

    async def aclose(self) -> None: ...


def committer_for(outbox: EventOutbox, on_stored: OnStored) -> Committer:
    if outbox.engine.dialect.name == "postgresql":
        return AsyncGroupCommitter(outbox, on_stored)
    return GroupCommitter(outbox, on_stored)


@dataclass
class _Waiting:
    events: EventBatch
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[list[Recorded]]


def _settle(future: asyncio.Future[list[Recorded]], result: list[Recorded] | BaseException) -> None:
    if future.done():  # the request went away (its client disconnected)
        return
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)


def _settle_from_thread(waiting: _Waiting, result: list[Recorded] | BaseException) -> None:
    waiting.loop.call_soon_threadsafe(_settle, waiting.future, result)


def _settle_on_loop(waiting: _Waiting, result: list[Recorded] | BaseException) -> None:
    _settle(waiting.future, result)


def _answer(
    group: list[_Waiting],
    outcome: list[list[Recorded]] | BaseException,
    on_stored: OnStored,
    settle: Callable[[_Waiting, list[Recorded] | BaseException], None],
) -> None:
    """Each request of a written group gets its events' fate, or the group's error; the
    after-commit listener hears of a group that was stored."""
    if isinstance(outcome, BaseException):
        for waiting in group:
            settle(waiting, outcome)
        return
    try:
        on_stored([waiting.events for waiting in group], outcome)
    except Exception:  # the events are stored: a failing listener must not turn that into an error
        log.exception("after-commit listener failed")
    for waiting, result in zip(group, outcome, strict=True):
        settle(waiting, result)


class GroupCommitter:
    def __init__(self, outbox: EventOutbox, on_stored: OnStored = lambda _requests, _stored: None) -> None:
        self.outbox = outbox
        self.on_stored = on_stored  # called in the writer thread after each commit
        self._queue: queue.SimpleQueue[_Waiting | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    async def store(self, events: EventBatch) -> list[Recorded]:
        """Store one request's events (all or none); returns once they are committed."""
        self._ensure_writer()
        loop = asyncio.get_running_loop()
        waiting = _Waiting(events, loop, loop.create_future())
        self._queue.put(waiting)
        return await waiting.future

    def queued(self) -> int:
        """Requests waiting for the writer (not counting the group being written)."""
        return self._queue.qsize()

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close)

    def close(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=30)
            self._thread = None

    def _ensure_writer(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._write_loop, name="shim-committer", daemon=True)
                self._thread.start()

    def _write_loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            group, size, closing = [first], len(first.events), False
            while size < MAX_GROUP_EVENTS:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    closing = True
                    break
                group.append(more)
                size += len(more.events)
            self._commit(group)
            if closing:
                return

    def _commit(self, group: list[_Waiting]) -> None:
        requests = [waiting.events for waiting in group]
        try:
            outcome: list[list[Recorded]] | BaseException = retry_conflicts(
                log, self.outbox.record_requests, requests
            )
        except BaseException as exc:  # noqa: BLE001 - every waiting request gets it, nothing is lost
            outcome = exc
        _answer(group, outcome, self.on_stored, _settle_from_thread)


class AsyncGroupCommitter:
    """Group commit on PostgreSQL, written by a task on the requests' event loop."""

    def __init__(self, outbox: EventOutbox, on_stored: OnStored = lambda _requests, _stored: None) -> None:
        self.outbox = outbox
        self.on_stored = on_stored  # called on the event loop after each commit
        self._waiting: deque[_Waiting] = deque()
        self._writer: asyncio.Task[None] | None = None
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._conninfo: str | None = None
        self._last_used = 0.0

    async def store(self, events: EventBatch) -> list[Recorded]:
        """Store one request's events (all or none); returns once they are committed."""
        loop = asyncio.get_running_loop()
        waiting = _Waiting(events, loop, loop.create_future())
        self._waiting.append(waiting)
        if self._writer is None or self._writer.done():
            self._writer = loop.create_task(self._write_loop(), name="shim-committer")
        return await waiting.future

    def queued(self) -> int:
        return len(self._waiting)

    async def aclose(self) -> None:
        if self._writer is not None:
            await asyncio.wait([self._writer], timeout=30)
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    async def _write_loop(self) -> None:
        while self._waiting:
            group = [self._waiting.popleft()]
            size = len(group[0].events)
            while self._waiting and size < MAX_GROUP_EVENTS:
                group.append(self._waiting.popleft())
                size += len(group[-1].events)
            try:
                outcome: list[list[Recorded]] | BaseException = await retry_conflicts_async(
                    log, self._record, [waiting.events for waiting in group]
                )
            except Exception as exc:  # every waiting request gets it, nothing is lost
                outcome = exc
            _answer(group, outcome, self.on_stored, _settle_on_loop)

    async def _record(self, requests: list[EventBatch]) -> list[list[Recorded]]:
        try:
            async with asyncio.timeout(WRITE_TIMEOUT_SECONDS):
                conn = await self._connection()
                try:
                    return await self.outbox.record_requests_async(conn, requests)
                except psycopg.Error:
                    if conn.broken or conn.closed:  # a new connection for the next group
                        await self._drop()
                    raise
        except TimeoutError:
            # The database holds the connection without answering: the group's clients get a 503
            # and send again (same ids: a group that did commit is then found as duplicates).
            await self._drop()
            silent = f"the outbox did not answer within {WRITE_TIMEOUT_SECONDS} s"
            raise psycopg.OperationalError(silent) from None
        finally:
            self._last_used = time.monotonic()

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 1)

    async def _connection(self) -> psycopg.AsyncConnection[Any]:
        conn = self._conn
        if conn is not None and not (conn.broken or conn.closed):
            if time.monotonic() - self._last_used < PING_AFTER_IDLE_SECONDS:
                return conn
            try:
                await conn.execute("SELECT 1")
                return conn
            except psycopg.OperationalError:
                pass
        await self._drop()
        if self._conninfo is None:  # one blocking query, once: the engine's url and search path
            self._conninfo = await asyncio.to_thread(self.outbox.postgres_conninfo)
        self._conn = await psycopg.AsyncConnection.connect(
            self._conninfo, autocommit=True, connect_timeout=CONNECT_TIMEOUT_SECONDS
        )
        return self._conn
