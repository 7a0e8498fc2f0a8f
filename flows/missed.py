"""Missed cron firings: after downtime a schedule runs once, not once per missed firing.

Prefect runs every late scheduled run it finds (there is no "skip if late"). At the start of an
auto-scheduled run we decide instead: if a run of the same deployment scheduled for a later time
is already due, this one is superseded; if this is the newest but its scheduled time is older
than the catch-up window (POLIGRAPH_CATCH_UP_WINDOW_SECONDS, default 1 h), it is too old. Either
way it ends at once, Completed with the reason, without touching SyncJob (no work was done).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterDeploymentId,
    FlowRunFilterExpectedStartTime,
    FlowRunFilterId,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.context import FlowRunContext

from deployments.settings import get_settings

SCHEDULER_KEY_PREFIX = "scheduled "  # idempotency keys of runs made by Prefect's scheduler


def is_scheduled(run: FlowRun) -> bool:
    return bool(run.auto_scheduled or (run.idempotency_key or "").startswith(SCHEDULER_KEY_PREFIX))


def scheduled_time(client: SyncPrefectClient, run: FlowRun) -> datetime | None:
    """The time a scheduled run was planned for: its cron firing.

    Not `expected_start_time`: a run re-proposed while waiting for a concurrency slot gets a new
    one. The first Scheduled state keeps the planned time.
    """
    states = [
        s
        for s in client.read_flow_run_states(run.id)
        if s.type == StateType.SCHEDULED and s.state_details.scheduled_time
    ]
    if not states:
        return run.expected_start_time
    return min(states, key=lambda s: s.timestamp).state_details.scheduled_time


def missed_firing_reason(now: datetime | None = None) -> str | None:
    """Why this run must not do its work, or None when it should.

    The engine's own copy of the run (read after it became Running) says whether it was
    scheduled: a run created by an event or by hand costs no API call here; a scheduled one
    asks through the engine's client."""
    now = now or datetime.now(UTC)
    context = FlowRunContext.get()
    if context is None or context.flow_run is None or not isinstance(context.client, SyncPrefectClient):
        return None  # not inside a served or deployed run (a test calling the function itself)
    me, client = context.flow_run, context.client
    if not is_scheduled(me) or me.deployment_id is None:
        return None
    if me.run_count > 1:  # a retry of a run that already started: not a missed firing
        return None
    mine = scheduled_time(client, me)
    if mine is None:
        return None
    # expected start times only move later, so every run scheduled for a later time is among these
    candidates = client.read_flow_runs(
        flow_run_filter=FlowRunFilter(
            deployment_id=FlowRunFilterDeploymentId(any_=[me.deployment_id]),
            expected_start_time=FlowRunFilterExpectedStartTime(after_=mine),
            id=FlowRunFilterId(not_any_=[me.id]),
        ),
        limit=50,
    )
    newer = [
        planned
        for run in candidates
        if is_scheduled(run)
        if (planned := scheduled_time(client, run)) is not None and mine < planned <= now
    ]
    if newer:
        latest = max(newer).isoformat()
        return f"scheduled for {mine.isoformat()}, superseded by the newer missed firing of {latest}"
    window = timedelta(seconds=get_settings().catch_up_window_seconds)
    if now - mine > window:
        return f"scheduled for {mine.isoformat()}, missed by more than the catch-up window ({window})"
    return None
