"""The `poligraph` worker (`prefect worker start --pool poligraph --type poligraph`), as on a
production machine: a member of its pool, runs forked from its fork server and started on
Prefect's events, its reconciler a process of its own.

Covers what only shows with real parallel runs: no overlap of one script across two flows,
one run at a time per deployment (ENQUEUE), cancellation, and a retry from the API ("Retry" in
the UI) that skips completed steps; and what the deployment page and its run form show.
"""

from __future__ import annotations

import json
import subprocess
import sys

import psutil
import pytest
from prefect.client.orchestration import get_client
from prefect.exceptions import PrefectHTTPStatusError
from prefect.states import Cancelling, Scheduled

from deployments.catalog import get_catalog
from deployments.specs import deployment_specs
from deployments.syncjob import job_id_for_flow_run
from support.paths import REPO
from support.polling import run_async, wait_for
from support.prefect_server import WORKER_NAME, create_run, start_worker_ready, wait_final
from support.processes import process_alive, stop_process_group
from support.syncjob import insert_pending

pytestmark = pytest.mark.integration

# The worker's own poll is set far apart: a run that starts at once was started by the events.
SLOW_POLL = {"PREFECT_WORKER_QUERY_SECONDS": "60"}


@pytest.fixture(scope="module")
def worker(prefect_api, pg_url):
    proc = start_worker_ready(SLOW_POLL, "worker-test-catalog.log")
    try:
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


def stub_process(worker: subprocess.Popen[bytes], script: str) -> psutil.Process | None:
    for process in psutil.Process(worker.pid).children(recursive=True):
        try:
            if "stub_script.py" in " ".join(process.cmdline()) and script in process.cmdline():
                return process
        except psutil.NoSuchProcess:
            continue
    return None


def test_each_run_is_a_fork_of_the_preloaded_fork_server(worker, syncjobs, stubs):
    stubs.configure("alpha", sleep=3)
    run = create_run("sync-script/alpha")
    script = wait_for(lambda: stub_process(worker, "alpha"), what="the run's script")
    flow_run_process = script.parent()
    server = flow_run_process.parent()
    assert "multiprocessing.forkserver" in " ".join(server.cmdline())
    assert "flows.sync_script" in " ".join(server.cmdline())  # what it preloaded
    assert server.parent().pid == worker.pid
    assert wait_final(run).is_completed()


def test_the_worker_is_a_member_of_its_pool_and_starts_runs_on_events(worker, syncjobs, stubs):
    async def pool_and_workers():
        async with get_client() as client:
            return await client.read_work_pool("poligraph"), await client.read_workers_for_work_pool(
                "poligraph"
            )

    pool, workers = run_async(pool_and_workers())
    assert pool.type == "poligraph"  # the UI shows the pool and the worker with its type
    (worker,) = [w for w in workers if w.name == WORKER_NAME]
    assert worker.status.value == "ONLINE"
    # Its own poll comes once a minute here: a run that starts within seconds was started by
    # Prefect's event of its creation.
    stubs.configure("alpha", sleep=0)
    run = create_run("sync-script/alpha")
    started = wait_for(lambda: stubs.events("alpha", "start"), timeout=10, what="the run's script")
    assert started and wait_final(run).is_completed()


def test_the_reconciler_is_a_process_of_its_own_kept_alive_by_the_worker(worker):
    def reconciler() -> psutil.Process | None:
        for child in psutil.Process(worker.pid).children():
            try:
                if "scripts.reconcile" in " ".join(child.cmdline()):
                    return child
            except psutil.Error:  # gone, or a zombie not reaped yet
                continue
        return None

    first = wait_for(reconciler, timeout=30, what="the reconciler process")
    first.kill()
    again = wait_for(
        lambda: (p := reconciler()) and p.pid != first.pid and p, timeout=30, what="a new reconciler"
    )
    assert again.is_running() and worker.poll() is None


def test_one_script_never_runs_twice_at_once_across_flows(worker, syncjobs, stubs):
    assert_ran_one_after_the_other(stubs, "shared", ["sync-script/shared", "sync-group/with-shared"])


def test_second_trigger_of_a_deployment_waits_instead_of_being_dropped(worker, syncjobs, stubs):
    assert_ran_one_after_the_other(stubs, "gamma", ["sync-script/gamma", "sync-script/gamma"])


def test_cancelling_a_run_kills_its_scripts_and_fails_the_row(worker, syncjobs, stubs):
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


def test_retry_from_the_api_skips_completed_steps(worker, syncjobs, stubs):
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


def test_deployments_show_their_description_and_run_form(worker, syncjobs, stubs):
    specs = {spec.full_name: spec for spec in deployment_specs(get_catalog())}

    async def read(name: str):
        async with get_client() as client:
            return await client.read_deployment_by_name(name)

    today = run_async(read("sync-script/today-only"))
    assert today.description == specs["sync-script/today-only"].description
    assert today.enforce_parameter_schema is True
    form = today.parameter_openapi_schema["properties"]
    assert form["script"]["enum"] == ["today-only"] and form["script"]["readOnly"] is True
    assert form["flags"]["description"].startswith("Replaces the default flags of today-only (--today).")
    stops = run_async(read("sync-group/stops"))
    assert stops.description.startswith("stops at broken\n\nSteps, in order;")
    assert stops.parameter_openapi_schema["properties"]["limit"]["description"].startswith(
        "--limit=N of step one (alpha); unset: 3."
    )

    # The README's commands pass the enforced schema...
    cli = subprocess.run(
        [sys.executable, "-m", "prefect", "deployment", "run", "sync-script/today-only"]
        + ["--params", json.dumps({"flags": ["--dry-run"]}), "-p", "limit=5"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert cli.returncode == 0, cli.stdout + cli.stderr
    wait_for(lambda: stubs.events("today-only", "end"), timeout=60, what="the CLI's run")
    assert stubs.events("today-only", "start")[0]["flags"] == ["--dry-run", "--limit=5"]
    # ...a bad flag too, so that the flow refuses it with the catalog's reason...
    insert_pending(syncjobs, "cbadflagserved00000000001", "today-only")
    run = create_run("sync-script/today-only", job_id="cbadflagserved00000000001", flags=["--bogus"])
    assert wait_final(run).is_failed()
    row = wait_for(  # the failure hook runs after the state is set
        lambda: (r := syncjobs.get("cbadflagserved00000000001")) and r["status"] == "FAILED" and r,
        timeout=30,
        what="the row to be FAILED",
    )
    assert "--bogus is not allowed for today-only" in row["error"]
    # ...but not another script than the deployment's own.
    with pytest.raises(PrefectHTTPStatusError, match="409"):
        create_run("sync-script/today-only", script="alpha")


def test_a_stopped_worker_takes_no_new_run_lets_its_runs_end_then_exits(worker, syncjobs, stubs):
    """Last in this module: it stops the worker. SIGTERM to the worker alone (systemd's
    KillMode=mixed): the run it holds completes, one created meanwhile waits for another worker,
    and the worker exits once its run is over, its fork server and reconciler with it."""
    import os
    import signal

    stubs.configure("alpha", sleep=4)
    run = create_run("sync-script/alpha")
    wait_for(lambda: stubs.events("alpha", "start"), timeout=30, what="the run's script")
    family = [p for p in psutil.Process(worker.pid).children(recursive=True) if process_alive(p.pid)]
    names = {p.pid: p.name() for p in family}
    os.kill(worker.pid, signal.SIGTERM)
    later = create_run("sync-script/beta")
    assert wait_final(run, timeout=60).is_completed()
    assert worker.wait(timeout=30) == 0
    # the fork server and the reconciler go with it, at once (not after a long final collection)
    wait_for(lambda: not [p for p in family if process_alive(p.pid)], timeout=5, what=f"the end of {names}")

    async def state_of_later():
        async with get_client() as client:
            return (await client.read_flow_run(later)).state

    assert run_async(state_of_later()).is_scheduled()  # not taken by a stopping worker
