"""A real Prefect outage: events sent while the server is stopped all run, once each, when it
is back. Uses its own Prefect server (so the session's stays up) and a `python -m shim` process.
"""

from __future__ import annotations

import json
import os
import uuid

import httpx
import pytest
from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_URL, temporary_settings

from deployments.catalog import get_catalog
from deployments.settings import get_settings
from deployments.specs import deployment_specs
from scripts.serve import runner_deployment
from shim.outbox import open_outbox
from shim.settings import ShimSettings
from support.paths import STATE
from support.polling import run_async, wait_for
from support.ports import free_port
from support.prefect_server import start_prefect_server
from support.processes import stop_process_group
from support.shim import shim_metric, start_shim_process

pytestmark = pytest.mark.slow


def prefect_up(port: int) -> float:
    return shim_metric(port, "poligraph_shim_prefect_up")


def probes(port: int) -> float:
    return shim_metric(port, "poligraph_shim_prefect_probes_total")


def send(port: int, count: int, offset: int) -> list[str]:
    events = [{"name": "sync/alpha", "data": {"limit": offset + i}} for i in range(1, count + 1)]
    body = httpx.post(f"http://127.0.0.1:{port}/e/NO_EVENT_KEY_SET", content=json.dumps(events)).json()
    assert body["status"] == 200
    return body["ids"]


def test_events_sent_while_prefect_is_down_run_once_when_it_is_back(pg_url, syncjobs):
    prefect_port, shim_port = free_port(), free_port()
    home = STATE / f"outage-{uuid.uuid4().hex[:6]}"
    api = f"http://127.0.0.1:{prefect_port}/api"
    schema = f"shim_{uuid.uuid4().hex[:10]}"
    server = start_prefect_server(prefect_port, home, "outage-prefect.log")
    with temporary_settings(updates={PREFECT_API_URL: api}):
        for spec in deployment_specs(get_catalog()):
            runner_deployment(spec).apply()
    env = {
        **os.environ,
        "PREFECT_API_URL": api,
        "POLIGRAPH_SHIM_SCHEMA": schema,
        "POLIGRAPH_SHIM_MAX_BACKOFF_SECONDS": "1",
        "POLIGRAPH_SHIM_PREFECT_TIMEOUT_SECONDS": "2",
    }
    shim = start_shim_process(env, shim_port, "outage-shim.log")
    outbox = open_outbox(ShimSettings(schema_name=schema), get_settings())
    try:
        send(shim_port, 2, 0)
        wait_for(lambda: outbox.pending_count() == 0, timeout=60, what="dispatch while Prefect is up")

        stop_process_group(server)  # Prefect goes away
        during = send(shim_port, 5, 100)
        assert len(during) == 5  # still accepted: the outbox holds them
        # Tried once, then the dispatcher only probes Prefect's health: no event is walked
        # through a timeout again while it is down.
        wait_for(
            lambda: (
                all(r["attempts"] >= 1 for r in outbox.events() if r["event_id"] in during)
                and prefect_up(shim_port) == 0
            ),
            timeout=60,
            what="an attempt against the stopped server",
        )
        attempts = {r["pk"]: r["attempts"] for r in outbox.events() if r["event_id"] in during}
        wait_for(lambda: probes(shim_port) >= 3, timeout=30, what="a few health probes")
        assert {r["pk"]: r["attempts"] for r in outbox.events() if r["event_id"] in during} == attempts
        assert outbox.pending_count() == 5

        server = start_prefect_server(prefect_port, home, "outage-prefect.log")  # back
        wait_for(lambda: outbox.pending_count() == 0, timeout=90, what="the backlog after the outage")
    finally:
        stop_process_group(shim)

    rows = outbox.events()
    assert len(rows) == 7 and all(r["status"] == "done" for r in rows)
    assert len({r["flow_run_id"] for r in rows}) == 7

    async def limits_of_runs() -> list[int]:
        async with get_client() as client:
            runs = [await client.read_flow_run(r["flow_run_id"]) for r in rows]
        return sorted(run.parameters["limit"] for run in runs)

    try:
        with temporary_settings(updates={PREFECT_API_URL: api}):
            assert run_async(limits_of_runs()) == [1, 2, 101, 102, 103, 104, 105]
    finally:
        stop_process_group(server)
