"""Events → flow runs: the dispatcher against a real Prefect server, its outbox on PostgreSQL.

Prefect faults (down, 500, slow) are injected with respx; a real `python -m shim` process is
killed in the middle of dispatching and restarted.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import uuid

import httpx
import inngest
import pytest
import respx
import sqlalchemy as sa
from prefect.client.orchestration import get_client

from deployments.catalog import get_catalog
from deployments.settings import get_settings
from shim.dispatcher import Dispatcher, idempotency_key
from shim.outbox import ClaimedEvent, open_outbox
from shim.settings import ShimSettings
from support.polling import run_async, wait_for
from support.ports import free_port
from support.prefect_server import apply_catalog_deployments, delete_scheduled_runs
from support.shim import dev_client, running_shim, start_shim_process
from support.syncjob import insert_pending

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def deployed(prefect_api, pg_url):
    """The test catalog's deployments, registered but not served: runs stay Scheduled."""
    apply_catalog_deployments()
    yield prefect_api
    delete_scheduled_runs()  # no later test's runner may pick them up


@pytest.fixture
def shim_settings():
    """A fresh schema per test, so each test sees only its own events."""
    return ShimSettings(schema_name=f"shim_{uuid.uuid4().hex[:10]}", max_backoff_seconds=0.05)


@pytest.fixture
def outbox(deployed, syncjobs, shim_settings):
    return open_outbox(shim_settings, get_settings())


def flow_runs(ids) -> dict:
    async def read():
        async with get_client() as client:
            return {str(i): await client.read_flow_run(i) for i in ids}

    return run_async(read())


def drain(dispatcher: Dispatcher, outbox) -> None:
    """Dispatch until nothing is pending (postponed events come due again within 0.05 s)."""
    wait_for(lambda: dispatcher.dispatch_due() == 0 and outbox.pending_count() == 0, timeout=60)


def test_tables_live_in_their_own_schema(outbox, shim_settings, pg_url):
    with outbox.engine.connect() as conn:
        tables = conn.execute(
            sa.text(
                "SELECT table_schema, table_name FROM information_schema.tables WHERE table_name LIKE 'inngest_%'"
            )
        ).all()
    schemas = {schema for schema, _ in tables if schema == shim_settings.schema_name}
    assert schemas == {shim_settings.schema_name}
    assert not [t for t in tables if t[0] == "public"]


def test_each_event_becomes_one_run_with_its_parameters(outbox, shim_settings, syncjobs):
    insert_pending(syncjobs, "cshimjob00000000000000001", "alpha")
    with running_shim(shim_settings, outbox, catalog=get_catalog()) as (url, app):
        client = dev_client(url)
        client.send_sync(
            inngest.Event(name="sync/alpha", data={"jobId": "cshimjob00000000000000001", "limit": 4})
        )
        client.send_sync([inngest.Event(name="sync/pair"), inngest.Event(name="sync/pair", id="same")])
        client.send_sync(inngest.Event(name="sync/pair", id="same"))  # duplicate: recorded only
        drain(app.state.dispatcher, outbox)  # a busy test server may answer 503: retried
    rows = outbox.events()
    assert [r["status"] for r in rows].count("duplicate") == 1
    done = [r for r in rows if r["status"] == "done"]
    runs = flow_runs([r["flow_run_id"] for r in done])
    assert len(runs) == 3
    alpha = next(r for r in done if r["name"] == "sync/alpha")
    run = runs[alpha["flow_run_id"]]
    assert run.parameters == {"script": "alpha", "limit": 4, "job_id": "cshimjob00000000000000001"}
    assert run.idempotency_key == f"sync-script/alpha:{alpha['pk']}"
    assert {"inngest", "event:sync/alpha"} <= set(run.tags)
    assert syncjobs.get("cshimjob00000000000000001")["status"] == "PENDING"  # the flow owns it now


def test_refused_events_fail_their_job_at_once(outbox, shim_settings, syncjobs):
    insert_pending(syncjobs, "cshimnohandler00000000001", "nope")
    insert_pending(syncjobs, "cshimbadflag0000000000001", "alpha")
    with running_shim(shim_settings, outbox, catalog=get_catalog()) as (url, app):
        client = dev_client(url)
        client.send_sync(inngest.Event(name="sync/nope", data={"jobId": "cshimnohandler00000000001"}))
        client.send_sync(
            inngest.Event(name="sync/alpha", data={"jobId": "cshimbadflag0000000000001", "flags": "--rm -rf"})
        )
        app.state.dispatcher.dispatch_due()
    nohandler = syncjobs.get("cshimnohandler00000000001")
    assert nohandler["status"] == "FAILED" and nohandler["error"] == "no flow handles sync/nope"
    badflag = syncjobs.get("cshimbadflag0000000000001")
    assert badflag["status"] == "FAILED" and "--rm is not allowed for alpha" in badflag["error"]
    assert all(r["flow_run_id"] is None for r in outbox.events())


@pytest.mark.parametrize(
    "fault",
    [
        httpx.ConnectError("connection refused"),
        httpx.Response(500, json={"detail": "boom"}),
        httpx.ReadTimeout("timed out"),
    ],
    ids=["down", "500", "slow"],
)
def test_prefect_faults_postpone_events_and_lose_nothing(outbox, shim_settings, fault):
    with running_shim(shim_settings, outbox, catalog=get_catalog()) as (url, app):
        ids = dev_client(url).send_sync([inngest.Event(name="sync/alpha"), inngest.Event(name="sync/pair")])
        dispatcher: Dispatcher = app.state.dispatcher
        with respx.mock(assert_all_called=False) as router:
            route = router.post(url__regex=r".*/create_flow_run(/bulk)?$").mock(side_effect=[fault] * 50)
            router.route().pass_through()
            dispatcher.dispatch_due()
            assert route.called
        rows = outbox.events()
        assert [r["status"] for r in rows] == ["pending", "pending"]
        assert all(r["attempts"] == 1 and r["last_error"] for r in rows)
        assert outbox.pending_count() == 2
        # Prefect is back: the next passes create exactly one run per event.
        drain(dispatcher, outbox)
    rows = outbox.events()
    assert sorted(r["event_id"] for r in rows) == sorted(ids)
    assert len({r["flow_run_id"] for r in rows}) == 2


def test_a_run_created_before_a_crash_is_found_again_not_duplicated(outbox, shim_settings):
    """The shim died after Prefect created the run but before the row said so."""
    with running_shim(shim_settings, outbox, catalog=get_catalog()) as (url, app):
        dev_client(url).send_sync(inngest.Event(name="sync/alpha"))
        dispatcher: Dispatcher = app.state.dispatcher
        (row,) = outbox.events()
        with get_client(sync_client=True) as client:  # what happened before the crash
            deployment = client.read_deployment_by_name(row["deployment"])
            first = client.create_flow_run_from_deployment(
                deployment.id,
                parameters=row["parameters"],
                idempotency_key=idempotency_key(ClaimedEvent.from_row(row)),
            ).id
        drain(dispatcher, outbox)
    (row,) = outbox.events()
    assert row["status"] == "done" and row["flow_run_id"] == str(first)


def test_killed_shim_dispatches_every_pending_event_exactly_once_after_restart(deployed, syncjobs, pg_url):
    schema = f"shim_{uuid.uuid4().hex[:10]}"
    port = free_port()
    env = {
        **os.environ,
        "POLIGRAPH_SHIM_SCHEMA": schema,
        "POLIGRAPH_SHIM_BATCH_SIZE": "5",
    }

    def start() -> subprocess.Popen[bytes]:
        return start_shim_process(env, port, f"shim-{schema}.log")

    outbox = open_outbox(ShimSettings(schema_name=schema), get_settings())
    proc = start()
    events = [{"name": "sync/alpha", "data": {"limit": i + 1}} for i in range(40)]
    body = httpx.post(f"http://127.0.0.1:{port}/e/NO_EVENT_KEY_SET", content=json.dumps(events)).json()
    assert body["status"] == 200 and len(body["ids"]) == 40
    wait_for(lambda: sum(r["status"] == "done" for r in outbox.events()) >= 3, timeout=60, interval=0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert outbox.pending_count() > 0, "everything was dispatched before the kill: nothing tested"

    proc = start()
    try:
        wait_for(lambda: outbox.pending_count() == 0, timeout=120, what="the backlog to drain")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
    rows = outbox.events()
    assert len(rows) == 40 and all(r["status"] == "done" for r in rows)
    runs = flow_runs([r["flow_run_id"] for r in rows])
    assert len(runs) == 40  # forty distinct runs
    assert sorted(run.parameters["limit"] for run in runs.values()) == list(range(1, 41))

    async def runs_with_our_keys() -> int:
        keys = {f"sync-script/alpha:{r['pk']}" for r in rows}
        async with get_client() as client:
            deployment = await client.read_deployment_by_name("sync-script/alpha")
            from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

            found = await client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])), limit=200
            )
        return sum(run.idempotency_key in keys for run in found)

    assert run_async(runs_with_our_keys()) == 40  # no event got a second run
