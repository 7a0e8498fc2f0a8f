"""A real Prefect outage: a backlog of 400 events (two dispatcher batches) sent while the server
is stopped all run, once each, as soon as it is back, and their Prefect events reach its feed.
Uses its own Prefect server (the local stack's settings; the session's server stays up) and a
`python -m shim`.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from typing import Any

import httpx
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags
from prefect.client.schemas.sorting import FlowRunSort
from prefect.events.filters import EventFilter, EventNameFilter
from prefect.settings import PREFECT_API_URL, temporary_settings

from deployments.catalog import get_catalog
from deployments.settings import get_settings
from scripts.pool_deployments import apply_deployments
from scripts.prefect_settings import SQLITE_SETTINGS
from scripts.worker import PoligraphWorker
from shim.outbox import open_outbox
from shim.settings import ShimSettings
from support.paths import STATE
from support.polling import run_async, wait_for
from support.ports import free_port
from support.prefect_server import start_prefect_server
from support.processes import stop_process_group
from support.shim import shim_metric, start_shim_process

pytestmark = pytest.mark.slow
BACKLOG = 400  # more than one dispatcher batch (200), each in several bulk requests (100)


def prefect_up(port: int) -> float:
    return shim_metric(port, "poligraph_shim_prefect_up")


def probes(port: int) -> float:
    return shim_metric(port, "poligraph_shim_prefect_probes_total")


def send(port: int, count: int, offset: int) -> list[str]:
    events = [{"name": "sync/alpha", "data": {"limit": offset + i}} for i in range(1, count + 1)]
    body = httpx.post(f"http://127.0.0.1:{port}/e/NO_EVENT_KEY_SET", content=json.dumps(events)).json()
    assert body["status"] == 200
    return body["ids"]


def test_a_backlog_sent_while_prefect_is_down_runs_once_as_soon_as_it_is_back(pg_url, syncjobs):
    prefect_port, shim_port = free_port(), free_port()
    home = STATE / f"outage-{uuid.uuid4().hex[:6]}"
    api = f"http://127.0.0.1:{prefect_port}/api"
    schema = f"shim_{uuid.uuid4().hex[:10]}"
    server_env = dict(SQLITE_SETTINGS)  # the local stack's Prefect on SQLite
    server = start_prefect_server(prefect_port, home, "outage-prefect.log", server_env)
    with temporary_settings(updates={PREFECT_API_URL: api}):
        run_async(apply_deployments(get_catalog(), PoligraphWorker))
    env = {
        **os.environ,
        "PREFECT_API_URL": api,
        "POLIGRAPH_SHIM_SCHEMA": schema,
        "POLIGRAPH_SHIM_PREFECT_TIMEOUT_SECONDS": "2",
        "POLIGRAPH_SHIM_PROBE_SECONDS": "1",
    }
    shim = start_shim_process(env, shim_port, "outage-shim.log")
    outbox = open_outbox(ShimSettings(schema_name=schema), get_settings())
    try:
        send(shim_port, 2, 0)
        wait_for(lambda: outbox.pending_count() == 0, timeout=60, what="dispatch while Prefect is up")

        stop_process_group(server)  # Prefect goes away
        during = [
            event_id
            for part in range(4)
            for event_id in send(shim_port, BACKLOG // 4, 100 + part * BACKLOG // 4)
        ]
        assert len(during) == BACKLOG  # still accepted: the outbox holds them
        # One batch is tried and fails; then the dispatcher only probes Prefect's health: no
        # event is walked through a timeout while it is down.
        wait_for(lambda: prefect_up(shim_port) == 0, timeout=60, what="Prefect seen down")
        attempts = {r["pk"]: r["attempts"] for r in outbox.events() if r["event_id"] in during}
        wait_for(lambda: probes(shim_port) >= 3, timeout=30, what="a few health probes")
        assert {r["pk"]: r["attempts"] for r in outbox.events() if r["event_id"] in during} == attempts
        assert sum(attempts.values()) <= ShimSettings().batch_size
        assert outbox.pending_count() == BACKLOG

        server = start_prefect_server(prefect_port, home, "outage-prefect.log", server_env)  # back
        back = time.time()
        wait_for(lambda: outbox.pending_count() == 0, timeout=300, what="the backlog after the outage")
    finally:
        stop_process_group(shim)

    rows = outbox.events()
    assert len(rows) == BACKLOG + 2 and all(r["status"] == "done" for r in rows)
    assert len({r["flow_run_id"] for r in rows}) == BACKLOG + 2

    async def runs() -> list[Any]:
        async with get_client() as client:
            found: list[Any] = []
            ours = FlowRunFilter(tags=FlowRunFilterTags(all_=["inngest"]))  # not the cron's runs
            while page := await client.read_flow_runs(
                flow_run_filter=ours, sort=FlowRunSort.ID_DESC, offset=len(found), limit=200
            ):
                found += page
        return found

    async def accepted_in_feed() -> int:
        async with get_client() as client:
            page = await client.read_events(
                EventFilter(event=EventNameFilter(name=["inngest.event.accepted"])), limit=50
            )
        return page.total

    try:
        with temporary_settings(updates={PREFECT_API_URL: api}):
            created = run_async(runs())
            limits = sorted(run.parameters["limit"] for run in created)
            assert limits == [1, 2, *range(101, 101 + BACKLOG)]  # each event one run, none twice
            # the dispatcher was probing, not waiting out a per-event backoff: the first run of
            # the backlog came within a few probes of the server's return
            first = min(run.created for run in created if run.parameters["limit"] > 100)
            assert first.timestamp() - back < 10
            # the feed caught up: each event's Prefect event reached it once Prefect was back
            wait_for(
                lambda: run_async(accepted_in_feed()) == BACKLOG + 2,
                timeout=90,
                interval=2,
                what="the event feed",
            )
    finally:
        stop_process_group(server)
