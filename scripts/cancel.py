"""Cancelling a job: the one way the CLI and the reconciler stop a flow run.

The admin's cancel button only flips the SyncJob row (FAILED, "Annulé manuellement…"); the run
itself is stopped by asking Prefect to cancel it, which stops the flow-run process and, with it,
its script's process group.
"""

from __future__ import annotations

from uuid import UUID

from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.objects import State, StateType
from prefect.exceptions import ObjectNotFound
from prefect.states import Cancelled, Cancelling

from deployments.syncjob import SyncJobRepository, flow_run_of

FINAL = {StateType.COMPLETED, StateType.FAILED, StateType.CRASHED, StateType.CANCELLED}


def state_of(client: SyncPrefectClient, run_id: str) -> State | None:
    """The flow run's current state; None when the run does not exist (any more)."""
    try:
        return client.read_flow_run(UUID(run_id)).state
    except ObjectNotFound:
        return None


def cancel_flow_run(client: SyncPrefectClient, run_id: str, message: str) -> bool:
    """Ask Prefect to cancel a run that is still going; False when it ended, is gone or is
    already cancelling."""
    state = state_of(client, run_id)
    if state is None or state.type in FINAL or state.name == "Cancelling":
        return False
    if state.type == StateType.SCHEDULED and state.name != "AwaitingRetry":
        # not started (waiting for its time or a slot): no process to stop, so no runner would
        # ever move a forced Cancelling on; an AwaitingRetry run may still have its process
        client.set_flow_run_state(UUID(run_id), Cancelled(message=message), force=True)
        return True
    client.set_flow_run_state(UUID(run_id), Cancelling(message=message), force=True)
    return True


def cancel_job(repository: SyncJobRepository, job_id: str, message: str) -> tuple[bool, str | None]:
    """What the admin's cancel does, then stop the run at once instead of at the reconciler's
    next pass. Returns (the row was active and is now cancelled, its flow run id if any)."""
    if not repository.cancel(job_id):
        return False, None
    row = repository.get(job_id)
    run_id = flow_run_of(row) if row else None
    if run_id:
        with get_client(sync_client=True) as client:
            cancel_flow_run(client, run_id, message)
    return True, run_id
