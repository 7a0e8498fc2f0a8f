"""Flow `sync-script`: one catalog script alone (one deployment per script, event sync/<id>)."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.states import Completed, State

from deployments.catalog import get_catalog
from deployments.plans import plan_script
from flows.execution import execute_plan, require_enabled
from flows.hooks import FAILURE_HOOKS
from flows.missed import missed_slot_reason


@flow(name="sync-script", persist_result=True, log_prints=True, **FAILURE_HOOKS)
def sync_script(
    script: str,
    job_id: str | None = None,
    flags: list[str] | None = None,
    limit: int | None = None,
) -> dict[str, Any] | State[Any]:
    """Run one script. `flags` replace the catalog's default flags; `limit` sets --limit.

    `job_id` is the SyncJob row the admin created; without it the run creates its own row.
    """
    if reason := missed_slot_reason():
        get_run_logger().warning("not running: %s", reason)
        return Completed(message=f"skipped: {reason}")
    plan = plan_script(get_catalog(), script, flags=flags, limit=limit)  # refuses bad flags
    require_enabled(plan)
    return execute_plan(plan, job_id)
