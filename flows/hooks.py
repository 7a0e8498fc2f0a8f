"""Flow state hooks that mark the SyncJob row FAILED on failure, crash or cancellation.

Hooks run client side and are not guaranteed (prefect-notes §6): the flow body writes every
other transition itself, and a reconciler (operator tools) repairs rows whose hook never ran.
"""

from __future__ import annotations

import logging
import re

from deployments.catalog import get_catalog
from flows.alerts import alert_failure
from flows.syncjob import get_store, job_id_for_flow_run

log = logging.getLogger(__name__)
_EXCEPTION_PREFIX = "Flow run encountered an exception:"
_EXCEPTION_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*: ")


def row_script(parameters: dict) -> str | None:
    """SyncJob.script for a run of either flow, from its parameters."""
    if script := parameters.get("script"):
        return str(script)
    group = parameters.get("group")
    if not group:
        return None
    try:
        return get_catalog().group(str(group)).row_script
    except KeyError:
        return str(group)


def failure_message(state) -> str:
    message = (state.message or "").strip()
    if state.is_cancelled() or state.name in ("Cancelling", "Cancelled"):
        return "Annulé : le run Prefect a été annulé." + (f" {message}" if message else "")
    if state.is_crashed():
        return f"Le run Prefect a planté (Crashed) : {message or 'raison inconnue'}"
    if message.startswith(_EXCEPTION_PREFIX):
        # "Flow run encountered an exception: StepFailed: step x ..." -> "step x ..."
        message = _EXCEPTION_NAME.sub("", message[len(_EXCEPTION_PREFIX) :].strip(), count=1)
    return message or f"Run {state.name}"


def mark_job_failed(flow, flow_run, state) -> None:
    parameters = dict(flow_run.parameters or {})
    job_id = parameters.get("job_id") or job_id_for_flow_run(str(flow_run.id))
    script = row_script(parameters)
    message = failure_message(state)
    try:
        get_store().mark_failed(job_id, message, script=script)
        # step failures alert where they happen (execution.py); a crash never reaches a step
        if state.is_crashed() and script and _is_critical(script):
            alert_failure(script, job_id, str(flow_run.id), message)
    except Exception:  # a hook must not mask the run's own state
        log.exception("could not mark SyncJob %s failed", job_id)


def _is_critical(script: str) -> bool:
    try:
        return get_catalog().script(script).critical
    except KeyError:
        return False


FAILURE_HOOKS = {
    "on_failure": [mark_job_failed],
    "on_crashed": [mark_job_failed],
    "on_cancellation": [mark_job_failed],
}
