"""The slot-wait pass: runs kept waiting for a deployment concurrency slot too long are logged.

A run waits (AwaitingConcurrencySlot) while its deployment's slots are taken: normal for a while,
worth an operator's look past POLIGRAPH_SLOT_WAIT_WARNING_SECONDS. Nothing is changed, only said.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterExpectedStartTime,
    FlowRunFilterState,
    FlowRunFilterStateName,
)

from flows.recovery.isolation import log


def log_slot_waits(client: SyncPrefectClient, bound_seconds: float) -> list[str]:
    """Log runs kept waiting for a deployment concurrency slot beyond the bound; their ids."""
    bound = timedelta(seconds=bound_seconds)
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
