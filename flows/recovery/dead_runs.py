"""The dead-runs pass: a run whose process died on this machine is ended, and what it left killed.

A flow-run process killed outright (a service stop, a reboot, the OOM killer) reports nothing:
Prefect still shows it Running and no hook runs. Its run file stays behind (flows/run_files.py),
and that is how this machine's reconciler knows: the run is marked Crashed, its row FAILED, and
every process it left (its scripts run in their own sessions, and may detach more; each is
tagged with the run's id) is killed. A run that had reached its end before it died (the file
goes after the final state) gets the end it had reached.
"""

from __future__ import annotations

from functools import partial
from typing import Any
from uuid import UUID

from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.objects import StateType
from prefect.states import Cancelled, Completed, Crashed, State

from deployments.syncjob import SyncJobStatus
from flows.process_tree import kill_run_leftovers
from flows.recovery.isolation import ItemIsolation, log
from flows.recovery.rows import RecoveryRows
from flows.row_texts import PROCESS_DIED, run_failure
from flows.run_files import RunFile, dead_runs
from flows.run_states import FINAL, STOPPED, state_of


class DeadRunsPass:
    """Runs of this machine whose process died → their end, their leftovers killed, their row."""

    def __init__(self, rows: RecoveryRows, isolation: ItemIsolation) -> None:
        self.rows = rows
        self.isolation = isolation

    def run(self, client: SyncPrefectClient) -> list[str]:
        """Runs of this machine whose process died: Crashed in Prefect, FAILED in the row (or
        Completed, when the row says the body completed and only the report was lost). An active
        row of a run that had ended (its file goes after the final state) is FAILED as its end
        says, as its hook would have. Returns the job ids failed."""
        ended = [
            self.isolation.on_its_own("flow run", run.flow_run_id, partial(self._end_dead_run, client, run))
            for run in dead_runs()
        ]
        return [job_id for job_id in ended if job_id]

    def _end_dead_run(self, client: SyncPrefectClient, run: RunFile) -> str | None:
        """The flow run's end as it died, its leftovers killed, its row failed (its job id when
        this failed it), its run file gone."""
        failed = None
        state = state_of(client, run.flow_run_id)
        if state is not None and state.type not in FINAL:
            state = self._end_of_dead(run, state)
            client.set_flow_run_state(UUID(run.flow_run_id), state, force=True)
        # its scripts run in their own sessions and outlive it, and so may whatever they
        # detached: every process tagged with the run's id goes, with the recorded groups
        if killed := kill_run_leftovers(run.flow_run_id, run.script_groups):
            log.info("flow run %s died: killed its leftover processes %s", run.flow_run_id, killed)
        if state is None or state.is_crashed():
            if self.rows.fail(run.job_id, run.flow_run_id, PROCESS_DIED):
                failed = run.job_id
        elif not state.is_completed():  # as the hooks say it: "Annulé : …" for a cancel
            alert = not state.is_cancelled()
            if self.rows.fail(run.job_id, run.flow_run_id, run_failure(state), alert=alert):
                failed = run.job_id
        run.path.unlink(missing_ok=True)
        return failed

    def _end_of_dead(self, run: RunFile, state: State[Any]) -> State[Any]:
        """Crashed; Cancelled when it was being cancelled (its runner stopped it, and says so
        too); Completed when the body had completed (its row COMPLETED, naming the run) and the
        process died while it reported the final state."""
        if state.type == StateType.CANCELLING:
            return Cancelled(message=STOPPED)
        row = self.rows.naming(run.job_id, run.flow_run_id)
        if row is not None and row["status"] == SyncJobStatus.COMPLETED:
            return Completed(message="completed; its process died before it could report it")
        return Crashed(message=PROCESS_DIED)
