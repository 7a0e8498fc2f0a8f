"""Run a plan's steps in order inside a flow run and keep its SyncJob row true."""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger
from prefect.runtime import flow_run
from prefect.states import Cancelled

from deployments.plans import Plan
from flows.alerts import alert_failure
from flows.liveness import registered
from flows.steps import StepFailed, configured
from flows.syncjob import get_store, job_id_for_flow_run


class RequiredStepsFailed(RuntimeError):
    """A continue-on-failure run finished, but a step marked required failed."""


def row_id(job_id: str | None) -> str:
    """The SyncJob row of this run: the caller's jobId, else one derived from the run id."""
    return job_id or job_id_for_flow_run(str(flow_run.id))


def execute_plan(plan: Plan, job_id: str | None) -> dict[str, Any]:
    logger = get_run_logger()
    store = get_store()
    job = row_id(job_id)
    run_id = str(flow_run.id)
    if not store.mark_running(job, plan.job_script, run_id):
        logger.warning("SyncJob %s was cancelled before the run started: nothing to do", job)
        return Cancelled(message=f"SyncJob {job} was cancelled before the run started")
    logger.info("SyncJob %s (%s): %d step(s)", job, plan.job_script, len(plan.steps))
    with registered(run_id, job):
        return _run_steps(plan, job, store, logger)


def _run_steps(plan: Plan, job: str, store, logger) -> dict[str, Any]:

    steps: list[dict[str, Any]] = []
    failures: list[str] = []
    required_failures: list[str] = []
    skipped: list[str] = []
    count = len(plan.steps)
    for index, step in enumerate(plan.steps):
        if step.disabled:
            logger.warning("skipping %s: %s", step.name, step.disabled)
            skipped.append(step.name)
            steps.append(
                {
                    "name": step.name,
                    "script": step.script,
                    "status": "skipped",
                    "reason": step.disabled,
                }
            )
            continue
        try:
            steps.append(configured(step)(step, job, index, count))
        except Exception as exc:  # the task exhausted its retries
            if step.critical:
                alert_failure(step.script, job, str(flow_run.id), str(exc))
            if not plan.continue_on_failure:
                raise
            logger.error("step %s failed, going on: %s", step.name, exc)
            failures.append(step.name)
            if step.required:
                required_failures.append(step.name)
            steps.append(
                {
                    "name": step.name,
                    "script": step.script,
                    "status": "failed",
                    "error": str(exc)[:500],
                }
            )
        store.set_progress(job, min(99, (index + 1) * 100 // count))

    summary = {
        "total": count,
        "succeeded": count - len(failures) - len(skipped),
        "failed": len(failures),
        "failures": failures,
        "skipped": skipped,
    }
    result = {"flowRunId": str(flow_run.id), **summary, "steps": steps}
    if required_failures:
        message = f"required step(s) failed: {', '.join(required_failures)}"
        store.mark_failed(job, message, result=result)
        raise RequiredStepsFailed(message)
    store.mark_completed(job, result)
    return summary


def require_enabled(plan: Plan) -> None:
    """A one-script run of a disabled script fails at once, with the reason."""
    for step in plan.steps:
        if step.disabled:
            raise StepFailed(f"{step.script} is disabled: {step.disabled}")
