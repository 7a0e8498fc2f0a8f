"""Turn pending events into flow runs, exactly once, whatever fails or restarts in between.

It runs as two asyncio tasks of the app's lifespan (`start`, `aclose`), on the app's event loop,
with one long-lived Prefect API client (`shim.prefect_api`); its database calls (SQLAlchemy,
blocking) go to threads, a few at a time, so that the loop is never held by them. Each
pass claims a batch of due events (on PostgreSQL locked with FOR UPDATE SKIP LOCKED for the whole
pass, so another shim passes them by), creates their runs with Prefect's bulk endpoint, one
request per deployment and up to `dispatch_concurrency` requests at once, then writes every
outcome and commits. Each run is created with the idempotency key `<flow/deployment>:<event row
pk>`: Prefect scopes keys per flow, not per deployment (docs/prefect.md, "Idempotency keys"),
and the row pk is unique per accepted event, so if the shim dies after Prefect created a run but
before the row says so, the next attempt gets the same run back instead of a second one.

Prefect's health is shared by all requests (`PrefectGate`): a 429/503 holds every request for
its Retry-After (or a short growing backoff); an unreachable server is probed with one
`GET /health` at a time, while the events wait untouched, and when it answers the backlog goes
at full rate at once. Errors that concern one event (its deployment missing, a 500) postpone
that event alone, with exponential backoff. Events that need no run (a refused event with a
jobId) are handled whatever Prefect's state.

The loop is woken by intake when it stored events that need work, and polls every
`poll_seconds` for events that came due (postponed ones, another shim's leftovers). A pass whose
outbox is unavailable or cannot take writes (`shim.db_errors`) is tried again at the next poll,
with one warning for the whole outage; one that conflicted (serialization failure, deadlock) at
once, a few times: its rows were not written, and their runs, if Prefect created them, come back
by their idempotency keys.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import ParamSpec, TypeVar

import anyio
import anyio.to_thread
from sqlalchemy.engine import Connection

from deployments.syncjob import syncjob_repository, utcnow
from shim.db_errors import CONFLICT_ATTEMPTS, OutageLog, is_conflict, is_unavailable
from shim.event_feed import EventFeed
from shim.mapping import FAIL_JOB, RUN, Action
from shim.metrics import ShimMetrics
from shim.outbox import DONE, FAILED, PENDING, ClaimedEvent, EventOutbox, Outcome
from shim.prefect_api import (
    BULK_LIMIT,
    DeploymentNotFound,
    PrefectApi,
    PrefectBusy,
    PrefectDown,
    PrefectError,
    RunRequest,
    RunResult,
)
from shim.settings import ShimSettings

log = logging.getLogger("poligraph.shim.dispatcher")
# Per-run refusals of the bulk endpoint that no retry changes (the parameters broke the schema).
_PERMANENT_RUN_ERRORS = ("Parameter validation failed", "Parameter schema enforcement", "Invalid schema")
# Per-run errors of the bulk endpoint that say "the database was busy" (a run that failed on
# Prefect's SQLite lock): the whole server is busy, not this event.
_BUSY_RUN_ERRORS = ("database is locked", "OperationalError", "DBAPIError", "Service Unavailable")
EMIT_BATCH = 500  # Prefect events per POST /events
EMIT_INTERVAL = 0.5  # seconds between two looks at the queue of Prefect events
# Threads for the dispatcher's database calls (its own: never waiting behind the app's). A pass
# makes one call at a time, but the SyncJob writes of refused runs come from requests at once.
DB_THREADS = 4
P = ParamSpec("P")
T = TypeVar("T")


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def idempotency_key(row: ClaimedEvent) -> str:
    return f"{row.deployment}:{row.pk}"


def run_tags(row: ClaimedEvent) -> list[str]:
    """The tags a run gets from its event: the UI's filter by event name, and the event id that
    links the run to the outbox row, the client's reply and the Prefect event feed."""
    return ["inngest", f"event:{row.name}", f"inngest-event:{row.event_id}"]


def run_labels(row: ClaimedEvent) -> dict[str, str]:
    """The same link as key-value labels on the run, readable without parsing tags."""
    return {"inngest.event.id": row.event_id, "inngest.event.name": row.name}


class PrefectGate:
    """When the next Prefect request may go, shared by every request of the dispatcher."""

    def __init__(self, settings: ShimSettings, metrics: ShimMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.up = True
        self.not_before = 0.0  # monotonic: busy until then
        self._busy_delay = 0.0
        self._probe_delay = 0.0
        self._next_probe = 0.0
        # Requests in flight at once, adapted: halved when Prefect says it is busy, one more after
        # each request that went through, up to `dispatch_concurrency`. Prefect on SQLite takes
        # one writer at a time (concurrent bulk requests fail each other); on PostgreSQL the
        # limit is reached and stays.
        self.concurrency = float(settings.dispatch_concurrency)
        # Runs per bulk request, adapted the same way to requests that time out.
        self.chunk = BULK_LIMIT

    def open(self) -> bool:
        return self.up and time.monotonic() >= self.not_before

    def seconds_to_wait(self) -> float:
        """Until requests may go again (or the next probe is due)."""
        until = self._next_probe if not self.up else self.not_before
        return max(0.0, until - time.monotonic())

    def ok(self) -> None:
        self._busy_delay = 0.0
        self.concurrency = min(float(self.settings.dispatch_concurrency), self.concurrency + 1)
        self.chunk = min(BULK_LIMIT, self.chunk + 10)
        if not self.up:
            log.info("Prefect is reachable again")
        self.up = True
        self._probe_delay = 0.0
        self.metrics.prefect_up.set(1)

    def busy(self, retry_after: float | None, timed_out: bool = False) -> None:
        """429/503 or a timeout: every request waits the Retry-After, else 0.1 s doubling up to
        5 s; fewer requests at once, and after a timeout smaller ones."""
        self._busy_delay = min(5.0, max(0.1, self._busy_delay * 2))
        self.concurrency = max(1.0, self.concurrency / 2)
        if timed_out:
            self.chunk = max(1, self.chunk // 2)
        delay = retry_after if retry_after is not None else self._busy_delay
        self.not_before = max(
            self.not_before, time.monotonic() + min(delay, self.settings.max_backoff_seconds)
        )

    def down(self) -> None:
        if self.up:
            log.warning("Prefect is unreachable: events wait, probing its health")
        self.up = False
        self.metrics.prefect_up.set(0)
        self._schedule_probe()

    def probe_due(self) -> bool:
        return not self.up and time.monotonic() >= self._next_probe

    def _schedule_probe(self) -> None:
        limit = min(self.settings.probe_seconds, self.settings.max_backoff_seconds)
        self._probe_delay = min(limit, max(0.25, self._probe_delay * 2))
        self._next_probe = time.monotonic() + self._probe_delay


class Dispatcher:
    def __init__(
        self,
        outbox: EventOutbox,
        settings: ShimSettings,
        metrics: ShimMetrics | None = None,
        event_feed: EventFeed | None = None,
    ) -> None:
        self.outbox = outbox
        self.settings = settings
        self.metrics = metrics or ShimMetrics()
        self.event_feed = event_feed if event_feed is not None else EventFeed(enabled=False)
        self.gate = PrefectGate(settings, self.metrics)
        # The event loop it runs on and what belongs to it, set by `bind` (the app's lifespan).
        self._loop: asyncio.AbstractEventLoop | None = None
        self._api: PrefectApi | None = None
        self._wake: asyncio.Event | None = None
        self._pass_lock: asyncio.Lock | None = None
        self._db_threads: anyio.CapacityLimiter | None = None
        self._stopping = False
        self._backlog = False  # the last pass was full, or Prefect is busy: events must wait
        self._tasks: list[asyncio.Task[None]] = []

    # --- lifecycle (on the app's event loop) -----------------------------------------------
    def bind(self) -> None:
        """Attach to the running event loop (the app's): passes, the Prefect client and wake-ups
        belong to it from now on. `start` binds too; a dispatcher bound but not started only
        makes the passes asked for (`dispatch_once`, `dispatch_due`)."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._pass_lock = asyncio.Lock()
        self._db_threads = anyio.CapacityLimiter(DB_THREADS)
        self._stopping = False

    async def start(self) -> None:
        """The dispatch loop and the Prefect events' loop, as tasks of the running event loop."""
        self.bind()
        if self._api is None:  # its TLS context takes tens of ms to build: not on the loop
            self._api = await self._in_thread(PrefectApi, self.settings)
        self._tasks = [
            asyncio.create_task(self._run(), name="shim-dispatcher"),
            asyncio.create_task(self._emit_loop(), name="shim-event-feed"),
        ]

    def notify(self, needs_prefect: bool = True) -> None:
        """Events that need work were stored (thread-safe, cheap, coalesced). Events that need
        Prefect wake nobody while Prefect is unreachable or busy: the gate's own wake-up finds them."""
        if needs_prefect and not self.gate.open() and self._loop is not None:
            return
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None and not loop.is_closed():
            loop.call_soon_threadsafe(wake.set)

    async def aclose(self, timeout: float = 10) -> None:
        """Stop the tasks (a pass under way finishes first) and close the Prefect client."""
        if self._loop is None:
            return
        self._stopping = True
        self.notify()
        if self._tasks:
            _, late = await asyncio.wait(self._tasks, timeout=timeout)
            for task in self._tasks:
                if task in late:
                    task.cancel()
                    log.error("dispatcher task ended with an error", exc_info=TimeoutError())
                elif not task.cancelled() and (error := task.exception()) is not None:
                    log.error("dispatcher task ended with an error", exc_info=error)
            self._tasks = []
        await self._close()
        self._loop = None

    async def dispatch_once(self) -> int:
        """Run one pass now, on the running loop; how many events it handled."""
        if self._loop is None:
            self.bind()
        return await self._one_pass()

    def dispatch_due(self) -> int:
        """Run one pass now from a thread other than the loop's (tests, tools); how many events it
        handled. On the bound loop while it runs, else on an event loop of its own for this pass."""
        loop = self._loop
        if loop is not None and loop.is_running():
            if _running_loop() is loop:
                raise RuntimeError("dispatch_due() would wait on its own event loop: await dispatch_once()")
            return asyncio.run_coroutine_threadsafe(self._one_pass(), loop).result()
        return asyncio.run(self._pass_alone())

    async def _pass_alone(self) -> int:
        self.bind()
        try:
            return await self._one_pass()
        finally:
            await self._close()
            self._loop = None

    def api(self) -> PrefectApi:
        if self._api is None:
            self._api = PrefectApi(self.settings)
        return self._api

    async def _close(self) -> None:
        if self._api is not None:
            await self._api.aclose()
            self._api = None

    async def _in_thread(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """A blocking (database) call, in a worker thread: the loop goes on meanwhile."""
        return await anyio.to_thread.run_sync(
            functools.partial(fn, *args, **kwargs), limiter=self._db_threads
        )

    # --- the loops (tasks of the app's event loop) -------------------------------------------
    async def _run(self) -> None:
        assert self._wake is not None
        outage = OutageLog(log, "dispatch")
        conflicts = 0
        while not self._stopping:
            try:
                handled = await self._one_pass()
                outage.ok()
                conflicts = 0
            except Exception as exc:  # the database may be down too: try again later
                handled = 0
                if is_conflict(exc) and conflicts < CONFLICT_ATTEMPTS - 1:
                    conflicts += 1
                    continue  # nothing was written: the same pass again, at once
                conflicts = 0
                if is_unavailable(exc):
                    outage.failed(exc)
                else:
                    log.exception("dispatch pass failed")
            self._backlog = handled >= self.settings.batch_size or not self.gate.open()
            if handled >= self.settings.batch_size and self.gate.open():
                continue  # a full batch: more may be waiting
            timeout = self.settings.poll_seconds
            if not self.gate.open():
                timeout = min(timeout, max(0.01, self.gate.seconds_to_wait()))
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except TimeoutError:
                pass
            self._wake.clear()

    async def _emit_loop(self) -> None:
        while not self._stopping:
            await asyncio.sleep(EMIT_INTERVAL)
            await self.emit_pending()

    async def emit_pending(self) -> None:
        """Send the queued Prefect events, in batches, while Prefect takes them and no backlog
        waits for its runs."""
        dropped = self.event_feed.take_dropped()
        if dropped:
            self.metrics.prefect_events.labels("dropped").inc(dropped)
            log.warning("%d Prefect events dropped (queue full while Prefect was unreachable)", dropped)
        while self.gate.open() and not self._backlog and (batch := self.event_feed.take(EMIT_BATCH)):
            try:
                await self.api().emit_events(batch)
            except PrefectBusy as exc:
                self.event_feed.give_back(batch)
                self.gate.busy(exc.retry_after, exc.timed_out)
                return
            except PrefectDown:
                self.event_feed.give_back(batch)
                self.gate.down()
                return
            except PrefectError as exc:
                self.metrics.prefect_events.labels("dropped").inc(len(batch))
                log.warning("%d Prefect events refused by Prefect and dropped: %s", len(batch), exc)
                continue
            self.metrics.prefect_events.labels("sent").inc(len(batch))

    # --- one pass -------------------------------------------------------------------------
    async def _one_pass(self) -> int:
        assert self._pass_lock is not None
        async with self._pass_lock:
            if self.gate.probe_due():
                self.metrics.prefect_probes.inc()
                if await self.api().healthy():
                    self.gate.ok()
                else:
                    self.gate.down()
            actions = (RUN, FAIL_JOB) if self.gate.open() else (FAIL_JOB,)
            if self.outbox.engine.dialect.name == "postgresql":
                # the rows stay locked until the outcomes are committed: one transaction, its
                # statements in threads, Prefect's requests on the loop in between
                # (two trips to a thread per pass, not one per statement: each costs a hop)
                conn, rows = await self._in_thread(self._begin_and_claim, actions)
                try:
                    outcomes = await self._handle(rows)
                except BaseException:
                    await self._in_thread(conn.close)  # rolled back: the rows are due again
                    raise
                await self._in_thread(self._commit_and_close, conn, outcomes)
            else:
                # SQLite: read, then write in a transaction of its own, so the write lock is
                # held only for the updates (one dispatcher per SQLite file: no lock needed)
                rows = await self._in_thread(self._claim_alone, actions)
                outcomes = await self._handle(rows)
                await self._in_thread(self._apply_alone, outcomes)
            return len(rows)

    # --- its database calls (blocking: in threads) ---------------------------------------
    def _begin_and_claim(self, actions: tuple[Action, ...]) -> tuple[Connection, list[ClaimedEvent]]:
        """A transaction begun, its due rows claimed (and locked, until it ends)."""
        conn = self.outbox.engine.connect()
        try:
            conn.begin()
            return conn, self.outbox.claim_due(conn, self.settings.batch_size, actions=actions)
        except BaseException:
            conn.close()
            raise

    def _commit_and_close(self, conn: Connection, outcomes: list[Outcome]) -> None:
        try:
            self.outbox.apply(conn, outcomes)
            conn.commit()
        finally:
            conn.close()  # rolled back unless committed

    def _claim_alone(self, actions: tuple[Action, ...]) -> list[ClaimedEvent]:
        with self.outbox.engine.connect() as conn:
            return self.outbox.claim_due(conn, self.settings.batch_size, actions=actions)

    def _apply_alone(self, outcomes: list[Outcome]) -> None:
        with self.outbox.engine.begin() as conn:
            self.outbox.apply(conn, outcomes)

    async def _handle(self, rows: list[ClaimedEvent]) -> list[Outcome]:
        outcomes: list[Outcome] = []
        by_deployment: dict[str | None, list[ClaimedEvent]] = {}
        for row in rows:
            if row.action == FAIL_JOB:
                await self._in_thread(self._fail_job, row.job_id, row.reason)
                self.metrics.dispatch_attempts.labels("job_failed").inc()
                outcomes.append(Outcome(row.pk, DONE))
            elif row.action == RUN:
                by_deployment.setdefault(row.deployment, []).append(row)
            else:  # pragma: no cover - only pending rows get here
                outcomes.append(Outcome(row.pk, DONE))
        size = self.gate.chunk
        chunks = [group[i : i + size] for group in by_deployment.values() for i in range(0, len(group), size)]
        width = int(self.gate.concurrency)
        slots = asyncio.Semaphore(width)

        async def create(index: int, chunk: list[ClaimedEvent]) -> list[Outcome]:
            async with slots:
                # the first wave always goes; later requests only while Prefect is fine
                if index >= width and not self.gate.open():
                    return []  # untouched: still pending, due, and unlocked at commit
                return await self._create_chunk(chunk)

        for done in await asyncio.gather(*(create(i, chunk) for i, chunk in enumerate(chunks))):
            outcomes.extend(done)
        return outcomes

    async def _create_chunk(self, rows: list[ClaimedEvent]) -> list[Outcome]:
        name = str(rows[0].deployment)  # a RUN row always names its deployment
        api = self.api()
        requests = [
            RunRequest(row.parameters or {}, idempotency_key(row), run_tags(row), run_labels(row))
            for row in rows
        ]
        deployment_id: str | None = None
        try:
            deployment_id = await api.deployment_id(name)
            results = await api.create_runs(deployment_id, requests)
        except DeploymentNotFound as exc:
            api.forget_deployment(name)  # redeployed under a new id, or not there yet
            return self._retry_later(rows, exc, exc.reason)
        except PrefectBusy as exc:
            self.gate.busy(exc.retry_after, exc.timed_out)
            return self._retry_when_open(rows, exc, exc.reason)
        except PrefectDown as exc:
            self.gate.down()
            return self._retry_when_open(rows, exc, exc.reason)
        except PrefectError as exc:
            if not exc.retriable:  # Prefect refused these parameters: retrying won't help
                return [await self._refused(row, f"Prefect refused the run of {name}: {exc}") for row in rows]
            return self._retry_later(rows, exc, exc.reason)
        finally:
            self.metrics.prefect_request_seconds.observe(api.last_call_seconds)
        outcomes: list[Outcome] = []
        busy: list[ClaimedEvent] = []
        failed: list[ClaimedEvent] = []
        for row, result in zip(rows, results, strict=True):
            error = result.error or ""
            if result.flow_run_id is not None:
                outcomes.append(self._created(row, result.flow_run_id, deployment_id))
            elif error.startswith(_PERMANENT_RUN_ERRORS):
                outcomes.append(await self._refused(row, f"Prefect refused the run of {name}: {error}"))
            elif any(marker in error for marker in _BUSY_RUN_ERRORS):
                busy.append(row)
            else:
                failed.append(row)
        if busy:  # Prefect's database was busy for these: the server is, not the events
            self.gate.busy(None)
            locked = RuntimeError(_first_error(results, busy, rows))
            outcomes.extend(self._retry_when_open(busy, locked, "busy"))
        else:
            self.gate.ok()
        if failed:
            refused = RuntimeError(_first_error(results, failed, rows))
            outcomes.extend(self._retry_later(failed, refused, "error"))
        return outcomes

    def _created(self, row: ClaimedEvent, flow_run_id: str, deployment_id: str | None) -> Outcome:
        self.metrics.dispatch_attempts.labels("created").inc()
        self.metrics.dispatch_latency.observe(max(0.0, (utcnow() - row.received_at).total_seconds()))
        self.event_feed.run_created(row, deployment_id, flow_run_id)
        log.info("event %s (%s) -> flow run %s", row.event_id, row.name, flow_run_id)
        return Outcome(row.pk, DONE, flow_run_id=flow_run_id)

    async def _refused(self, row: ClaimedEvent, reason: str) -> Outcome:
        await self._in_thread(self._fail_job, row.job_id, reason)
        self.metrics.dispatch_attempts.labels("failed").inc()
        self.event_feed.run_refused(row, reason)
        log.warning("event %s (%s): %s", row.event_id, row.name, reason)
        return Outcome(row.pk, FAILED, error=reason)

    def _retry_when_open(self, rows: list[ClaimedEvent], exc: Exception, kind: str) -> list[Outcome]:
        """Prefect busy or down: the events are due again as soon as the gate opens."""
        self.metrics.dispatch_errors.labels(kind).inc()
        return self._postponed(rows, exc, lambda _attempts: 0.0)

    def _retry_later(self, rows: list[ClaimedEvent], exc: Exception, kind: str) -> list[Outcome]:
        """A failure of these events alone: exponential backoff, each."""
        self.metrics.dispatch_errors.labels(kind).inc()
        return self._postponed(
            rows, exc, lambda attempts: min(self.settings.max_backoff_seconds, 0.5 * 2 ** min(attempts, 16))
        )

    def _postponed(
        self, rows: list[ClaimedEvent], exc: Exception, delay_of: Callable[[int], float]
    ) -> list[Outcome]:
        error = f"{type(exc).__name__}: {exc}"
        now = utcnow()
        outcomes = []
        for row in rows:
            attempts = row.attempts + 1
            delay = delay_of(attempts)
            outcomes.append(
                Outcome(row.pk, PENDING, error=error, attempts=attempts, next_attempt_at=_later(now, delay))
            )
            self.metrics.dispatch_attempts.labels("postponed").inc()
        log.warning(
            "%d event(s) of %s: attempt failed, retried %s: %s",
            len(rows),
            rows[0].deployment,
            f"in {delay_of(rows[0].attempts + 1):.1f}s" if delay_of(1) else "when Prefect is back",
            error,
        )
        return outcomes

    @staticmethod
    def _fail_job(job_id: str | None, reason: str | None) -> None:
        # Only a row still PENDING: a refused event never rewrites a row that started or ended.
        if job_id:
            syncjob_repository().fail_pending(job_id, reason or "event refused")


def _later(now: datetime, seconds: float) -> datetime:
    return now + timedelta(seconds=seconds)


def _first_error(results: list[RunResult], some: list[ClaimedEvent], rows: list[ClaimedEvent]) -> str:
    return str(results[rows.index(some[0])].error or "not created")[:2000]
