"""A step's global concurrency slot under the faults a Prefect server gives: 503 on the increment
(SQLite's "database is locked"), 423 (held by another) with a Retry-After, a limit that does not
exist. Real flows, real Prefect server; respx injects the faults (flows/slots.py)."""

from __future__ import annotations

import json
import os
import uuid

import httpx
import pytest
import respx

from deployments.specs import script_limit_name
from deployments.syncjob import job_id_for_flow_run
from flows.slots import slot_api
from flows.sync_script import sync_script
from support.polling import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_api")]
INCREMENT = r".*/api/v2/concurrency_limits/increment-with-lease$"
RELEASE = r".*/api/v2/concurrency_limits/decrement-with-lease$"


def first_answer_then_the_server(router: respx.Router, pattern: str, first: httpx.Response) -> respx.Route:
    route = router.route(method="POST", url__regex=pattern)

    def once(request: httpx.Request) -> httpx.Response:
        route.pass_through()  # every later request reaches the server
        return first

    route.side_effect = once
    return route


def test_a_503_on_the_increment_is_retried_and_the_step_runs(syncjobs, stubs):
    with respx.mock(assert_all_called=False) as router:
        route = first_answer_then_the_server(router, INCREMENT, httpx.Response(503))
        router.route().pass_through()
        state = sync_script(script="gamma", return_state=True)
    assert state.is_completed(), state
    assert route.call_count >= 2  # the refused increment, then the one that took the slot
    assert len(stubs.intervals("gamma")) == 1


def test_a_held_slot_is_waited_for_as_long_as_the_server_says(syncjobs, stubs):
    with respx.mock(assert_all_called=False) as router:
        held = httpx.Response(423, headers={"Retry-After": "0.2"}, json={"detail": "held"})
        route = first_answer_then_the_server(router, INCREMENT, held)
        router.route().pass_through()
        state = sync_script(script="gamma", return_state=True)
    assert state.is_completed(), state
    assert route.call_count >= 2  # the refused increment, then the one that took the slot


def test_a_missing_limit_fails_the_step_instead_of_running_it_unprotected(syncjobs, stubs):
    none = httpx.Response(200, json={"lease_id": str(uuid.uuid4()), "limits": []})
    with respx.mock(assert_all_called=False) as router:
        router.route(method="POST", url__regex=INCREMENT).mock(return_value=none)
        router.route().pass_through()
        state = sync_script(script="gamma", return_state=True)
    assert state.is_failed()
    assert stubs.intervals("gamma") == []
    row = syncjobs.get(job_id_for_flow_run(str(state.state_details.flow_run_id)))
    assert row["status"] == "FAILED" and "does not exist" in row["error"]


def test_a_release_that_cannot_reach_prefect_does_not_fail_a_step_that_succeeded(syncjobs, stubs):
    with respx.mock(assert_all_called=False) as router:
        release = router.route(method="POST", url__regex=RELEASE).mock(
            side_effect=httpx.ConnectError("refused")
        )
        router.route().pass_through()
        state = sync_script(script="gamma", return_state=True)
    assert state.is_completed(), state
    assert release.call_count >= 2  # retried, then left to the lease's expiry
    assert syncjobs.get(job_id_for_flow_run(str(state.state_details.flow_run_id)))["status"] == "COMPLETED"


@pytest.fixture
def free_gamma() -> None:
    """No slot of gamma held (a test above leaves one to its lease's expiry, a minute)."""
    name = script_limit_name("gamma")
    httpx.patch(f"{os.environ['PREFECT_API_URL']}/v2/concurrency_limits/{name}", json={"active_slots": 0})
    assert active_slots("gamma") == 0


def holders(route: respx.Route) -> set[str]:
    return {json.loads(call.request.content)["holder"]["type"] for call in route.calls}


def active_slots(script: str) -> int:
    reply = httpx.post(f"{os.environ['PREFECT_API_URL']}/v2/concurrency_limits/filter", json={})
    reply.raise_for_status()
    (limit,) = [limit for limit in reply.json() if limit["name"] == script_limit_name(script)]
    return int(limit["active_slots"])


def test_a_run_asks_for_its_slot_once_from_its_step_and_gives_it_back_once(syncjobs, stubs, free_gamma):
    with respx.mock(assert_all_called=False) as router:
        increments = router.route(method="POST", url__regex=INCREMENT).pass_through()
        releases = router.route(method="POST", url__regex=RELEASE).pass_through()
        router.route().pass_through()
        state = sync_script(script="gamma", return_state=True)
    assert state.is_completed(), state
    # (respx lists a passed-through request twice: distinct requests are counted)
    assert holders(increments) == {"task_run"}  # asked for by the step, nothing by the run itself
    assert len({call.request.content for call in increments.calls}) == 1
    assert len({call.request.content for call in releases.calls}) == 1
    assert active_slots("gamma") == 0


def test_a_run_whose_row_was_cancelled_first_takes_no_slot(syncjobs, stubs, free_gamma):
    syncjobs.create_pending("cslotcancel0000000000001", "gamma")
    assert syncjobs.cancel("cslotcancel0000000000001")
    with respx.mock(assert_all_called=False) as router:
        increments = router.route(method="POST", url__regex=INCREMENT).pass_through()
        router.route().pass_through()
        state = sync_script(script="gamma", job_id="cslotcancel0000000000001", return_state=True)
    assert state.is_cancelled(), state
    assert stubs.intervals("gamma") == []
    assert increments.call_count == 0
    wait_for(lambda: active_slots("gamma") == 0, timeout=10, what="no slot of gamma held")


def test_a_cancelled_run_is_not_held_up_by_a_slot_another_run_holds(syncjobs, stubs, free_gamma):
    other = slot_api().acquire(script_limit_name("gamma"))  # another run is running gamma
    try:
        syncjobs.create_pending("cslotcancel0000000000002", "gamma")
        assert syncjobs.cancel("cslotcancel0000000000002")
        # returns at once although the slot is held (a request for it would wait as long)
        state = sync_script(script="gamma", job_id="cslotcancel0000000000002", return_state=True)
        assert state.is_cancelled(), state
        assert active_slots("gamma") == 1
    finally:
        slot_api().release(other)
    assert active_slots("gamma") == 0
