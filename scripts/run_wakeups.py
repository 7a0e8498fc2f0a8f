"""When a worker should look for runs: at once when Prefect says a run of its pool was created or
one ended, at the time a run waiting for later is due, and every PREFECT_WORKER_QUERY_SECONDS
whatever happens (the worker's own poll: the fallback while the events stream is down).

The Prefect server emits `prefect.flow-run.<State>` for every state a run takes, related to the
run's work pool; `get_events_subscriber` streams them over the events websocket, as Prefect's
own runners and workers follow cancellations. Written on that public client rather than on
Prefect's `ObservationDelivery` (the stream-or-poll machine its observers use), which is
private; the worker's poll loop already is the fallback, so what is left is a reconnect loop.

What each event means for the worker:

* `Scheduled` (a new run, or one rescheduled to now): poll now; if its start is later (a cron run
  created ahead), poll again at that time.
* `AwaitingConcurrencySlot`, `AwaitingRetry` and other scheduled states: poll at the run's
  scheduled time, never at once (the worker's own refused proposal makes the first one: polling
  at once would propose again at once, and loop).
* A final state: poll now (the run's deployment slot is free: its queued run may go).
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import random
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from uuid import UUID

from flows.run_states import FINAL
from scripts.supervisor import Backoff

log = logging.getLogger("poligraph.worker.wakeups")

# doubling from 1 s up to 30 s, from 1 s again after a connection that lasted a minute
RECONNECT = Backoff(first_seconds=1.0, max_seconds=30.0, stable_seconds=60.0)
FINAL_TYPES = frozenset(state_type.value for state_type in FINAL)  # as the events name them


class RunWakeups:
    """Calls `poll` when runs of the work pool may be due; one poll at a time, wake-ups during a
    poll make one more."""

    def __init__(
        self,
        poll: Callable[[], Awaitable[object]],
        scheduled_time: Callable[[UUID], Awaitable[datetime | None]],
    ) -> None:
        self._poll = poll
        self._scheduled_time = scheduled_time
        self._changed = asyncio.Event()  # only wakes the loop: what is due is below
        self._due_now = False
        self._timers: list[float] = []  # monotonic times to poll at (a heap)
        self.connected = False  # the events stream is up: a run created now starts at once
        self.polls = 0

    def wake(self) -> None:
        self._due_now = True
        self._changed.set()

    def wake_at(self, when: datetime) -> None:
        delay = (when - datetime.now(UTC)).total_seconds()
        if delay <= 0:
            self.wake()
            return
        heapq.heappush(self._timers, time.monotonic() + delay)
        self._changed.set()  # the loop recomputes its deadline

    def _due(self) -> bool:
        return self._due_now or bool(self._timers and self._timers[0] <= time.monotonic())

    async def poll_loop(self) -> None:
        while True:
            while not self._due():
                timeout = max(0.0, self._timers[0] - time.monotonic()) if self._timers else None
                try:
                    await asyncio.wait_for(self._changed.wait(), timeout)
                except TimeoutError:
                    pass
                self._changed.clear()
            self._due_now = False
            while self._timers and self._timers[0] <= time.monotonic() + 0.05:
                heapq.heappop(self._timers)
            self.polls += 1
            try:
                await self._poll()
            except Exception:  # the worker's own loop polls again; this one waits for the next event
                log.warning("poll after an event failed", exc_info=True)

    def on_event(self, name: str, payload: dict[str, object], flow_run_id: UUID | None) -> None:
        state = payload.get("validated_state")
        state_type = state.get("type") if isinstance(state, dict) else None
        state_name = name.removeprefix("prefect.flow-run.")
        if state_type in FINAL_TYPES or (state_type == "SCHEDULED" and state_name in ("Scheduled", "Late")):
            self.wake()
        if state_type == "SCHEDULED" and flow_run_id is not None:
            asyncio.get_running_loop().create_task(self._wake_when_due(flow_run_id))

    async def _wake_when_due(self, flow_run_id: UUID) -> None:
        try:
            when = await self._scheduled_time(flow_run_id)
        except Exception:
            log.debug("could not read flow run %s", flow_run_id, exc_info=True)
            return
        if when is not None and when > datetime.now(UTC):
            self.wake_at(when)

    async def follow_events(self, pool_id: Callable[[], UUID | None]) -> None:
        """Follow the pool's flow-run events for ever, reconnecting with backoff; each
        (re)connection is followed by a poll (events missed meanwhile are found that way)."""
        from prefect.events.clients import get_events_subscriber
        from prefect.events.filters import (
            EventAnyResourceFilter,
            EventFilter,
            EventNameFilter,
            EventOccurredFilter,
        )

        failures = 0  # connections lost in a row, each within RECONNECT.stable_seconds of its start
        while True:
            pool = pool_id()
            if pool is None:  # the worker has not synced with the server yet
                await asyncio.sleep(1.0)
                continue
            event_filter = EventFilter(
                event=EventNameFilter(prefix=["prefect.flow-run."]),
                any_resource=EventAnyResourceFilter(id=[f"prefect.work-pool.{pool}"]),
                occurred=EventOccurredFilter(since=datetime.now(UTC)),
            )
            connected_at = time.monotonic()
            try:
                async with get_events_subscriber(filter=event_filter, reconnection_attempts=0) as events:
                    self.connected = True
                    self.wake()
                    log.info("following the work pool's flow-run events")
                    async for event in events:
                        run_id = _flow_run_id(event.resource.id)
                        self.on_event(event.event, dict(event.payload), run_id)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("events stream lost (%s); polling meanwhile", type(exc).__name__)
            finally:
                self.connected = False
            stable = time.monotonic() - connected_at > RECONNECT.stable_seconds
            failures = 1 if stable else failures + 1
            await asyncio.sleep(RECONNECT.delay(failures) * (0.7 + 0.6 * random.random()))


def _flow_run_id(resource_id: str) -> UUID | None:
    try:
        return UUID(resource_id.removeprefix("prefect.flow-run."))
    except ValueError:
        return None
