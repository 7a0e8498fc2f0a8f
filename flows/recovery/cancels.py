"""The cancel pass: a row the admin cancelled stops its flow run, wherever the run is.

The admin's cancel (or `poligraph-jobs cancel`) only flips the row to FAILED with the cancel
message; nothing in the app can reach the run. This pass asks Prefect to cancel the run of every
row cancelled in the last six hours, and its runner then stops the process and its scripts. A
runner that stopped watching (docs/prefect.md, "serve") leaves the run Cancelling: after
CANCEL_FALLBACK_SECONDS, the reconciler of the machine where its process runs stops it itself
(SIGTERM, SIGKILL after the grace) and calls it Cancelled, since a Cancelling run holds its
deployment's slot for ever.
"""

from __future__ import annotations

import json
import signal
import time
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from uuid import UUID

from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.objects import StateType
from prefect.states import Cancelled

from deployments.syncjob import SyncJobRepository, SyncJobRow, flow_run_of, utcnow
from flows.process_tree import kill_run_leftovers, signal_process, start_time
from flows.recovery.isolation import ItemIsolation, log
from flows.run_files import live_run, runs_dir
from flows.run_states import FINAL, cancel_flow_run, state_of

CANCEL_FALLBACK_SECONDS = 15.0  # a runner that watches stops a Cancelling run within a few seconds


class CancelPass:
    """Cancelled rows → their flow runs cancelled, and stopped here when their runner does not."""

    def __init__(self, repository: SyncJobRepository, isolation: ItemIsolation) -> None:
        self.repository = repository
        self.isolation = isolation
        self._settled: set[str] = set()  # cancelled runs that reached a final state

    def run(self, client: SyncPrefectClient, kill_grace_seconds: float) -> list[str]:
        """Cancel the flow runs of cancelled rows; return the flow run ids asked to cancel."""
        since = utcnow() - timedelta(hours=6)
        cancel = partial(self._cancel_one, client, kill_grace_seconds=kill_grace_seconds)
        asked = [
            self.isolation.on_its_own("SyncJob", row["id"], partial(cancel, row))
            for row in self.repository.cancelled_since(since)
        ]
        return [run_id for run_id in asked if run_id]

    def _cancel_one(
        self, client: SyncPrefectClient, row: SyncJobRow, kill_grace_seconds: float
    ) -> str | None:
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
            self._stop_here(client, run_id, kill_grace_seconds)
        return None

    def _stop_here(self, client: SyncPrefectClient, run_id: str, kill_grace_seconds: float) -> None:
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
        elif time.time() - at > kill_grace_seconds + 10:
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


def _read_marker(marker: Path) -> tuple[float, int, float | None] | None:
    """(when, pid, start time) of a stop this reconciler began, None when there is none."""
    try:
        data = json.loads(marker.read_text())
        return float(data["at"]), int(data["pid"]), data.get("started")
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        return (0.0, 0, None)  # unreadable: treat the process as gone and finish the stop
