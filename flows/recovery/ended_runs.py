"""The ended-runs pass (the states pass): an active row whose flow run ended badly or vanished is
FAILED with the reason.

A run's hooks write its row when it fails, crashes or is cancelled, but hooks run client side and
nothing guarantees they run (docs/prefect.md, "State hooks"); a run that ended before its flow
began never wrote its id in its row at all. So the row of a run found Crashed, Cancelled, Failed
or gone is ended here: found by the run id the flow wrote in it, or by the run's job_id when it
ended before its flow began (its runner reported it Crashed: the process could not reach the
server).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import partial
from uuid import UUID

from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterEndTime,
    FlowRunFilterState,
    FlowRunFilterStateType,
    FlowRunFilterTags,
)
from prefect.client.schemas.objects import StateType
from prefect.client.schemas.sorting import FlowRunSort
from prefect.exceptions import ObjectNotFound

from deployments.specs import BASE_TAG
from deployments.syncjob import SyncJobRow, flow_run_of
from flows.recovery.isolation import ItemIsolation
from flows.recovery.rows import RecoveryRows
from flows.row_texts import ENDED_BADLY, ended_before_starting, run_ended_badly, run_gone


class EndedRunsPass:
    """Active rows whose run ended badly or is gone → FAILED with the reason."""

    def __init__(self, rows: RecoveryRows, isolation: ItemIsolation) -> None:
        self.rows = rows
        self.isolation = isolation

    def run(self, client: SyncPrefectClient) -> list[str]:
        """Active rows whose flow run ended badly or disappeared → FAILED with the reason; the
        job ids failed."""
        unstarted: dict[str, SyncJobRow] = {}
        failed = []
        for row in self.rows.repository.active():
            if not flow_run_of(row):
                unstarted[row["id"]] = row  # its run has not begun its flow (or never will)
            elif self.isolation.on_its_own(
                "SyncJob", row["id"], partial(self._fail_if_run_ended, client, row)
            ):
                failed.append(row["id"])
        return failed + self._ended_before_starting(client, unstarted)

    def _fail_if_run_ended(self, client: SyncPrefectClient, row: SyncJobRow) -> bool:
        """FAILED, with the reason, when the row's flow run ended badly or vanished."""
        run_id = flow_run_of(row)
        assert run_id is not None
        cancelled = False  # a cancel is no failure: no alert
        try:
            run = client.read_flow_run(UUID(run_id))
        except ObjectNotFound:
            reason = run_gone(run_id)
        else:
            state = run.state
            if state is None or state.type not in ENDED_BADLY:
                return False
            reason = run_ended_badly(state)
            cancelled = state.type == StateType.CANCELLED
        return self.rows.fail(row["id"], run_id, reason, script=row["script"], alert=not cancelled)

    def _ended_before_starting(self, client: SyncPrefectClient, rows: dict[str, SyncJobRow]) -> list[str]:
        """Rows whose flow run ended badly before its flow began, so before it could write its id
        in the row (its runner reported it Crashed: the process could not reach the server)."""
        if not rows:
            return []
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=list(ENDED_BADLY))),
                end_time=FlowRunFilterEndTime(after_=datetime.now(UTC) - timedelta(hours=6)),
                tags=FlowRunFilterTags(all_=[BASE_TAG]),
            ),
            sort=FlowRunSort.END_TIME_DESC,
            limit=200,
        )
        failed = []
        for run in runs:
            row = rows.get(run.parameters.get("job_id") or "")
            if row is None or run.state is None:
                continue
            reason = ended_before_starting(run.state)
            fail = partial(self.rows.fail, row["id"], str(run.id), reason, script=row["script"])
            if self.isolation.on_its_own("SyncJob", row["id"], fail):
                failed.append(row["id"])
        return failed
