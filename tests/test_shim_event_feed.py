"""An event can be traced in Prefect: the run it created carries its id, and what happened to each
event (accepted with its run, duplicate, refused; a refused request) is in Prefect's event feed.
Real Prefect server, the test catalog's deployments registered (not served), outbox on
PostgreSQL, the real inngest SDK; everything read back through the Prefect client."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import inngest
import pytest
from prefect.client.orchestration import get_client
from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

from deployments.catalog import get_catalog
from deployments.settings import get_settings
from shim.outbox import open_outbox
from shim.settings import ShimSettings
from support.polling import run_async, wait_for
from support.prefect_server import apply_catalog_deployments, delete_scheduled_runs
from support.shim import dev_client, running_shim

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def deployed(prefect_api, pg_url):
    apply_catalog_deployments()
    yield prefect_api
    delete_scheduled_runs()


def feed(resource_ids: list[str]) -> dict[tuple[str, str], Any]:
    """The shim's events about these resources, by (event name, resource id)."""

    async def read() -> dict[tuple[str, str], Any]:
        async with get_client() as client:
            page = await client.read_events(
                EventFilter(
                    event=EventNameFilter(prefix=["inngest."]),
                    resource=EventResourceFilter(id=resource_ids),
                ),
                limit=50,
            )
        return {(event.event, event.resource.id): event for event in page.events}

    return run_async(read())


def test_runs_carry_their_event_and_every_event_is_in_prefects_feed(deployed, syncjobs):
    settings = ShimSettings(schema_name=f"shim_{uuid.uuid4().hex[:10]}", max_backoff_seconds=0.05)
    outbox = open_outbox(settings, get_settings())
    with running_shim(settings, outbox, run_dispatcher=True, catalog=get_catalog()) as (url, _app):
        client = dev_client(url)
        trace = f"trace-{uuid.uuid4().hex[:8]}"
        (accepted,) = client.send_sync(inngest.Event(name="sync/alpha", id=trace, data={"limit": 3}))
        (duplicate,) = client.send_sync(inngest.Event(name="sync/alpha", id=trace))
        (refused,) = client.send_sync(inngest.Event(name="sync/nope"))
        assert httpx.post(f"{url}/e/NO_EVENT_KEY_SET", content=b"{oops").status_code == 400
        wait_for(lambda: outbox.pending_count() == 0, timeout=60, what="the dispatch")
        (row,) = [r for r in outbox.events() if r["event_id"] == accepted]

        async def read_run() -> Any:
            async with get_client() as prefect:
                return await prefect.read_flow_run(uuid.UUID(row["flow_run_id"]))

        run = run_async(read_run())
        assert {f"inngest-event:{accepted}", "event:sync/alpha", "inngest"} <= set(run.tags)
        assert run.labels["inngest.event.id"] == accepted
        assert run.labels["inngest.event.name"] == "sync/alpha"

        resources = [f"inngest.event.{event_id}" for event_id in (accepted, duplicate, refused)]
        expected = {
            ("inngest.event.accepted", resources[0]),
            ("inngest.event.duplicate", resources[1]),
            ("inngest.event.refused", resources[2]),
        }
        events = wait_for(
            lambda: (found := feed(resources)) and expected <= set(found) and found,
            timeout=60,
            interval=1,
            what="the shim's events in Prefect's feed",
        )
    accepted_event = events[("inngest.event.accepted", resources[0])]
    related = {(r.id, r.role) for r in accepted_event.related}
    assert (f"prefect.flow-run.{run.id}", "flow-run") in related
    assert (f"prefect.deployment.{run.deployment_id}", "deployment") in related
    assert accepted_event.payload == {
        "name": "sync/alpha",
        "action": "run",
        "deployment": "sync-script/alpha",
        "flowRunId": str(run.id),
    }
    assert accepted_event.resource.get("prefect.resource.name") == "sync/alpha"
    assert events[("inngest.event.duplicate", resources[1])].payload["name"] == "sync/alpha"
    assert events[("inngest.event.refused", resources[2])].payload["reason"] == "no flow handles sync/nope"

    async def request_refusals() -> list[Any]:
        async with get_client() as prefect:
            page = await prefect.read_events(
                EventFilter(event=EventNameFilter(name=["inngest.request.refused"])), limit=50
            )
        return [e for e in page.events if e.payload.get("status") == 400]

    assert wait_for(
        lambda: run_async(request_refusals()), timeout=30, interval=1, what="the refused request in the feed"
    )
