"""The Prefect task that runs one script: one concurrency slot, one process tree, logged lines.

A script's lines reach the run log in batches and within a budget (`OutputLogger`). What costs is
not the server (Prefect's API handler already batches records, every
PREFECT_LOGGING_TO_API_BATCH_INTERVAL) but each `logger.info` call: measured on the test server,
one call per line took about 0.7 ms (the run logger's console handler renders each record with
rich), so a script printing 400,000 lines in a second kept its step running for minutes; lines
joined into one record cost about 25 µs each, still 10 s for 400,000. So lines read together go
out as one record (each line its own record when a read brings only a few, as a slow script's
lines come), and past the step's budget (POLIGRAPH_LOG_LINES_PER_SECOND and _BYTES_PER_SECOND with
a burst of LOG_BURST_SECONDS, POLIGRAPH_LOG_MAX_LINES and _MAX_BYTES in all) lines are counted,
not sent: the run log then says `… 391,212 lines not sent to the run log; the last 30 are below`
with those lines exactly. Progress lines are parsed before the budget, so the row's progress
stays right whatever the log receives.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from prefect import Task, get_run_logger, task
from prefect.cache_policies import INPUTS, RUN_ID, TASK_SOURCE
from prefect.runtime import flow_run, task_run

from deployments.plans import PlannedStep
from deployments.settings import Settings, get_settings
from deployments.specs import script_limit_name
from flows import row_texts
from flows.errors import RunError
from flows.process_tree import RUN_TAG
from flows.progress import parse_progress
from flows.progress_tracker import ProgressTracker
from flows.progress_writer import run_repository
from flows.run_files import note_script_group
from flows.script_runner import run_process, shorten
from flows.slots import held_slot
from flows.step_results import StepResult

Logger = logging.Logger | logging.LoggerAdapter[Any]
MAX_LOG_LINE = 10_000  # characters of one output line in the run log (a marker says the cut)
LOG_BURST_SECONDS = 10.0  # the rate budget may be spent this many seconds ahead (a script's first burst)
LOG_RECORD_LINES = 1000  # lines joined into one run-log record at most
LOG_RECORD_BYTES = 256 * 1024  # and bytes (Prefect truncates records over 1 MB)
LOG_SEPARATE_LINES = 10  # a read of this many lines or fewer: one record per line, as they came
LOG_SUMMARY_SECONDS = 5.0  # lines go unsent this long at least before the summary, and sending resumes
UNSENT_CHECK_LINES = 1024  # while lines go unsent, how often (in lines) to look whether to resume


class StepFailed(RunError, RuntimeError):
    """A step's script failed, timed out or must not run. The message is what SyncJob shows."""

    # a script's failure may pass: its task runs the step again, up to the step's retries (the
    # one a disabled script raises in the flow body, flows/execution.py, has no task to retry it)
    retriable = True


def retry_delays(settings: Settings, retries: int) -> list[float]:
    delays = list(settings.retry_delays) or [0.0]
    return [delays[min(i, len(delays) - 1)] for i in range(retries)]


def step_argv(settings: Settings, step: PlannedStep) -> list[str]:
    return [*settings.script_argv(step.script), *step.flags]


class LogBudget:
    """What one step may send to the run log: a rate (lines and bytes per second, a token bucket
    that holds `burst_seconds` worth) and a total."""

    def __init__(
        self,
        lines_per_second: float,
        bytes_per_second: float,
        max_lines: int,
        max_bytes: int,
        burst_seconds: float = LOG_BURST_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.lines_per_second = lines_per_second
        self.bytes_per_second = bytes_per_second
        self.max_lines = max_lines
        self.max_bytes = max_bytes
        self.line_capacity = max(1.0, lines_per_second * burst_seconds)
        self.byte_capacity = max(4.0 * MAX_LOG_LINE + 64, bytes_per_second * burst_seconds)  # any line
        self.clock = clock
        self._lines = self.line_capacity  # tokens
        self._bytes = self.byte_capacity
        self._at = clock()
        self.sent_lines = 0
        self.sent_bytes = 0

    @classmethod
    def from_settings(cls, settings: Settings) -> LogBudget:
        return cls(
            settings.log_lines_per_second,
            settings.log_bytes_per_second,
            settings.log_max_lines,
            settings.log_max_bytes,
        )

    def take(self, lines: int, size: int) -> bool:
        """Spend `lines` lines of `size` bytes if the budget allows them now."""
        if self.sent_lines + lines > self.max_lines or self.sent_bytes + size > self.max_bytes:
            return False
        if self._lines < lines or self._bytes < size:  # refill only when short: one clock call
            now = self.clock()
            elapsed, self._at = now - self._at, now
            self._lines = min(self.line_capacity, self._lines + elapsed * self.lines_per_second)
            self._bytes = min(self.byte_capacity, self._bytes + elapsed * self.bytes_per_second)
            if self._lines < lines or self._bytes < size:
                return False
        self._lines -= lines
        self._bytes -= size
        self.sent_lines += lines
        self.sent_bytes += size
        return True

    def describe(self) -> str:
        return f"more than {self.lines_per_second:,g} lines/s or {self.max_lines:,} per step"


def _size(line: str) -> int:
    """The line's bytes in UTF-8, with its newline."""
    return (len(line) if line.isascii() else len(line.encode("utf-8"))) + 1


class OutputLogger:
    """Output lines to the run log (stdout INFO, stderr WARNING) in batches, within a budget;
    progress lines to the row, always. Lines come made safe by the script runner; each is cut
    to MAX_LOG_LINE characters here. `flush` when the reader is idle, `close` at the end."""

    def __init__(
        self,
        logger: Logger,
        tracker: ProgressTracker,
        budget: LogBudget | None = None,
        tail_lines: int = 30,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.tracker = tracker
        self.budget = budget or LogBudget(float("inf"), float("inf"), 2**62, 2**62)
        self.clock = clock
        self._batch: list[str] = []
        self._batch_stream = "stdout"
        self._batch_bytes = 0
        self._unsent = 0  # lines not sent since the last summary
        self._unsent_since = 0.0
        self._unsent_tail: deque[tuple[str, str]] = deque(maxlen=tail_lines)

    def __call__(self, stream: str, line: str) -> None:
        if "PROGRESS" in line and (report := parse_progress(line)) is not None:
            self.tracker.report(report)
        if len(line) > MAX_LOG_LINE:
            line = shorten(line, MAX_LOG_LINE)
        size = _size(line)
        if not self._unsent and self.budget.take(1, size):
            full = len(self._batch) >= LOG_RECORD_LINES or self._batch_bytes + size > LOG_RECORD_BYTES
            if stream != self._batch_stream or full:
                self._send_batch()
                self._batch_stream = stream
            self._batch.append(line)
            self._batch_bytes += size
            return
        if not self._unsent:  # the lines accepted so far go first
            self._send_batch()
            self._unsent_since = self.clock()
        self._unsent += 1
        self._unsent_tail.append((stream, line))
        if self._unsent % UNSENT_CHECK_LINES == 0:
            self._resume_if_allowed()

    def flush(self) -> None:
        """Send what waits (the reader has nothing more for now)."""
        self._send_batch()
        if self._unsent:
            self._resume_if_allowed()

    def close(self) -> None:
        """The step's output ended: send what waits, and the summary of what was not sent."""
        self._send_batch()
        if self._unsent:
            self._send_unsent()

    def _resume_if_allowed(self) -> None:
        """After LOG_SUMMARY_SECONDS of unsent lines, the summary and sending again, once the
        budget has room for the summary and its lines."""
        if self.clock() - self._unsent_since < LOG_SUMMARY_SECONDS:
            return
        lines = min(len(self._unsent_tail) + 1, int(self.budget.line_capacity))  # never more than it holds
        size = min(sum(_size(line) for _, line in self._unsent_tail) + 200, int(self.budget.byte_capacity))
        if self.budget.take(lines, size):
            self._send_unsent()

    def _send_unsent(self) -> None:
        tail = list(self._unsent_tail)
        count, self._unsent = self._unsent, 0
        self._unsent_tail.clear()
        if count <= len(tail):  # nothing lost: they are all here
            for stream, line in tail:
                if stream != self._batch_stream:
                    self._send_batch()
                    self._batch_stream = stream
                self._batch.append(line)
            self._send_batch()
            return
        summary = (
            f"… {count:,} lines not sent to the run log ({self.budget.describe()}); "
            f"the last {len(tail)} are below"
        )
        self.logger.warning("\n".join([summary, *(line for _, line in tail)]))

    def _send_batch(self) -> None:
        batch, self._batch, self._batch_bytes = self._batch, [], 0
        if not batch:
            return
        level = logging.WARNING if self._batch_stream == "stderr" else logging.INFO
        if len(batch) <= LOG_SEPARATE_LINES:
            for line in batch:
                self.logger.log(level, line)
        else:
            self.logger.log(level, "\n".join(batch))


# Durable steps: with persisted results and RUN_ID in the cache key, a retried flow run (same
# id) gets completed steps back as Cached instead of running their scripts again.
@task(
    task_run_name="{step.name}",
    cache_policy=TASK_SOURCE + INPUTS + RUN_ID,
    persist_result=True,
)
def run_step(step: PlannedStep, job_id: str, step_index: int, step_count: int) -> StepResult:
    settings = get_settings()
    logger = get_run_logger()
    tracker = ProgressTracker(
        run_repository(settings), job_id, step_index, step_count, settings.progress_interval_seconds
    )
    argv = step_argv(settings, step)
    holder = {"type": "task_run", "id": str(task_run.id)} if task_run.id else None
    with held_slot(script_limit_name(step.script), logger, holder):
        logger.info("$ %s (timeout %ss)", " ".join(argv), int(step.timeout_seconds))
        output = OutputLogger(logger, tracker, LogBudget.from_settings(settings), settings.tail_lines)
        try:
            outcome = run_process(
                argv,
                timeout_seconds=step.timeout_seconds,
                on_line=output,
                on_idle=output.flush,
                cwd=settings.script_cwd(),
                kill_grace_seconds=settings.kill_grace_seconds,
                tail_lines=settings.tail_lines,
                line_limit_bytes=settings.output_line_limit_bytes,
                tags={RUN_TAG: str(flow_run.id)} if flow_run.id else None,  # the reconciler finds leftovers
                on_start=lambda pgid: note_script_group(str(flow_run.id), pgid),
            )
        finally:
            output.close()
    tracker.flush()
    attempt = task_run.run_count or 1
    if not outcome.ok:
        raise StepFailed(row_texts.step_failure(step, outcome, attempt))
    logger.info("%s finished in %.1fs", step.script, outcome.duration_seconds)
    return StepResult.succeeded(step.name, step.script, outcome.exit_code, outcome.duration_seconds, attempt)


def configured(step: PlannedStep, settings: Settings | None = None) -> Task[..., StepResult]:
    """`run_step` with this step's retries and backoff."""
    settings = settings or get_settings()
    return run_step.with_options(
        retries=step.retries,
        retry_delay_seconds=retry_delays(settings, step.retries),
        retry_jitter_factor=settings.retry_jitter_factor,
    )
