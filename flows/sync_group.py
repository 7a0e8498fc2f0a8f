"""Flow `sync-group`: a catalog group's scripts in order (press, votes, ..., sync-daily)."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.states import Completed, State

from deployments.catalog import get_catalog
from deployments.plans import plan_group
from flows.execution import execute_plan, register_run
from flows.hooks import RUN_HOOKS
from flows.missed import missed_firing_reason


@flow(name="sync-group", log_prints=True, **RUN_HOOKS)
def sync_group(
    group: str, job_id: str | None = None, limit: int | None = None
) -> dict[str, Any] | State[Any]:
    """Run a group's steps in order.

    A group stops at the first step that exhausts its retries, except continue-on-failure
    groups (sync-daily), which go on and fail only when a step marked required failed.
    Returns `{total, succeeded, failed, failures, skipped}`.

    Args:
        group: The catalog group to run.
        job_id: The SyncJob row the admin created; empty: the run creates its own row.
        limit: --limit=N of the group's step that takes one (a group without one refuses it).
    """
    register_run(job_id)
    if reason := missed_firing_reason():
        get_run_logger().warning("not running: %s", reason)
        return Completed(message=f"skipped: {reason}")
    plan = plan_group(get_catalog(), group, limit=limit)
    return execute_plan(plan, job_id)
