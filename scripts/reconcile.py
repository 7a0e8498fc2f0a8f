"""Keep SyncJob rows and flow runs in agreement, whatever happened to the processes.

Passes, run as `python -m scripts.reconcile`, a child process of each machine's worker (which
keeps it alive: scripts/reconciler_process.py):

* cancel: a row the admin (or `poligraph-jobs cancel`) flipped to FAILED with the cancel message
  while its flow run still runs → the flow run is cancelled in Prefect, which stops the process
  and its scripts. A run still Cancelling after CANCEL_FALLBACK_SECONDS (its runner stopped
  watching: docs/prefect.md, "serve") is stopped here when its process runs on this machine:
  SIGTERM, SIGKILL after the grace, then Cancelled;
* dead local runs: a run whose process died on this machine (its run file stays behind) → the
  flow run is marked Crashed, its row FAILED, and every process it left (tagged with its flow-run
  id, detached or not) is killed;
* stuck runs: a run left Pending (its process died before the flow began) or Cancelling (its
  process was stopped but nobody could say so) for POLIGRAPH_STUCK_RUN_SECONDS, whose process is
  not on this machine → Crashed (its row FAILED) or Cancelled. Both happen when the Prefect
  server is away at that moment: the runner cannot report it and gives up. So does a run left
  Running whose process died between Prefect's Running and the first line of its flow body
  (killed with its service: no run file yet), once two passes UNBEGUN_CONFIRM_SECONDS apart
  find that its SyncJob row still does not name it (the body names its run first thing, on any
  machine). Left alone, such a run keeps its deployment's slot (a Running one for ever) and stays
  unfinished for ever;
* states: an active row whose flow run is Crashed, Cancelled, Failed or gone (found by the run id
  the flow wrote in it, or by the run's job_id when it ended before its flow began) → FAILED with
  the reason. Runs waiting for a concurrency slot longer than a bound are logged.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, TypeVar
from uuid import UUID

import httpx
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterDeploymentId,
    FlowRunFilterEndTime,
    FlowRunFilterExpectedStartTime,
    FlowRunFilterState,
    FlowRunFilterStateName,
    FlowRunFilterStateType,
    FlowRunFilterTags,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.client.schemas.sorting import FlowRunSort
from prefect.exceptions import ObjectNotFound
from prefect.states import Cancelled, Completed, Crashed, State

from deployments.catalog import get_catalog
from deployments.settings import get_settings
from deployments.specs import BASE_TAG, is_critical
from deployments.syncjob import (
    SyncJobRepository,
    SyncJobStatus,
    flow_run_of,
    is_transient,
    job_id_for_flow_run,
    syncjob_repository,
    utcnow,
)
from flows.alerts import AlertSender, alert_failure, start_spool_sender
from flows.process_tree import kill_run_leftovers, signal_process, start_time
from flows.row_texts import (
    ENDED_BADLY,
    NEVER_STARTED,
    PROCESS_DIED,
    ended_before_starting,
    run_ended_badly,
    run_failure,
    run_gone,
)
from flows.run_files import RunFile, dead_runs, flow_process_here, live_run, runs_dir
from flows.run_states import FINAL, STOPPED, cancel_flow_run, state_of

log = logging.getLogger("poligraph.reconcile")
T = TypeVar("T")
Unbegun = dict[str, tuple[UUID, float]]  # Running runs whose body has not begun: (state id, first seen)
CANCEL_FALLBACK_SECONDS = 15.0  # a runner that watches stops a Cancelling run within a few seconds
# Above the SyncJob writes' longest pause between retries (5 s): a body elsewhere that waited out a
# database outage has written its row by the second look.
UNBEGUN_CONFIRM_SECONDS = 12.0
FAILING_LOG_SECONDS = 300.0  # an item failing at every pass is logged again this often


class Reconciler:
    def __init__(self, repository: SyncJobRepository | None = None) -> None:
        self.repository = repository or syncjob_repository()
        self.settings = get_settings()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._alerts: AlertSender | None = None
        self._settled: set[str] = set()  # cancelled runs that reached a final state
        self.unbegun_confirm_seconds = UNBEGUN_CONFIRM_SECONDS
        # Running runs whose body has not begun: (state id, first seen) while it stays so
        self._unbegun: Unbegun = {}
        # items whose own work fails: (first failure, failures, last logged), monotonic
        self._failing: dict[str, tuple[float, int, float]] = {}

    # --- passes --------------------------------------------------------------------------
    def cancel_pass(self, client: SyncPrefectClient) -> list[str]:
        """Cancel the flow runs of cancelled rows; return the flow run ids asked to cancel."""
        since = utcnow() - timedelta(hours=6)
        asked = [
            self._on_its_own("SyncJob", row["id"], partial(self._cancel_one, client, row))
            for row in self.repository.cancelled_since(since)
        ]
        return [run_id for run_id in asked if run_id]

    def _cancel_one(self, client: SyncPrefectClient, row: dict[str, Any]) -> str | None:
        run_id = flow_run_of(row)
        if not run_id or run_id in self._settled:
            return None
        state = state_of(client, run_id)
        if state is None or state.type in FINAL:
            self._settled.add(run_id)
            self._finish_stop(client, run_id)
        elif state.name != "Cancelling":
            if cancel_flow_run(client, run_id, "cancelled from the admin"):
                log.info("SyncJob %s cancelled: cancelling flow run %s", row["id"], run_id)
                return run_id
        elif (datetime.now(UTC) - state.timestamp).total_seconds() >= CANCEL_FALLBACK_SECONDS:
            self._stop_here(client, run_id)
        return None

    def _stop_here(self, client: SyncPrefectClient, run_id: str) -> None:
        """Stop a Cancelling run that its runner left running, if its process is on this machine.

        A marker file next to the run file remembers, across reconciler restarts, that the stop
        is ours and which process it is: SIGTERM once, SIGKILL after the grace, and once that
        process is gone the run is set Cancelled (a run left Cancelling would hold its
        deployment's slot for ever). The process, not its run file, decides: the run file goes
        before the dying engine reports Crashed, and a Cancelled set in between would be
        overwritten.
        """
        marker = runs_dir() / f"{run_id}.stopping"
        stop = _read_marker(marker)
        if stop is None:
            run = live_run(run_id)
            if run is None:
                return  # not on this machine, or gone already: the states pass sees the end
            marker.write_text(json.dumps({"at": time.time(), "pid": run.pid, "started": run.started}))
            log.warning("flow run %s still Cancelling: stopping its process %d here", run_id, run.pid)
            signal_process(run.pid, run.started, signal.SIGTERM)
            return
        at, pid, started = stop
        if started is None or start_time(pid) != started:
            self._finish_stop(client, run_id)
        elif time.time() - at > self.settings.kill_grace_seconds + 10:
            signal_process(pid, started, signal.SIGKILL)

    def _finish_stop(self, client: SyncPrefectClient, run_id: str) -> None:
        """A run this reconciler stopped is gone: kill what it left, and call it Cancelled (a
        SIGTERM makes Prefect call it Crashed)."""
        marker = runs_dir() / f"{run_id}.stopping"
        if not marker.exists():
            return
        kill_run_leftovers(run_id)
        state = state_of(client, run_id)
        if state is not None and state.type != StateType.CANCELLED:
            client.set_flow_run_state(
                UUID(run_id), Cancelled(message="stopped by the reconciler"), force=True
            )
        marker.unlink(missing_ok=True)

    def dead_local_runs_pass(self, client: SyncPrefectClient) -> list[str]:
        """Runs of this machine whose process died: Crashed in Prefect, FAILED in the row (or
        Completed, when the row says the body completed and only the report was lost). An active
        row of a run that had ended (its file goes after the final state) is FAILED as its end
        says, as its hook would have."""
        ended = [
            self._on_its_own("flow run", run.flow_run_id, partial(self._end_dead_run, client, run))
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
            if self._fail_row(run.job_id, run.flow_run_id, PROCESS_DIED):
                failed = run.job_id
        elif not state.is_completed():  # as the hooks say it: "Annulé : …" for a cancel
            alert = not state.is_cancelled()
            if self._fail_row(run.job_id, run.flow_run_id, run_failure(state), alert=alert):
                failed = run.job_id
        run.path.unlink(missing_ok=True)
        return failed

    def _end_of_dead(self, run: RunFile, state: State[Any]) -> State[Any]:
        """Crashed; Cancelled when it was being cancelled (its runner stopped it, and says so
        too); Completed when the body had completed (its row COMPLETED, naming the run) and the
        process died while it reported the final state."""
        if state.type == StateType.CANCELLING:
            return Cancelled(message=STOPPED)
        row = self._row_naming(run.job_id, run.flow_run_id)
        if row is not None and row["status"] == SyncJobStatus.COMPLETED:
            return Completed(message="completed; its process died before it could report it")
        return Crashed(message=PROCESS_DIED)

    def stuck_runs_pass(self, client: SyncPrefectClient) -> list[str]:
        """Runs left Pending, Cancelling, or Running before their body began, with no process to
        move them on: Crashed (the row FAILED) or Cancelled. Returns the flow run ids ended."""
        bound = timedelta(seconds=self.settings.stuck_run_seconds)
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
        ended = [
            self._on_its_own(
                "flow run", str(run.id), partial(self._end_if_stuck, client, run, bound, unbegun)
            )
            for run in runs
        ]
        self._unbegun = unbegun
        return [run_id for run_id in ended if run_id]

    def _end_if_stuck(
        self,
        client: SyncPrefectClient,
        run: FlowRun,
        bound: timedelta,
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
            if state_id != run.state.id or time.monotonic() - first_seen < self.unbegun_confirm_seconds:
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
        return self._row_naming(job_id, str(run.id)) is not None

    def _row_naming(self, job_id: str, flow_run_id: str) -> dict[str, Any] | None:
        """The row `job_id` when the body of `flow_run_id` has named that run in it."""
        row = self.repository.get(job_id)
        return row if row is not None and flow_run_of(row) == flow_run_id else None

    def _crash_unstarted(self, client: SyncPrefectClient, run: FlowRun) -> None:
        reason = NEVER_STARTED
        if job_id := run.parameters.get("job_id"):
            self._fail_row(job_id, str(run.id), reason)  # first: a database away fails this pass
        client.set_flow_run_state(run.id, Crashed(message=reason), force=True)
        log.warning("flow run %s still %s, its process gone: Crashed", run.id, run.state_name)

    def states_pass(self, client: SyncPrefectClient) -> list[str]:
        """Active rows whose flow run ended badly or disappeared → FAILED with the reason."""
        unstarted: dict[str, dict[str, Any]] = {}
        failed = []
        for row in self.repository.active():
            if not flow_run_of(row):
                unstarted[row["id"]] = row  # its run has not begun its flow (or never will)
            elif self._on_its_own("SyncJob", row["id"], partial(self._fail_if_run_ended, client, row)):
                failed.append(row["id"])
        return failed + self._ended_before_starting(client, unstarted)

    def _fail_if_run_ended(self, client: SyncPrefectClient, row: dict[str, Any]) -> bool:
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
        return self._fail_row(row["id"], run_id, reason, script=row["script"], alert=not cancelled)

    def _ended_before_starting(self, client: SyncPrefectClient, rows: dict[str, dict[str, Any]]) -> list[str]:
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
            fail = partial(self._fail_row, row["id"], str(run.id), reason, script=row["script"])
            if self._on_its_own("SyncJob", row["id"], fail):
                failed.append(row["id"])
        return failed

    def _fail_row(
        self, job_id: str, flow_run_id: str, reason: str, script: str | None = None, alert: bool = True
    ) -> bool:
        """FAILED with the reason (and the alert of a critical script, unless `alert` is False: a
        cancel is no failure) if still active."""
        if not self.repository.mark_failed(job_id, reason, only_if_active=True):
            return False
        if alert:
            self._alert(job_id, flow_run_id, reason, script=script)
        log.info("SyncJob %s → FAILED: %s", job_id, reason)
        return True

    def slot_wait_pass(self, client: SyncPrefectClient) -> list[str]:
        """Log runs kept waiting for a deployment concurrency slot beyond the bound."""
        bound = timedelta(seconds=self.settings.slot_wait_warning_seconds)
        waiting = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(name=FlowRunFilterStateName(any_=["AwaitingConcurrencySlot"])),
                expected_start_time=FlowRunFilterExpectedStartTime(before_=datetime.now(UTC) - bound),
            ),
            limit=50,
        )
        for run in waiting:
            log.warning(
                "flow run %s (%s) waits for a concurrency slot since %s",
                run.id,
                run.name,
                run.expected_start_time,
            )
        return [str(run.id) for run in waiting]

    def run_once(self) -> dict[str, list[str]]:
        """Every pass once. A pass that fails for a reason of its own is logged and the others
        still run; an outage (the database or the Prefect server away) ends them all."""
        with get_client(sync_client=True) as client:
            passes: dict[str, Callable[[SyncPrefectClient], list[str]]] = {
                "cancelled": self.cancel_pass,
                "dead": self.dead_local_runs_pass,
                "stuck": self.stuck_runs_pass,
                "failed": self.states_pass,
                "waiting": self.slot_wait_pass,
            }
            return {
                name: self._on_its_own("pass", name, partial(run, client)) or []
                for name, run in passes.items()
            }

    def _on_its_own(self, what: str, ident: str, action: Callable[[], T]) -> T | None:
        """One row's, one run's or one pass's work: a failure of its own (a row the database
        refuses, a run Prefect answers 4xx for, a bug) is logged with its id and the rest goes
        on; an outage, which every other item would meet too, ends the whole pass. An item that
        keeps failing is logged again every FAILING_LOG_SECONDS, not at every pass."""
        try:
            result = action()
        except Exception as exc:
            if _is_outage(exc):
                raise
            key = f"{what} {ident}"
            first, count, logged = self._failing.get(key, (time.monotonic(), 0, 0.0))
            count += 1
            if count == 1 or time.monotonic() - logged >= FAILING_LOG_SECONDS:
                since = f" ({count} passes since {time.monotonic() - first:.0f} s)" if count > 1 else ""
                log.exception("reconcile: %s left for the next pass%s", key, since)
                logged = time.monotonic()
            self._failing[key] = (first, count, logged)
            return None
        self._failing.pop(f"{what} {ident}", None)
        return result

    def _alert(self, job_id: str, flow_run_id: str, reason: str, script: str | None = None) -> None:
        if script is None:
            row = self.repository.get(job_id)
            script = row["script"] if row else None
        if script and is_critical(get_catalog(), script):
            alert_failure(script, job_id, flow_run_id, reason)

    # --- loop ----------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self.run_forever, name="reconciler", daemon=True)
        self._thread.start()

    def run_forever(self) -> None:
        self._alerts = start_spool_sender()  # delivers what runs queued, even after they exited
        self._loop()

    def stop(self) -> None:
        self._stop.set()
        if self._alerts:
            self._alerts.stop()
        if self._thread:
            self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.run_once()
            except Exception as exc:  # Prefect or the database may be away: next pass
                self._unbegun.clear()  # what a pass saw before an outage is looked at again after
                if _is_outage(exc):
                    log.warning("reconcile pass failed, %s away: %s", _what(exc), str(exc).splitlines()[0])
                else:
                    log.exception("reconcile pass failed")
            elapsed = time.monotonic() - started
            self._stop.wait(max(0.0, self.settings.reconcile_interval_seconds - elapsed))


def _read_marker(marker: Path) -> tuple[float, int, float | None] | None:
    """(when, pid, start time) of a stop this reconciler began, None when there is none."""
    try:
        data = json.loads(marker.read_text())
        return float(data["at"]), int(data["pid"]), data.get("started")
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        return (0.0, 0, None)  # unreadable: treat the process as gone and finish the stop


def _is_outage(exc: BaseException) -> bool:
    """The database or the Prefect server away or unwell: nothing in this pass can succeed."""
    if is_transient(exc) or isinstance(exc, httpx.TransportError):
        return True
    return isinstance(exc, httpx.HTTPStatusError) and exc.response.status_code >= 500


def _what(exc: Exception) -> str:
    return "the database" if is_transient(exc) else "the Prefect server"


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    Reconciler().run_forever()


if __name__ == "__main__":
    main()
