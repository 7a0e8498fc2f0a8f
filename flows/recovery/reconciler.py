"""The Reconciler: every recovery pass in turn, again and again, each on its own.

One object per process (`python -m scripts.reconcile`, scripts/reconcile.py) holds what the
passes remember between two rounds (cancelled runs already settled, Running runs seen unbegun,
items that keep failing) and reads the settings each pass is bounded by at each round. A pass
that fails for a reason of its own is logged and the others still run; an outage (the database
or the Prefect server away) ends the round, and the next one comes after
POLIGRAPH_RECONCILE_INTERVAL_SECONDS.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from functools import partial

from prefect.client.orchestration import SyncPrefectClient, get_client

from deployments.settings import get_settings
from deployments.syncjob import SyncJobRepository, syncjob_repository
from flows.recovery.cancels import CancelPass
from flows.recovery.dead_runs import DeadRunsPass
from flows.recovery.ended_runs import EndedRunsPass
from flows.recovery.isolation import ItemIsolation, is_outage, log, what_is_away
from flows.recovery.rows import RecoveryRows
from flows.recovery.slot_waits import log_slot_waits
from flows.recovery.stuck_runs import UNBEGUN_CONFIRM_SECONDS, StuckRunsPass


class Reconciler:
    """The passes and what they remember; `settings` and `unbegun_confirm_seconds` are read at
    each pass (tests shorten them)."""

    def __init__(self, repository: SyncJobRepository | None = None) -> None:
        self.repository = repository or syncjob_repository()
        self.settings = get_settings()
        self.unbegun_confirm_seconds = UNBEGUN_CONFIRM_SECONDS
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._isolation = ItemIsolation()
        rows = RecoveryRows(self.repository)
        self._cancels = CancelPass(self.repository, self._isolation)
        self._dead = DeadRunsPass(rows, self._isolation)
        self._stuck = StuckRunsPass(rows, self._isolation)
        self._ended = EndedRunsPass(rows, self._isolation)

    # --- passes (flows/recovery/*.py) --------------------------------------------------------
    def cancel_pass(self, client: SyncPrefectClient) -> list[str]:
        """Cancel the flow runs of cancelled rows; return the flow run ids asked to cancel."""
        return self._cancels.run(client, self.settings.kill_grace_seconds)

    def dead_local_runs_pass(self, client: SyncPrefectClient) -> list[str]:
        """Runs of this machine whose process died: ended, their leftovers killed; the job ids
        failed."""
        return self._dead.run(client)

    def stuck_runs_pass(self, client: SyncPrefectClient) -> list[str]:
        """Runs left Pending, Cancelling, or Running before their body began, with no process to
        move them on: Crashed (the row FAILED) or Cancelled. Returns the flow run ids ended."""
        return self._stuck.run(client, self.settings.stuck_run_seconds, self.unbegun_confirm_seconds)

    def states_pass(self, client: SyncPrefectClient) -> list[str]:
        """Active rows whose flow run ended badly or disappeared → FAILED with the reason."""
        return self._ended.run(client)

    def slot_wait_pass(self, client: SyncPrefectClient) -> list[str]:
        """Log runs kept waiting for a deployment concurrency slot beyond the bound."""
        return log_slot_waits(client, self.settings.slot_wait_warning_seconds)

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
                name: self._isolation.on_its_own("pass", name, partial(run, client)) or []
                for name, run in passes.items()
            }

    # --- loop ----------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self.run_forever, name="reconciler", daemon=True)
        self._thread.start()

    def run_forever(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.run_once()
            except Exception as exc:  # Prefect or the database may be away: next pass
                self._stuck.forget()  # what a pass saw before an outage is looked at again after
                if is_outage(exc):
                    log.warning(
                        "reconcile pass failed, %s away: %s", what_is_away(exc), str(exc).splitlines()[0]
                    )
                else:
                    log.exception("reconcile pass failed")
            elapsed = time.monotonic() - started
            self._stop.wait(max(0.0, self.settings.reconcile_interval_seconds - elapsed))

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=10)
