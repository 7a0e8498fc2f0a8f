"""Turn step positions and progress lines into SyncJob progress, at most about one write a second.

Progress is the share of steps done, refined inside the running step by its progress lines.
`processed` / `total` are written only for one-step runs: the admin shows them instead of the
percentage, which for a group would hide how far the whole run is.

This is the one throttle of progress (POLIGRAPH_PROGRESS_INTERVAL_SECONDS between two writes, a
value equal to the last one written not written again): the row and the progress artifact get the
same values at the same moments. The rows it writes to (a run's `RunRepository`) take each value
as it comes and write it in the background (`flows/progress_writer.py`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Protocol

from flows import artifacts
from flows.progress import ProgressReport

log = logging.getLogger(__name__)


class ProgressRows(Protocol):
    """Where progress is written: a run's `RunRepository`, or the SyncJob repository itself."""

    def set_progress(
        self, job_id: str, progress: int, processed: int | None = None, total: int | None = None
    ) -> None: ...


class ProgressTracker:
    def __init__(
        self,
        repository: ProgressRows,
        job_id: str,
        step_index: int,
        step_count: int,
        min_interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.repository = repository
        self.job_id = job_id
        self.step_index = step_index
        self.step_count = max(step_count, 1)
        self.min_interval = min_interval
        self.clock = clock
        self._last_write: float | None = None
        self._pending: tuple[int, int | None, int | None] | None = None
        self._written: tuple[int, int | None, int | None] | None = None
        self._report: ProgressReport | None = None  # the latest line, for the progress artifact

    def percent(self, fraction_of_step: float) -> int:
        share = (self.step_index + max(0.0, min(fraction_of_step, 1.0))) / self.step_count
        return min(99, int(share * 100))  # 100 is written only by the completion

    def report(self, report: ProgressReport) -> None:
        self._report = report
        one_step = self.step_count == 1
        value = (
            self.percent(report.fraction),
            report.processed if one_step else None,
            report.total if one_step else None,
        )
        self._pending = value
        now = self.clock()
        if self._last_write is None or now - self._last_write >= self.min_interval:
            self.flush()

    def flush(self) -> None:
        """Write the latest pending value, if it differs from the last one written."""
        if self._pending is None or self._pending == self._written:
            return
        progress, processed, total = self._pending
        artifacts.step_progress(self.job_id, self.step_index, progress, self._report)  # never blocks
        try:
            self.repository.set_progress(self.job_id, progress, processed, total)
        except Exception:  # progress is best effort; the run must not fail for it
            log.warning("could not write progress of SyncJob %s", self.job_id, exc_info=True)
            return
        self._written = self._pending
        self._last_write = self.clock()
