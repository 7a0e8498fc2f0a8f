"""What a run's Artifacts tab shows, read back through the Prefect client after real runs
(Prefect server, stub scripts as subprocesses, PostgreSQL rows)."""

from __future__ import annotations

import json
import threading
import time

import pytest
import respx

from deployments.syncjob import flow_run_of, job_id_for_flow_run
from flows.sync_group import sync_group
from flows.sync_script import sync_script
from support.polling import wait_for
from support.prefect_server import artifacts_of
from support.syncjob import insert_pending

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_api")]


def table(artifact) -> list[tuple]:
    return [(r["step"], r["status"], r["attempts"]) for r in json.loads(artifact.data)]


def failed_group(group: str) -> tuple[dict, str]:
    """Run a group that must fail; its artifacts by key, and its flow-run id."""
    state = sync_group(group=group, return_state=True)
    assert state.is_failed()
    flow_run_id = str(state.state_details.flow_run_id)
    return artifacts_of(flow_run_id), flow_run_id


def test_progress_follows_the_run_live_and_ends_at_100_with_its_steps_table(syncjobs, stubs):
    stubs.configure("alpha", sleep=4, progress=[[1, 4], [2, 4], [3, 4], [4, 4]])
    insert_pending(syncjobs, "cartifacts000000000000001", "alpha")
    runner = threading.Thread(
        target=sync_script, kwargs={"script": "alpha", "job_id": "cartifacts000000000000001"}
    )
    runner.start()
    seen: set[tuple] = set()
    try:
        flow_run_id = wait_for(lambda: flow_run_of(syncjobs.get("cartifacts000000000000001")), what="the run")
        while runner.is_alive():  # sample the bar the run page shows
            if bar := artifacts_of(flow_run_id).get("alpha-progress"):
                seen.add((bar.data, bar.description))
            time.sleep(0.1)
    finally:
        runner.join()
    live = {(25, "alpha: 1/4"), (50, "alpha: 2/4"), (75, "alpha: 3/4")}  # the row's values, as written
    assert seen & live, seen
    found = artifacts_of(flow_run_id)
    assert (found["alpha-progress"].data, found["alpha-progress"].description) == (100, "alpha: done")
    steps = found["alpha-steps"]
    assert steps.type == "table" and steps.description == "alpha COMPLETED: 1 succeeded"
    (row,) = json.loads(steps.data)
    assert row["status"] == "succeeded" and row["exit code"] == 0 and row["duration (s)"] > 0
    assert syncjobs.get("cartifacts000000000000001")["progress"] == 100


def test_a_group_stopped_by_a_step_that_exhausted_its_retries_has_its_table(syncjobs, stubs):
    stubs.configure("broken", fail_times=99, stderr="kaboom")
    found, _ = failed_group("stops")
    assert table(found["stops-steps"]) == [
        ("one", "succeeded", 1),
        ("two", "failed", 2),
        ("three", "not run", ""),
    ]
    assert json.loads(found["stops-steps"].data)[1]["detail"] == (
        "step two (broken) failed on attempt 2/2: exit code 1"
    )
    bar = found["stops-progress"]
    assert bar.data == 33 and bar.description == "step 2/3 two (broken): failed"
    assert "stops-summary" not in found  # only continue-on-failure groups get one


def test_daily_with_a_failed_required_step_has_its_table_and_summary(syncjobs, stubs):
    stubs.configure("broken", fail_times=99)
    stubs.configure("gamma", fail_times=99, stderr="required gamma is down")
    found, flow_run_id = failed_group("daily")
    assert table(found["daily-steps"]) == [
        ("a", "succeeded", 1),
        ("b", "failed", 2),
        ("c", "skipped", ""),
        ("d", "failed", 1),
    ]
    summary = found["daily-summary"]
    assert summary.type == "markdown"
    assert summary.data.startswith("## daily: 1 succeeded, 2 failed, 1 skipped\n")
    assert "**Failed**: required step(s) failed: d" in summary.data
    assert "required gamma is down" in summary.data
    assert (
        "- **d** (`gamma`): failed" in summary.data
        and "- **c** (`retired`): retired on purpose" in summary.data
    )
    assert found["daily-progress"].description == "failed: required step(s) failed: d"
    assert found["daily-progress"].data == 99  # where the row's progress stopped
    row = syncjobs.get(job_id_for_flow_run(flow_run_id))
    assert row["status"] == "FAILED" and row["progress"] == 99


def test_a_failing_artifact_api_fails_neither_the_run_nor_its_row(syncjobs, stubs):
    with respx.mock(assert_all_called=False) as router:
        route = router.route(url__regex=r".*/api/artifacts/.*").respond(500, json={"detail": "boom"})
        router.route().pass_through()
        state = sync_script(script="gamma", return_state=True)
    assert route.called
    assert state.is_completed()
    assert syncjobs.get(job_id_for_flow_run(str(state.state_details.flow_run_id)))["status"] == "COMPLETED"
    assert [key for key in artifacts_of(state.state_details.flow_run_id) if key] == []  # None: its result
