"""Deployments served by `python -m scripts.serve`: runs in their own processes, as in production.

Covers what only shows with real parallel runs: no overlap of one script across two flows,
one run at a time per deployment (ENQUEUE), cancellation, and a retry from the API ("Retry" in
the UI) that skips completed steps.
"""

from __future__ import annotations

import pytest
from prefect.client.orchestration import get_client
from prefect.states import Cancelling, Scheduled

from deployments.catalog import get_catalog
from deployments.specs import deployment_specs
from deployments.syncjob import job_id_for_flow_run
from support.polling import run_async, wait_for
from support.prefect_server import create_run, deployment_ready, start_serve, wait_final
from support.processes import process_alive, stop_process_group
from support.syncjob import insert_pending

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def served(prefect_api, pg_url):
    proc = start_serve({}, "serve-test-catalog.log")
    try:
        for spec in deployment_specs(get_catalog()):
            wait_for(deployment_ready(spec.full_name), timeout=60, what=spec.full_name)
        yield proc
    finally:
        stop_process_group(proc)


def overlapping(intervals: list[tuple[float, float]]) -> list[tuple]:
    ordered = sorted(intervals)
    return [(a, b) for a, b in zip(ordered, ordered[1:], strict=False) if b[0] < a[1]]


def assert_ran_one_after_the_other(stubs, script: str, deployments: list[str]) -> None:
    stubs.configure(script, sleep=2)
    runs = [create_run(name) for name in deployments]  # created together
    states = [wait_final(run) for run in runs]
    assert all(state.is_completed() for state in states), states
    intervals = stubs.intervals(script)
    assert len(intervals) == len(deployments)
    assert overlapping(intervals) == []


def test_one_script_never_runs_twice_at_once_across_flows(served, syncjobs, stubs):
    assert_ran_one_after_the_other(stubs, "shared", ["sync-script/shared", "sync-group/with-shared"])


def test_second_trigger_of_a_deployment_waits_instead_of_being_dropped(served, syncjobs, stubs):
    assert_ran_one_after_the_other(stubs, "gamma", ["sync-script/gamma", "sync-script/gamma"])


def test_cancelling_a_run_kills_its_scripts_and_fails_the_row(served, syncjobs, stubs):
    stubs.configure("long", sleep=120, grandchild=True)
    insert_pending(syncjobs, "ccancelled000000000000001", "long")
    run = create_run("sync-script/long", job_id="ccancelled000000000000001")
    wait_for(lambda: stubs.pids("long"), timeout=60, what="the script to start")
    pids = stubs.pids("long") + [c["pid"] for c in stubs.events("long", "start")]

    async def cancel():
        async with get_client() as client:
            await client.set_flow_run_state(run, Cancelling(), force=True)

    run_async(cancel())
    assert wait_final(run, timeout=60).is_cancelled()
    wait_for(lambda: not [pid for pid in pids if process_alive(pid)], timeout=30, what="no survivor")
    row = wait_for(
        lambda: (r := syncjobs.get("ccancelled000000000000001")) and r["status"] == "FAILED" and r,
        timeout=30,
        what="the row to be FAILED",
    )
    assert row["error"].startswith("Annulé")


def test_retry_from_the_api_skips_completed_steps(served, syncjobs, stubs):
    stubs.configure("beta", fail_times=2)  # both attempts of the first run fail
    run = create_run("sync-group/pair")
    assert wait_final(run).is_failed()
    job_id = job_id_for_flow_run(str(run))
    assert syncjobs.get(job_id)["status"] == "FAILED"

    async def retry():  # what the UI's "Retry" does: reschedule the same flow run
        async with get_client() as client:
            await client.set_flow_run_state(run, Scheduled(name="AwaitingRetry"), force=True)

    run_async(retry())
    wait_for(lambda: stubs.starts("beta") == 3, timeout=60, what="beta to run again")
    assert wait_final(run).is_completed()
    assert stubs.starts("alpha") == 1, "the completed step ran again"
    row = wait_for(lambda: (r := syncjobs.get(job_id)) and r["status"] == "COMPLETED" and r, timeout=30)
    assert row["error"] is None and row["result"]["flowRunId"] == str(run)
