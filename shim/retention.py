"""Retention: finished events leave the outbox after `POLIGRAPH_SHIM_RETENTION_DAYS`, dedupe keys
once they expire; a pending event is never deleted.

* **What.** An event row is finished once its status is no longer `pending` (`done`: its run was
  created, or it needed none, a refused event's SyncJob failed included; `duplicate`; `failed`:
  Prefect refused its run): those whose `done_at` is older than the retention go. A pending
  row has no `done_at` and is never selected, whatever its age. A dedupe key goes once its
  `expires_at` has passed (an expired key is free to be claimed again anyway).
* **How.** In small batches (`POLIGRAPH_SHIM_PURGE_BATCH_SIZE` rows, one short transaction
  each), found through an index each (migration 0003), with a pause after each batch four times
  as long as the batch took: the purge holds one database connection a fifth of the time at
  most, and intake's statements never wait behind a long delete. Measured (`bench.ingest
  --purge 1000000`): P1's median unchanged while a million rows go (~8,500 rows/s under wrk, the
  million in about a minute), where pausing only as long as each batch took cost P1 a quarter.
* **Several replicas.** Each batch is `DELETE … WHERE pk IN (SELECT … LIMIT n FOR UPDATE SKIP
  LOCKED)`: two shims purging at once take different rows, neither waits for the other, and
  since a purge never waits on a lock it can be in no deadlock (intake claiming an expired key
  that a batch holds waits for that batch's commit, then inserts it anew). SQLite has no row
  locks and one shim per file: the same statement without them.
* **Where.** A thread of its own (`Purge`), started by the app's lifespan beside the dispatcher:
  its statements are blocking calls that must not hold the dispatcher's loop nor the intake's,
  and it owes the dispatcher nothing (it touches only rows the dispatcher is done with), so it
  stayed a thread when the dispatcher became tasks of the app's event loop.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa

from deployments.syncjob import utcnow
from shim.db_errors import OutageLog, is_unavailable, retry_conflicts
from shim.metrics import ShimMetrics
from shim.outbox import PENDING, EventOutbox
from shim.settings import ShimSettings
from shim.tables import inngest_dedupe, inngest_event

log = logging.getLogger("poligraph.shim.retention")
FIRST_PURGE_AFTER_SECONDS = 5.0  # after the shim starts (not in its start-up's way)
# After each batch the purge waits this many times as long as the batch took (at least
# MIN_PAUSE_SECONDS): it holds the database at most a fifth of the time, however loaded the
# database is (a slower batch, a longer pause). At ~10 ms a batch of 1,000: ~20,000 rows/s.
PAUSE_PER_BATCH_TIME = 4.0
MIN_PAUSE_SECONDS = 0.01


@dataclass(frozen=True)
class Purged:
    events: int = 0
    keys: int = 0


class Purger:
    """The purge's statements; `purge` deletes everything due, batch by batch."""

    def __init__(
        self, outbox: EventOutbox, settings: ShimSettings, metrics: ShimMetrics | None = None
    ) -> None:
        self.outbox = outbox
        self.retention = timedelta(days=settings.retention_days)
        self.batch_size = settings.purge_batch_size
        self.metrics = metrics

    def events_batch(self, now: datetime | None = None) -> int:
        """Delete up to one batch of finished events older than the retention; how many."""
        cutoff = (now or utcnow()) - self.retention
        c = inngest_event.c
        return self._delete_batch(c.pk, c.done_at, c.status != PENDING, c.done_at < cutoff)

    def keys_batch(self, now: datetime | None = None) -> int:
        """Delete up to one batch of expired dedupe keys; how many."""
        c = inngest_dedupe.c
        return self._delete_batch(c.key, c.expires_at, c.expires_at <= (now or utcnow()))

    def purge(self, stop: threading.Event | None = None) -> Purged:
        """Everything due now, batch by batch, pausing after each; stops early when `stop` is set."""
        stop = stop or threading.Event()
        now = utcnow()
        counts = {"events": 0, "keys": 0}
        for kind, batch in (("events", self.events_batch), ("keys", self.keys_batch)):
            while not stop.is_set():
                started = time.monotonic()
                deleted = retry_conflicts(log, batch, now)
                counts[kind] += deleted
                if deleted < self.batch_size:
                    break
                stop.wait(max(MIN_PAUSE_SECONDS, PAUSE_PER_BATCH_TIME * (time.monotonic() - started)))
        return Purged(**counts)

    def _delete_batch(
        self, key: sa.Column[str], oldest: sa.Column[datetime], *due: sa.ColumnElement[bool]
    ) -> int:
        """Up to a batch of the rows `due` selects, the `oldest` first, deleted by their `key` in
        one transaction (rows another replica's batch holds are passed by); how many."""
        table = key.table
        batch = (
            sa.select(key)
            .where(*due)
            .order_by(oldest)
            .limit(self.batch_size)
            .with_for_update(skip_locked=True)  # PostgreSQL; nothing on SQLite
        )
        with self.outbox.engine.begin() as conn:
            deleted = conn.execute(sa.delete(table).where(key.in_(batch.scalar_subquery()))).rowcount
        if self.metrics is not None and deleted:
            self.metrics.purged.labels(table.name).inc(deleted)
        return deleted


class Purge:
    """The purge every `purge_interval_seconds`, in a thread of its own, until `stop`."""

    def __init__(
        self, outbox: EventOutbox, settings: ShimSettings, metrics: ShimMetrics | None = None
    ) -> None:
        self.purger = Purger(outbox, settings, metrics)
        self.interval = settings.purge_interval_seconds
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._outage = OutageLog(log, "the purge")

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="shim-purge", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        wait = min(FIRST_PURGE_AFTER_SECONDS, self.interval)
        while not self._stop.wait(wait):
            wait = self.interval
            self.pass_once()

    def pass_once(self) -> Purged | None:
        started = time.monotonic()
        try:
            purged = self.purger.purge(self._stop)
        except Exception as exc:
            if is_unavailable(exc):
                self._outage.failed(exc)
            else:
                log.exception("purge failed")
            return None
        self._outage.ok()
        if purged.events or purged.keys:
            log.info(
                "purged %d finished event(s) older than %s and %d expired dedupe key(s) in %.1f s",
                purged.events,
                self.purger.retention,
                purged.keys,
                time.monotonic() - started,
            )
        return purged
