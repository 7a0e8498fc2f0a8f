"""Run a plan's steps in order inside a flow run and keep its SyncJob row true.

register_run   the run file, as a flow's body begins
execute_plan   RUNNING (or nothing, when the row was cancelled first), the steps, the end
run_steps      each step in turn: skipped, succeeded, or failed (stop, or go on and record)
finish         COMPLETED with the result, or FAILED when a required step failed
"""

from __future__ import annotations

import logging
from typing import Any

from prefect import get_run_logger
from prefect.runtime import flow_run
from prefect.states import Cancelled, State

from deployments.plans import Plan, PlannedStep
from deployments.safe_text import safe_text
from deployments.syncjob import job_id_for_flow_run
from flows import artifacts, row_texts
from flows.alerts import alert_failure
from flows.errors import RunError
from flows.progress_writer import RunRepository, run_repository
from flows.run_files import register
from flows.step_results import StepResult, summarize
from flows.steps import StepFailed, configured

Logger = logging.Logger | logging.LoggerAdapter[Any]


class RequiredStepsFailed(RunError, RuntimeError):
    """A continue-on-failure run finished, but a step marked required failed."""


def row_id(job_id: str | None) -> str:
    """The SyncJob row of this run: the caller's jobId, else one derived from the run id."""
    return job_id or job_id_for_flow_run(str(flow_run.id))


def register_run(job_id: str | None) -> None:
    """This process's run file: the first thing a flow body does, so that a process that dies
    from then on (in a database outage while RUNNING is retried, in the missed-firing check's API
    calls, while the final state is reported) is seen dead by the reconciler. The file goes once
    the final state is set (flows/hooks.py); a flow retry writes it again."""
    register(str(flow_run.id), row_id(job_id))


def execute_plan(plan: Plan, job_id: str | None) -> dict[str, Any] | State[Any]:
    """After `register_run`."""
    logger = get_run_logger()
    repository = run_repository()  # states retried through DB blips, progress in the background
    job = row_id(job_id)
    run_id = str(flow_run.id)
    if not repository.mark_running(job, plan.job_script, run_id):
        logger.warning("SyncJob %s was cancelled before the run started: nothing to do", job)
        return Cancelled(message=f"SyncJob {job} was cancelled before the run started")
    logger.info("SyncJob %s (%s): %d step(s)", job, plan.job_script, len(plan.steps))
    # run_artifacts: live progress in the UI, and a summary at the end, even when a step fails
    # (written after the run's final state: the flow's hooks wait for it, flows/hooks.py)
    with artifacts.run_artifacts(plan, job, run_id, flush_later=True) as results:
        run_steps(plan, job, repository, logger, results)
        return finish(plan, job, results, repository)


def run_steps(
    plan: Plan,
    job: str,
    repository: RunRepository,
    logger: Logger,
    results: list[StepResult] | None = None,
) -> list[StepResult]:
    """Append each step's result to `results` as it ends (what is known if a step raises)."""
    results = [] if results is None else results
    count = len(plan.steps)
    for index, step in enumerate(plan.steps):
        artifacts.step_started(job, index)
        if step.disabled:
            logger.warning("skipping %s: %s", step.name, step.disabled)
            results.append(StepResult.skipped(step.name, step.script, step.disabled))
            continue
        try:
            results.append(configured(step)(step, job, index, count))
        except Exception as exc:  # the task exhausted its retries
            results.append(on_step_failure(plan, step, job, exc, logger))
        repository.set_progress(job, min(99, (index + 1) * 100 // count))
    return results


def on_step_failure(plan: Plan, step: PlannedStep, job: str, exc: Exception, logger: Logger) -> StepResult:
    """Alert for a critical script; stop the run, or (continue-on-failure) record and go on."""
    error = safe_text(str(exc))  # a step's error carries its script's output
    if step.critical:
        alert_failure(step.script, job, str(flow_run.id), error)
    if not plan.continue_on_failure:
        raise exc
    logger.error("step %s failed, going on: %s", step.name, error)
    return StepResult.failed(step.name, step.script, error)


def finish(plan: Plan, job: str, results: list[StepResult], repository: RunRepository) -> dict[str, Any]:
    summary = summarize(results)
    result = {"flowRunId": str(flow_run.id), **summary, "steps": [r.as_json() for r in results]}
    required = {s.name for s in plan.steps if s.required}
    required_failures = [name for name in summary["failures"] if name in required]
    if required_failures:
        failure = RequiredStepsFailed(row_texts.required_steps_failed(required_failures))
        repository.mark_failed(job, failure.row_text, result=result)
        raise failure
    repository.mark_completed(job, result)
    return summary


def require_enabled(plan: Plan) -> None:
    """A one-script run of a disabled script fails at once, with the reason."""
    for step in plan.steps:
        if step.disabled:
            raise StepFailed(row_texts.script_disabled(step))
