"""The Prefect task that runs one script: one concurrency slot, one process tree, logged lines."""

from __future__ import annotations

import functools
import logging
from typing import Any

from prefect import Task, get_run_logger, task
from prefect.cache_policies import INPUTS, RUN_ID, TASK_SOURCE
from prefect.runtime import flow_run, task_run

from deployments.plans import PlannedStep
from deployments.settings import Settings, get_settings
from deployments.specs import script_limit_name
from flows import early_slot
from flows.liveness import note_script_group
from flows.process_tree import RUN_TAG
from flows.progress import parse_progress
from flows.progress_tracker import ProgressTracker
from flows.progress_writer import run_repository
from flows.script_runner import ProcessOutcome, run_process
from flows.slots import held_slot
from flows.step_results import StepResult

Logger = logging.Logger | logging.LoggerAdapter[Any]
MAX_LOG_LINE = 10_000
STDERR_LINES_IN_ERROR = 15


class StepFailed(RuntimeError):
    """A step's script failed, timed out or must not run. The message is what SyncJob shows."""


def retry_delays(settings: Settings, retries: int) -> list[float]:
    delays = list(settings.retry_delays) or [0.0]
    return [delays[min(i, len(delays) - 1)] for i in range(retries)]


def step_argv(settings: Settings, step: PlannedStep) -> list[str]:
    return [*settings.script_argv(step.script), *step.flags]


class OutputLogger:
    """Each output line to the run log (stdout INFO, stderr WARNING); progress lines to the row."""

    def __init__(self, logger: Logger, tracker: ProgressTracker):
        self.logger = logger
        self.tracker = tracker

    def __call__(self, stream: str, line: str) -> None:
        line = line[:MAX_LOG_LINE]
        if (report := parse_progress(line)) is not None:
            self.tracker.report(report)
        if stream == "stderr":
            self.logger.warning(line)
        else:
            self.logger.info(line)


def failure_message(step: PlannedStep, outcome: ProcessOutcome, attempt: int) -> str:
    """Which step, which attempt, why, and the last stderr lines (or output lines)."""
    why = (
        f"timed out after {int(step.timeout_seconds)}s (process group killed)"
        if outcome.timed_out
        else f"exit code {outcome.exit_code}"
    )
    lines = outcome.stderr_tail[-STDERR_LINES_IN_ERROR:] or outcome.tail[-STDERR_LINES_IN_ERROR:]
    detail = "\n".join(lines)
    return f"step {step.name} ({step.script}) failed on attempt {attempt}/{step.retries + 1}: {why}" + (
        f"\n{detail}" if detail else ""
    )


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
    run_id = str(flow_run.id)
    early = functools.partial(early_slot.take, flow_run_id=run_id)
    with held_slot(script_limit_name(step.script), logger, holder, taken_over=early):
        logger.info("$ %s (timeout %ss)", " ".join(argv), int(step.timeout_seconds))
        outcome = run_process(
            argv,
            timeout_seconds=step.timeout_seconds,
            on_line=OutputLogger(logger, tracker),
            cwd=settings.script_cwd(),
            kill_grace_seconds=settings.kill_grace_seconds,
            tail_lines=settings.tail_lines,
            tags={RUN_TAG: str(flow_run.id)} if flow_run.id else None,  # the reconciler finds leftovers
            on_start=lambda pgid: note_script_group(str(flow_run.id), pgid),
        )
    tracker.flush()
    attempt = task_run.run_count or 1
    if not outcome.ok:
        raise StepFailed(failure_message(step, outcome, attempt))
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
