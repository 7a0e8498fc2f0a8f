"""Cancelling a job from the CLI: the row, then its flow run at once.

The admin's cancel button only flips the SyncJob row (FAILED, "Annulé manuellement…"); the run
itself is stopped by asking Prefect to cancel it (flows/run_states.py, the way the reconciler's
passes stop runs too), which stops the flow-run process and, with it, its script's process group.
"""

from __future__ import annotations

from prefect.client.orchestration import get_client

from deployments.syncjob import SyncJobRepository, flow_run_of
from flows.run_states import cancel_flow_run


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
