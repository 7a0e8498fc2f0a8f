"""The one-command local stack, on embedded defaults, driven the way an operator drives it.

`python -m scripts.local_stack` with the real catalog and the bundled demo scripts, a fresh
PREFECT_HOME and no DATABASE_URL (so the SyncJob table is the embedded SQLite file). The
README's first command runs the moment the stack says "ready"; then the operator CLI; then
children are killed (-9) and must come back; Ctrl-C stops everything.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import psutil
import pytest

from deployments.catalog import load_catalog
from deployments.settings import DEFAULT_CATALOG, Settings
from deployments.specs import deployment_specs
from deployments.syncjob import SyncJobRepository, engine_for, job_id_for_flow_run
from support.local_stack import LocalStackProcess
from support.paths import REPO, STATE
from support.polling import wait_for
from support.ports import free_port
from support.shim import dev_client
from support.syncjob import insert_pending

pytestmark = pytest.mark.slow

TAG = "POLIGRAPH_TEST_STACK_TAG"  # in every process of the stack's tree, to find leftovers


@pytest.fixture(scope="module")
def stack():
    port, shim_port = free_port(), free_port()
    home = STATE / "stack-home"
    tag = uuid.uuid4().hex
    env = {k: v for k, v in os.environ.items() if not k.startswith(("POLIGRAPH_", "PREFECT_"))}
    env.pop("DATABASE_URL", None)
    env.update(
        POLIGRAPH_HOME=str(home),
        POLIGRAPH_PREFECT_PORT=str(port),
        POLIGRAPH_SHIM_PORT=str(shim_port),
        POLIGRAPH_DEMO_SECONDS="0.5",
        PREFECT_HOME=str(home / "prefect"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_LOGGING_TO_API_BATCH_INTERVAL="0.5",
        POLIGRAPH_TEST_STACK_TAG=tag,
    )
    api = f"http://127.0.0.1:{port}/api"
    operator_env = {**env, "PREFECT_API_URL": api}
    stack = LocalStackProcess(env, STATE / "local-stack.log")
    try:
        stack.wait_ready(1)
        # The README's first command, typed the moment the stack says it is ready.
        first = subprocess.run(
            [str(Path(sys.executable).with_name("prefect")), "deployment", "run", "sync-group/press"],
            env=operator_env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        yield {
            "api": api,
            "env": operator_env,
            "home": home,
            "proc": stack.proc,
            "process": stack,
            "shim": f"http://127.0.0.1:{shim_port}",
            "tag": tag,
            "first_command": first,
        }
    finally:
        if stack.proc.poll() is None:
            stack.proc.send_signal(signal.SIGTERM)
            try:
                stack.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                pass
        stack.close()


def final_state(api: str, run_id: str):
    state = httpx.get(f"{api}/flow_runs/{run_id}").json()["state"]
    return state["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED") and state


def test_the_readme_first_command_works_the_moment_the_stack_says_ready(stack):
    first = stack["first_command"]
    assert first.returncode == 0, first.stdout + first.stderr
    assert "Created flow run" in first.stdout
    run_id = re.search(r"UUID: ([0-9a-f-]{36})", first.stdout).group(1)
    state = wait_for(lambda: final_state(stack["api"], run_id), timeout=90, what="the press run")
    assert state["type"] == "COMPLETED"

    def logged():
        body = {"logs": {"flow_run_id": {"any_": [run_id]}}, "limit": 200}
        messages = [e["message"] for e in httpx.post(f"{stack['api']}/logs/filter", json=body).json()]
        wanted = ("sync-press (demo)", "sync-press-analysis (demo)", "Limit: 100")
        return all(w in messages for w in wanted) and messages

    wait_for(logged, timeout=30, what="both scripts' output in the run log")
    row = syncjob_repository(stack).get(job_id_for_flow_run(run_id))
    assert row["status"] == "COMPLETED" and row["script"] == "press" and row["progress"] == 100
    assert [s["script"] for s in row["result"]["steps"]] == ["sync-press", "sync-press-analysis"]


def test_every_deployment_is_listed_with_the_daily_schedule(stack):
    deployments = httpx.post(f"{stack['api']}/deployments/filter", json={"limit": 200}).json()
    flows = {f["id"]: f["name"] for f in httpx.post(f"{stack['api']}/flows/filter", json={}).json()}
    names = {f"{flows[d['flow_id']]}/{d['name']}" for d in deployments}
    expected = {spec.full_name for spec in deployment_specs(load_catalog(DEFAULT_CATALOG))}
    assert expected <= names
    daily = next(d for d in deployments if d["name"] == "sync-daily")
    (schedule,) = daily["schedules"]
    assert schedule["schedule"]["cron"] == "0 5,11,19 * * *"
    assert schedule["schedule"]["timezone"] == "UTC" and schedule["active"] is True
    assert daily["concurrency_limit"] == 1 or daily["global_concurrency_limit"]["limit"] == 1


def syncjob_repository(stack) -> SyncJobRepository:
    return SyncJobRepository(engine_for(Settings(database_url=None, home=stack["home"])))


def test_unchanged_inngest_client_event_completes_the_admin_job(stack):
    """What the admin does: create a PENDING row, then inngest.send({name, data: {jobId}})."""
    import inngest

    syncjobs = syncjob_repository(stack)
    insert_pending(syncjobs, "cadminpress00000000000001", "press")
    client = inngest.Inngest(app_id="poligraph", is_production=False, event_api_base_url=stack["shim"])
    ids = client.send_sync(inngest.Event(name="sync/press", data={"jobId": "cadminpress00000000000001"}))
    assert len(ids) == 1

    def completed():
        row = syncjobs.get("cadminpress00000000000001")
        assert row["status"] != "FAILED", row["error"]
        return row["status"] == "COMPLETED" and row

    row = wait_for(completed, timeout=90, what="the admin's job to complete")
    assert row["startedAt"] is not None and row["result"]["total"] == 2


# --- the operator CLI, as a new user runs it -----------------------------------------------------
def cli(stack, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**stack["env"], "INNGEST_BASE_URL": stack["shim"], "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "scripts.cli", *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def rows(stack) -> list[dict]:
    return syncjob_repository(stack).recent(500)


def test_cli_trigger_wait_shows_progress_and_exits_0(stack):
    done = cli(stack, "trigger", "sync:press", "--limit=5", "--wait")
    assert done.returncode == 0, done.stderr
    assert "Sent sync/press" in done.stdout and "COMPLETED" in done.stdout
    job_id = done.stdout.split("SyncJob", 1)[1].split()[0]
    row = next(r for r in rows(stack) if r["id"] == job_id)
    assert row["status"] == "COMPLETED" and row["script"] == "press"
    status = cli(stack, "status", job_id)
    assert status.returncode == 0 and "COMPLETED" in status.stdout


def test_cli_refuses_unknown_names_and_bad_flags_without_sending(stack):
    before = len(rows(stack))
    unknown = cli(stack, "trigger", "discover:afairs")
    assert unknown.returncode == 2 and "sync/discover-affairs" in unknown.stderr
    bad = cli(stack, "trigger", "sync-assemblee", "--bogus")
    assert bad.returncode == 2 and "--bogus is not allowed" in bad.stderr
    assert len(rows(stack)) == before


def test_cli_list_shows_events_schedules_and_last_runs(stack):
    listed = cli(stack, "list")
    assert listed.returncode == 0
    for text in (
        "sync/discover-affairs",
        "sync-group/sync-daily",
        "0 5,11,19 * * * UTC",
        "sync/sync-assemblee",
    ):
        assert text in listed.stdout


def test_cli_cancel_stops_a_running_job(stack):
    sent = cli(stack, "trigger", "sync:daily")
    assert sent.returncode == 0, sent.stderr
    job_id = sent.stdout.split("SyncJob", 1)[1].split()[0]
    wait_for(lambda: next(r for r in rows(stack) if r["id"] == job_id)["status"] == "RUNNING", timeout=60)
    cancelled = cli(stack, "cancel", job_id)
    assert cancelled.returncode == 0, cancelled.stderr
    row = next(r for r in rows(stack) if r["id"] == job_id)
    assert row["status"] == "FAILED" and row["error"] == "Annulé manuellement par l'administrateur"
    run_id = row["result"]["flowRunId"]
    wait_for(
        lambda: httpx.get(f"{stack['api']}/flow_runs/{run_id}").json()["state"]["type"] == "CANCELLED",
        timeout=30,
        what="the flow run to be cancelled",
    )
    assert cli(stack, "cancel", job_id).returncode == 1  # no longer active


def test_cli_wait_interrupted_exits_130_and_says_how_to_cancel(stack):
    env = {**stack["env"], "INNGEST_BASE_URL": stack["shim"]}
    proc = subprocess.Popen(
        [sys.executable, "-m", "scripts.cli", "trigger", "sync:daily", "--wait"],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for(
        lambda: any(r["script"] == "sync-daily" and r["status"] == "RUNNING" for r in rows(stack)),
        timeout=60,
        what="the daily job to run",
    )
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert "poligraph-jobs cancel" in err
    job_id = out.split("SyncJob", 1)[1].split()[0]
    assert cli(stack, "cancel", job_id).returncode == 0


# --- children killed, the stack stopped ----------------------------------------------------------
def prefect_answers(stack) -> bool:
    try:
        return httpx.get(f"{stack['api']}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def send_admin_events(stack, scripts: list[str]) -> list[str]:
    """What the admin does for each script: a PENDING row, then `sync/<script>` with its jobId
    through the Inngest SDK (an exception unless the shim acknowledged it); returns the job ids."""
    import inngest

    syncjobs, client = syncjob_repository(stack), dev_client(stack["shim"])
    job_ids = []
    for script in scripts:
        job_id = f"c{uuid.uuid4().hex[:24]}"
        insert_pending(syncjobs, job_id, script)
        assert len(client.send_sync(inngest.Event(name=f"sync/{script}", data={"jobId": job_id}))) == 1
        job_ids.append(job_id)
    return job_ids


def wait_completed(stack, job_ids: list[str], timeout: float = 180) -> None:
    syncjobs = syncjob_repository(stack)

    def completed() -> bool:
        rows = [syncjobs.get(job_id) for job_id in job_ids]
        assert all(r["status"] != "FAILED" for r in rows), [r["error"] for r in rows]
        return all(r["status"] == "COMPLETED" for r in rows)

    wait_for(completed, timeout=timeout, interval=0.5, what=f"jobs {job_ids} to complete")


def test_prefect_server_killed_the_shim_keeps_taking_events_and_they_run_when_it_is_back(stack):
    process = stack["process"]
    readies = process.ready_count()
    server = process.child("prefect")
    server.kill()
    server.wait(timeout=10)
    job_ids = send_admin_events(stack, ["sync-assemblee", "sync-senat"])  # acknowledged ...
    assert not prefect_answers(stack)  # ... while the server is still down
    process.wait_ready(readies + 1)
    assert process.child("prefect").pid != server.pid
    assert any("prefect exited (signal SIGKILL)" in line for line in process.stack_lines())
    wait_completed(stack, job_ids)


def test_shim_and_worker_killed_both_come_back(stack):
    process = stack["process"]
    readies = process.ready_count()
    shim, worker = process.child("shim"), process.child("worker")
    shim.kill()
    worker.kill()
    process.wait_ready(readies + 1)
    assert process.child("shim").pid != shim.pid and process.child("worker").pid != worker.pid
    lines = process.stack_lines()
    for name in ("shim", "worker"):
        assert any(f"{name} exited (signal SIGKILL)" in line for line in lines), lines
        assert any(f"{name} started again" in line for line in lines), lines
    # "ready" means the new shim answers and the new worker was heard in its pool; the next
    # test's run goes through both.


def processes_tagged(tag: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get(TAG) == tag and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except psutil.Error:
            continue
    return found


def daily_runs(stack) -> list[str]:
    """Each sync-daily flow run with its state, to say what a run waits behind."""
    body = {"deployments": {"name": {"any_": ["sync-daily"]}}, "limit": 50}
    runs = httpx.post(f"{stack['api']}/flow_runs/filter", json=body).json()
    return [f"{r['id']} {r['state']['name']} since {r['state']['timestamp']}" for r in runs]


def test_ctrl_c_stops_every_process_of_the_stack_even_with_a_run_going(stack):
    """Last in this module: it stops the stack. An earlier test's cancelled daily run can be caught
    by the Prefect server's death while still Cancelling (holding the deployment's slot); the
    reconciler ends it after POLIGRAPH_STUCK_RUN_SECONDS (30 s on the local stack), so this run
    starts within about 40 s whatever the earlier tests left."""
    process = stack["process"]
    sent = cli(stack, "trigger", "sync:daily")
    assert sent.returncode == 0, sent.stderr
    job_id = sent.stdout.split("SyncJob", 1)[1].split()[0]
    try:
        wait_for(lambda: next(r for r in rows(stack) if r["id"] == job_id)["status"] == "RUNNING", timeout=75)
    except AssertionError:
        raise AssertionError(f"the daily job never ran; daily flow runs: {daily_runs(stack)}") from None
    tagged = processes_tagged(stack["tag"])
    assert len(tagged) >= 5  # the stack, its three children, the run (and its script)

    process.proc.send_signal(signal.SIGINT)
    assert process.proc.wait(timeout=60) == 0
    assert process.stack_lines()[-1].endswith("| stopped")
    wait_for(lambda: not processes_tagged(stack["tag"]), timeout=10, what="every process to be gone")
