"""A step's global concurrency slot under the faults a Prefect server gives: 503 on the increment
(SQLite's "database is locked"), 423 (held by another) with a Retry-After, a limit that does not
exist. Real flows, real Prefect server; respx injects the faults (flows/slots.py)."""

from __future__ import annotations

import uuid

import httpx
import pytest
import respx

from deployments.syncjob import job_id_for_flow_run
from flows.sync_script import sync_script

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
