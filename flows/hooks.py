"""Flow state hooks: the SyncJob row FAILED on failure, crash or cancellation; the run's last
artifacts written and its run file removed once its final state is set.

Hooks run client side and are not guaranteed (docs/prefect.md, "State hooks"): the flow body
writes every other transition itself, and the reconciler repairs rows whose hook never ran. What
a hook writes in the row is said in flows/row_texts.py, beside what the reconciler writes.
"""

from __future__ import annotations

import logging
from typing import Any

from prefect import Flow
from prefect.client.schemas.objects import FlowRun
from prefect.states import State

from deployments.catalog import get_catalog
from deployments.specs import is_critical, row_script_for
from deployments.syncjob import job_id_for_flow_run, syncjob_repository
from flows.alerts import alert_failure
from flows.artifacts import flush_artifacts
from flows.row_texts import run_failure
from flows.run_files import unregister

log = logging.getLogger(__name__)


def mark_job_failed(flow: Flow[..., Any], flow_run: FlowRun, state: State[Any]) -> None:
    parameters = dict(flow_run.parameters or {})
    job_id = parameters.get("job_id") or job_id_for_flow_run(str(flow_run.id))
    catalog = get_catalog()
    script = row_script_for(catalog, parameters)
    message = run_failure(state)
    try:
        written = syncjob_repository().mark_failed(job_id, message, script=script)
        # step failures alert where they happen (execution.py); a crash never reaches a step.
        # Not written: the row was cancelled, and a cancel ends the process as a crash would.
        if written and state.is_crashed() and is_critical(catalog, script):
            alert_failure(script or "", job_id, str(flow_run.id), message)
    except Exception:  # a hook must not mask the run's own state
        log.exception("could not mark SyncJob %s failed", job_id)


def flush_run_artifacts(flow: Flow[..., Any], flow_run: FlowRun, state: State[Any]) -> None:
    """The run's summary artifacts, queued at its end, written before its process goes."""
    flush_artifacts(str(flow_run.id))


def end_run_file(flow: Flow[..., Any], flow_run: FlowRun, state: State[Any]) -> None:
    """Prefect holds the final state: the reconciler no longer needs to watch this process."""
    unregister(str(flow_run.id))


# on_crashed runs where the process is gone (the runner): nothing of the run's to flush there,
# and its run file is the reconciler's to read (it kills what the run left) and remove.
RUN_HOOKS: dict[str, Any] = {
    "on_completion": [flush_run_artifacts, end_run_file],
    "on_failure": [mark_job_failed, flush_run_artifacts, end_run_file],
    "on_crashed": [mark_job_failed],
    "on_cancellation": [mark_job_failed, flush_run_artifacts],
}
