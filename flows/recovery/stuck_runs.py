"""The stuck-runs pass: a run left Pending, Cancelling, or Running before its body began, with no
process anywhere to move it on, is ended.

Each happens when its process dies at the wrong moment, most often because the Prefect server was
away then and its runner could not report it and gave up: Pending (the process died before the
flow began), Cancelling (it was stopped but nobody could say so), Running (killed with its
service between Prefect's Running and the first line of the flow body, so before its run file
existed). Left alone, such a run keeps its deployment's slot (a Running one for ever) and stays
unfinished for ever. After POLIGRAPH_STUCK_RUN_SECONDS, and when its process is not on this
machine, it is Crashed (its row FAILED) or Cancelled. A Running run is ended only once two passes
UNBEGUN_CONFIRM_SECONDS apart find that its SyncJob row still does not name it: the body names
its run first thing, on any machine, so a row that names it means a body that began elsewhere.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from functools import partial
from uuid import UUID

from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterDeploymentId,
    FlowRunFilterState,
    FlowRunFilterStateType,
    FlowRunFilterTags,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.states import Cancelled, Crashed

from deployments.specs import BASE_TAG
from deployments.syncjob import job_id_for_flow_run
from flows.process_tree import kill_run_leftovers
from flows.recovery.isolation import ItemIsolation, log
from flows.recovery.rows import RecoveryRows
from flows.row_texts import NEVER_STARTED
from flows.run_files import flow_process_here
from flows.run_states import STOPPED, state_of

Unbegun = dict[str, tuple[UUID, float]]  # Running runs whose body has not begun: (state id, first seen)
# Above the SyncJob writes' longest pause between retries (5 s): a body elsewhere that waited out a
# database outage has written its row by the second look.
UNBEGUN_CONFIRM_SECONDS = 12.0


class StuckRunsPass:
    """Runs no process moves on → Crashed (the row FAILED) or Cancelled."""

    def __init__(self, rows: RecoveryRows, isolation: ItemIsolation) -> None:
        self.rows = rows
        self.isolation = isolation
        # Running runs whose body has not begun: (state id, first seen) while it stays so
        self._unbegun: Unbegun = {}

    def forget(self) -> None:
        """What a pass saw before an outage is looked at again after it."""
        self._unbegun.clear()

    def run(self, client: SyncPrefectClient, stuck_seconds: float, confirm_seconds: float) -> list[str]:
        """Runs left Pending, Cancelling, or Running before their body began, with no process to
        move them on: Crashed (the row FAILED) or Cancelled. Returns the flow run ids ended."""
        bound = timedelta(seconds=stuck_seconds)
        stuck_types = [StateType.PENDING, StateType.CANCELLING, StateType.RUNNING]
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=stuck_types)),
                tags=FlowRunFilterTags(all_=[BASE_TAG]),
                deployment_id=FlowRunFilterDeploymentId(is_null_=False),
            ),
            limit=200,
        )
        unbegun: Unbegun = {}
        end = partial(
            self._end_if_stuck, client, bound=bound, confirm_seconds=confirm_seconds, unbegun=unbegun
        )
        ended = [self.isolation.on_its_own("flow run", str(run.id), partial(end, run)) for run in runs]
        self._unbegun = unbegun
        return [run_id for run_id in ended if run_id]

    def _end_if_stuck(
        self,
        client: SyncPrefectClient,
        run: FlowRun,
        bound: timedelta,
        confirm_seconds: float,
        unbegun: Unbegun,
    ) -> str | None:
        """End one run found Pending, Cancelling or Running if it is stuck so (its id then);
        `unbegun` collects the Running runs seen without a begun body, for the next look."""
        if run.state is None or datetime.now(UTC) - run.state.timestamp < bound:
            return None
        run_id = str(run.id)
        if flow_process_here(run_id):
            return None  # alive here: the cancel pass stops it if it must
        if run.state.type == StateType.RUNNING:
            if self._body_began(run):
                return None  # its process is elsewhere, or died with its run file (dead pass)
            unbegun[run_id] = self._unbegun.get(run_id, (run.state.id, time.monotonic()))
            state_id, first_seen = unbegun[run_id]
            if state_id != run.state.id or time.monotonic() - first_seen < confirm_seconds:
                return None
        # It may have reported and exited since it was read: act only on the state we judged.
        state = state_of(client, run_id)
        if state is None or state.id != run.state.id:
            return None
        kill_run_leftovers(run_id)
        if state.type == StateType.CANCELLING:
            client.set_flow_run_state(run.id, Cancelled(message=STOPPED), force=True)
            log.warning("flow run %s still Cancelling, its process gone: Cancelled", run_id)
        else:
            self._crash_unstarted(client, run)
        unbegun.pop(run_id, None)
        return run_id

    def _body_began(self, run: FlowRun) -> bool:
        """Whether the run's body named it in its SyncJob row (its first write, made before any
        step; the row of a run started without a jobId is created by that write)."""
        job_id = run.parameters.get("job_id") or job_id_for_flow_run(str(run.id))
        return self.rows.naming(job_id, str(run.id)) is not None

    def _crash_unstarted(self, client: SyncPrefectClient, run: FlowRun) -> None:
        reason = NEVER_STARTED
        if job_id := run.parameters.get("job_id"):
            self.rows.fail(job_id, str(run.id), reason)  # first: a database away fails this pass
        client.set_flow_run_state(run.id, Crashed(message=reason), force=True)
        log.warning("flow run %s still %s, its process gone: Crashed", run.id, run.state_name)
