"""Group commit: the events of requests that arrive together are stored in one transaction.

Each request hands its events to `GroupCommitter.store` and waits. One writer thread takes
everything waiting, stores it with one statement and one commit (`EventOutbox.record_requests`),
then answers each request with its own events' fate. While it commits, the next requests queue
up, so the group grows with the load and no request waits for a timer. A request is answered
only after the commit that holds its events; when that commit fails, every request of the group
gets the error (the outbox down: each answers 503 and its client sends again), and no other
request does.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass

from shim.outbox import EventBatch, EventOutbox, Recorded

log = logging.getLogger("poligraph.shim.committer")
MAX_GROUP_EVENTS = 5000  # a group stops growing here (one request may hold that many alone)


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


class GroupCommitter:
    def __init__(
        self,
        outbox: EventOutbox,
        on_stored: Callable[[list[EventBatch], list[list[Recorded]]], None] = lambda _requests, _stored: None,
    ) -> None:
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
            recorded = self.outbox.record_requests(requests)
        except BaseException as exc:  # noqa: BLE001 - every waiting request gets it, nothing is lost
            for waiting in group:
                waiting.loop.call_soon_threadsafe(_settle, waiting.future, exc)
            return
        try:
            self.on_stored(requests, recorded)
        except Exception:  # the events are stored: a failing listener must not turn that into an error
            log.exception("after-commit listener failed")
        for waiting, result in zip(group, recorded, strict=True):
            waiting.loop.call_soon_threadsafe(_settle, waiting.future, result)
