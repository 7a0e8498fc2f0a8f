"""The rows the recovery passes end, and the row a run's body has named.

Three passes fail rows (dead runs, stuck runs, ended runs) and they do it one way: only a row
still active (a row the run or its hook ended first keeps what they wrote), with the reason the
admin reads (flows/row_texts.py), and with the `sync.failed` alert of a critical script, as a
run's own failure would have sent it (a cancel is no failure: no alert).
"""

from __future__ import annotations

from deployments.catalog import get_catalog
from deployments.specs import is_critical
from deployments.syncjob import SyncJobRepository, SyncJobRow, flow_run_of
from flows.alerts import alert_failure
from flows.recovery.isolation import log


class RecoveryRows:
    """The SyncJob rows as the passes read and end them."""

    def __init__(self, repository: SyncJobRepository) -> None:
        self.repository = repository

    def fail(
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

    def naming(self, job_id: str, flow_run_id: str) -> SyncJobRow | None:
        """The row `job_id` when the body of `flow_run_id` has named that run in it (its first
        write, made before any step, on whatever machine it runs)."""
        row = self.repository.get(job_id)
        return row if row is not None and flow_run_of(row) == flow_run_id else None

    def _alert(self, job_id: str, flow_run_id: str, reason: str, script: str | None = None) -> None:
        if script is None:
            row = self.repository.get(job_id)
            script = row["script"] if row else None
        if script and is_critical(get_catalog(), script):
            alert_failure(script, job_id, flow_run_id, reason)
