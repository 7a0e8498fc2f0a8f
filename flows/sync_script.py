"""Flow `sync-script`: one catalog script alone (one deployment per script, event sync/<id>)."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.states import Completed, State

from deployments.catalog import get_catalog
from deployments.plans import plan_script
from flows.execution import execute_plan, register_run, require_enabled
from flows.hooks import RUN_HOOKS
from flows.missed import missed_firing_reason


@flow(name="sync-script", log_prints=True, **RUN_HOOKS)
def sync_script(
    script: str,
    job_id: str | None = None,
    flags: list[str] | None = None,
    limit: int | None = None,
) -> dict[str, Any] | State[Any]:
    """Run one catalog script.

    Each deployment's run form says more: its flags, its defaults (deployments/ui.py).

    Args:
        script: The catalog script to run.
        job_id: The SyncJob row the admin created; empty: the run creates its own row.
        flags: Replace the script's default flags (unset: the defaults; an empty list: none).
        limit: Sets --limit=N, replacing any other --limit.
    """
    register_run(job_id)
    if reason := missed_firing_reason():
        get_run_logger().warning("not running: %s", reason)
        return Completed(message=f"skipped: {reason}")
    plan = plan_script(get_catalog(), script, flags=flags, limit=limit)  # refuses bad flags
    require_enabled(plan)
    return execute_plan(plan, job_id)
