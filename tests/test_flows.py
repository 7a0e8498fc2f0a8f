"""The sync flows run for real (Prefect server, stub scripts as subprocesses, PostgreSQL rows)."""

from __future__ import annotations

import threading
import time

import pytest

from deployments.syncjob import ERROR_MAX_CHARS, job_id_for_flow_run
from flows.sync_group import sync_group
from flows.sync_script import sync_script
from support.polling import wait_for
from support.prefect_server import run_logs
from support.processes import process_alive
from support.syncjob import insert_pending

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_api")]


def test_script_run_streams_output_and_completes_the_admin_row(syncjobs, stubs):
    stubs.configure("alpha", sleep=0.3, progress=[[1, 4], [4, 4]])
    insert_pending(syncjobs, "cadminjob0000000000000001", "alpha")
    state = sync_script(script="alpha", job_id="cadminjob0000000000000001", return_state=True)
    assert state.is_completed()
    row = syncjobs.get("cadminjob0000000000000001")
    assert row["status"] == "COMPLETED" and row["progress"] == 100 and row["error"] is None
    assert (row["processed"], row["total"]) == (4, 4)
    flow_run_id = str(state.state_details.flow_run_id)
    assert row["result"]["flowRunId"] == flow_run_id
    assert row["result"]["steps"][0]["exitCode"] == 0
    assert row["result"]["steps"][0]["durationSeconds"] > 0
    assert row["startedAt"] <= row["completedAt"]
    # Logs reach the server in batches: wait for the last line, then check the order.
    logs = wait_for(
        lambda: (
            (lines := [m for m in run_logs(flow_run_id) if m.startswith("alpha ")])
            and "alpha done" in lines
            and lines
        ),
        what="script logs",
    )
    assert logs[0] == "alpha starting with no flags"


def test_row_passes_through_running_with_progress(syncjobs, stubs):
    stubs.configure("alpha", sleep=3, progress=[[1, 3], [2, 3], [3, 3]])
    insert_pending(syncjobs, "cwatched00000000000000001", "alpha")
    seen: list[tuple] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            row = syncjobs.get("cwatched00000000000000001")
            seen.append((row["status"], row["progress"], row["processed"]))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        sync_script(script="alpha", job_id="cwatched00000000000000001")
    finally:
        done.set()
        watcher.join()
    statuses = [s for s, _, _ in seen]
    assert statuses[0] == "PENDING" and statuses[-1] == "COMPLETED"
    running = [(p, n) for s, p, n in seen if s == "RUNNING"]
    assert running, "never saw RUNNING"
    assert any(0 < p < 100 and n in (1, 2) for p, n in running), running
    assert statuses.index("COMPLETED") > statuses.index("RUNNING")


def test_group_without_job_id_creates_its_own_row(syncjobs, stubs):
    state = sync_group(group="pair", return_state=True)
    assert state.is_completed()
    job_id = job_id_for_flow_run(str(state.state_details.flow_run_id))
    row = syncjobs.get(job_id)
    assert row["script"] == "pair" and row["status"] == "COMPLETED"
    assert [s["name"] for s in row["result"]["steps"]] == ["first", "second"]
    assert stubs.starts("alpha") == 1 and stubs.starts("beta") == 1


def test_failing_step_exhausts_its_retries_and_fails_the_group(syncjobs, stubs):
    stubs.configure("broken", fail_times=99, stderr="kaboom: upstream 503")
    insert_pending(syncjobs, "cstops0000000000000000001", "stops")
    state = sync_group(group="stops", job_id="cstops0000000000000000001", return_state=True)
    assert state.is_failed()
    assert stubs.starts("broken") == 2  # retries: 1
    assert stubs.starts("gamma") == 0  # the group stopped
    assert stubs.events("alpha", "start")[0]["flags"] == ["--limit=3"]
    row = syncjobs.get("cstops0000000000000000001")
    assert row["status"] == "FAILED" and row["completedAt"] is not None
    assert "step two (broken)" in row["error"] and "exit code 1" in row["error"]
    assert "kaboom: upstream 503" in row["error"]


def test_group_limit_reaches_the_step_that_takes_it(syncjobs, stubs):
    stubs.configure("broken", fail_times=0)
    sync_group(group="stops", limit=9)
    assert stubs.events("alpha", "start")[0]["flags"] == ["--limit=9"]


def test_step_retry_recovers(syncjobs, stubs):
    stubs.configure("flaky", fail_times=2)
    state = sync_script(script="flaky", return_state=True)
    assert state.is_completed()
    assert stubs.starts("flaky") == 3
    row = syncjobs.get(job_id_for_flow_run(str(state.state_details.flow_run_id)))
    assert row["result"]["steps"][0]["attempts"] == 3


def test_flow_retry_skips_completed_steps(syncjobs, stubs):
    # beta fails twice (both attempts of the first flow run), then succeeds on the flow retry.
    stubs.configure("beta", fail_times=2)
    retrying = sync_group.with_options(retries=1, retry_delay_seconds=0)
    state = retrying(group="pair", return_state=True)
    assert state.is_completed()
    assert stubs.starts("alpha") == 1, "alpha re-ran: the completed step was not memoized"
    assert stubs.starts("beta") == 3
    row = syncjobs.get(job_id_for_flow_run(str(state.state_details.flow_run_id)))
    assert row["status"] == "COMPLETED"


def test_daily_goes_on_past_failures_and_skips_disabled_scripts(syncjobs, stubs):
    stubs.configure("broken", fail_times=99)
    summary = sync_group(group="daily")
    assert summary == {
        "total": 4,
        "succeeded": 2,
        "failed": 1,
        "failures": ["b"],
        "skipped": ["c"],
    }
    assert stubs.starts("gamma") == 1 and stubs.starts("retired") == 0


def test_daily_fails_when_a_required_step_fails(syncjobs, stubs):
    stubs.configure("gamma", fail_times=99)
    state = sync_group(group="daily", return_state=True)
    assert state.is_failed()
    row = syncjobs.get(job_id_for_flow_run(str(state.state_details.flow_run_id)))
    assert row["status"] == "FAILED" and "required step(s) failed: d" in row["error"]
    assert row["result"]["failures"] == ["d"] and row["result"]["succeeded"] == 2
    assert stubs.starts("broken") == 1 and stubs.starts("alpha") == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"script": "alpha", "flags": ["--bogus"]}, "--bogus is not allowed for alpha"),
        ({"script": "alpha", "flags": ["--limit=1;rm -rf /"]}, "--limit must be a whole number"),
        ({"script": "today-only", "flags": ["--today=yes"]}, "--today takes no value"),
        ({"script": "nope"}, "unknown script 'nope'"),
    ],
)
def test_bad_input_is_refused_before_anything_starts(syncjobs, stubs, kwargs, message):
    insert_pending(syncjobs, "cbadinput0000000000000001", kwargs["script"])
    state = sync_script(job_id="cbadinput0000000000000001", return_state=True, **kwargs)
    assert state.is_failed()
    assert stubs.events() == []
    row = syncjobs.get("cbadinput0000000000000001")
    assert row["status"] == "FAILED" and message in row["error"]


def test_default_flags_and_explicit_flags(syncjobs, stubs):
    sync_script(script="today-only")
    sync_script(script="today-only", flags=["--dry-run"], limit=5)
    assert [c["flags"] for c in stubs.events("today-only", "start")] == [
        ["--today"],
        ["--dry-run", "--limit=5"],
    ]


def test_disabled_script_fails_with_its_reason(syncjobs, stubs):
    insert_pending(syncjobs, "cdisabled0000000000000001", "retired")
    state = sync_script(script="retired", job_id="cdisabled0000000000000001", return_state=True)
    assert state.is_failed() and stubs.events() == []
    assert "retired on purpose" in syncjobs.get("cdisabled0000000000000001")["error"]


def test_timeout_kills_the_whole_process_tree(syncjobs, stubs):
    stubs.configure("sleepy", sleep=120, grandchild=True, ignore_term=True)
    started = time.monotonic()
    state = sync_script(script="sleepy", return_state=True)
    elapsed = time.monotonic() - started
    assert state.is_failed() and elapsed < 30
    pids = stubs.pids("sleepy") + [c["pid"] for c in stubs.events("sleepy", "start")]
    assert len(pids) == 2
    assert [pid for pid in pids if process_alive(pid)] == []
    row = syncjobs.get(job_id_for_flow_run(str(state.state_details.flow_run_id)))
    assert row["status"] == "FAILED" and "timed out after 3s" in row["error"]


def test_error_is_at_most_2000_characters(syncjobs, stubs):
    stubs.configure("gamma", fail_times=1, stderr="\n".join(["E" * 300] * 40))
    state = sync_script(script="gamma", return_state=True)
    row = syncjobs.get(job_id_for_flow_run(str(state.state_details.flow_run_id)))
    assert row["status"] == "FAILED" and len(row["error"]) <= ERROR_MAX_CHARS
    assert row["error"].startswith("step gamma (gamma) failed")
