"""Progress writes that never hold a step up: the latest value of each row, written in the
background.

A step reads its script's output and enforces its deadline in one loop; a progress write that
waits for an unreachable database would stall both. So a run writes its row through a
`RunRepository`, which holds the SyncJob repository and hands progress to a `ProgressWriter`: one
thread per process writes each value as it comes; a write that fails is kept, unless a newer value
replaces it (the last value wins), and tried again after a pause. How often a value comes is not
decided here: the only throttle is the tracker's (`flows/progress_tracker.py`, one write a
POLIGRAPH_PROGRESS_INTERVAL_SECONDS). COMPLETED takes the row's pending progress into its own
update, FAILED first waits a moment for it (so the final `processed` / `total` land), then both go
through the retried transitions of `SyncJobRepository`. Progress still pending when the process
exits is lost; a state never is.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

from sqlalchemy.engine import Engine

from deployments.settings import Settings
from deployments.syncjob import SyncJobRepository, syncjob_repository

log = logging.getLogger(__name__)
FLUSH_SECONDS = 2.0  # how long a final state waits for the row's pending progress
RETRY_PAUSE_SECONDS = 1.0

Progress = tuple[int, int | None, int | None]  # progress, processed, total


class ProgressWriter:
    """Writes the latest submitted progress of each row, in a daemon thread, never raising."""

    def __init__(self, repository: SyncJobRepository, retry_pause: float = RETRY_PAUSE_SECONDS) -> None:
        self.repository = repository
        self.retry_pause = retry_pause
        self._pending: dict[str, Progress] = {}
        self._busy: set[str] = set()  # rows being written right now
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="syncjob-progress", daemon=True)
        self._thread.start()

    def submit(self, job_id: str, progress: int, processed: int | None, total: int | None) -> None:
        with self._changed:
            self._pending[job_id] = _merged(self._pending.get(job_id), (progress, processed, total))
            self._changed.notify_all()

    def take(self, job_id: str, timeout: float = FLUSH_SECONDS) -> Progress | None:
        """The row's progress not written yet, removed from the queue (for a final state to write
        in its own statement); a write already under way is waited for (at most `timeout`)."""
        with self._changed:
            self._changed.wait_for(lambda: job_id not in self._busy, timeout)
            return self._pending.pop(job_id, None)

    def flush(self, job_id: str, timeout: float = FLUSH_SECONDS) -> bool:
        """Wait (at most `timeout`) until the row has nothing pending; True when it has not."""
        with self._changed:
            return self._changed.wait_for(
                lambda: job_id not in self._pending and job_id not in self._busy, timeout
            )

    def _run(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: bool(self._pending))
                job_id, value = next(iter(self._pending.items()))
                del self._pending[job_id]
                self._busy.add(job_id)
            written = self._write(job_id, value)
            with self._changed:
                self._busy.discard(job_id)
                if not written:
                    newer = self._pending.get(job_id)  # a value that came meanwhile wins
                    self._pending[job_id] = value if newer is None else _merged(value, newer)
                self._changed.notify_all()
            if not written:
                time.sleep(self.retry_pause)

    def _write(self, job_id: str, value: Progress) -> bool:
        try:
            self.repository.set_progress(job_id, *value)
            return True
        except Exception as exc:  # the database is away: keep the value, try again later
            log.warning("progress of SyncJob %s not written yet: %s", job_id, str(exc).splitlines()[0])
            return False


def _merged(older: Progress | None, newer: Progress) -> Progress:
    """The last value wins field by field: a percent alone (a step's end) keeps the counts still
    waiting to be written."""
    if older is None:
        return newer
    progress, processed, total = newer
    return (
        progress,
        older[1] if processed is None else processed,
        older[2] if total is None else total,
    )


_writers: dict[Engine, ProgressWriter] = {}
_writers_lock = threading.Lock()


def _writer_for(repository: SyncJobRepository) -> ProgressWriter:
    """The process's progress writer for this repository's database."""
    with _writers_lock:
        writer = _writers.get(repository.engine)
        if writer is None:
            writer = _writers[repository.engine] = ProgressWriter(repository)
        return writer


class RunRepository:
    """The writes a run makes to its row: states through the SyncJob repository (retried),
    progress in the background."""

    def __init__(self, repository: SyncJobRepository) -> None:
        self.repository = repository
        self.writer = _writer_for(repository)

    def mark_running(self, job_id: str, script: str, flow_run_id: str | None = None) -> bool:
        return self.repository.mark_running(job_id, script, flow_run_id)

    def set_progress(
        self, job_id: str, progress: int, processed: int | None = None, total: int | None = None
    ) -> None:
        self.writer.submit(job_id, progress, processed, total)

    def mark_completed(self, job_id: str, result: Mapping[str, Any]) -> bool:
        # the pending progress rides on the COMPLETED update (one statement, no wait for a write)
        processed = total = None
        if pending := self.writer.take(job_id):
            _, processed, total = pending
        return self.repository.mark_completed(job_id, result, processed, total)

    def mark_failed(self, job_id: str, error: str, result: Mapping[str, Any] | None = None) -> bool:
        self.writer.flush(job_id)
        return self.repository.mark_failed(job_id, error, result=result)


def run_repository(settings: Settings | None = None) -> RunRepository:
    return RunRepository(syncjob_repository(settings))
