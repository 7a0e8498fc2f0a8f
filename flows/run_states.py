"""A flow run's states as the runtime reads and moves them: which ones are final, the current
one, a cancel asked for.

One way to stop a run, for the operator's cancel (scripts/cancel.py) and the recovery passes
(flows/recovery/): asking Prefect to cancel it, which stops the flow-run process and, with it,
its script's process group.
"""

from __future__ import annotations

from uuid import UUID

from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.objects import TERMINAL_STATES, State, StateType
from prefect.exceptions import ObjectNotFound
from prefect.states import Cancelled, Cancelling

FINAL = frozenset(TERMINAL_STATES)  # Prefect's own: Completed, Failed, Crashed, Cancelled
# The message of the Cancelled a Cancelling run is given once its process is gone (it can no
# longer say so itself): flows/recovery/dead_runs.py and stuck_runs.py.
STOPPED = "stopped: its process is gone (ended by the reconciler)"


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
