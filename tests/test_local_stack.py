"""The one-command local stack, on embedded defaults, driven the way an operator drives it.

`python -m scripts.local_stack` with the real catalog and the bundled demo scripts, a fresh
PREFECT_HOME and no DATABASE_URL (so the SyncJob table is the embedded SQLite file); then
`prefect deployment run sync-group/press` from the CLI.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import httpx
import pytest

from deployments.catalog import load_catalog
from deployments.settings import DEFAULT_CATALOG, Settings
from deployments.specs import deployment_specs
from deployments.syncjob import SyncJobRepository, engine_for, job_id_for_flow_run
from support.paths import REPO, STATE
from support.polling import wait_for
from support.ports import free_port
from support.syncjob import insert_pending

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack():
    port, shim_port = free_port(), free_port()
    home = STATE / "stack-home"
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
    )
    log = (STATE / "local-stack.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "scripts.local_stack"],
        env=env,
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    api = f"http://127.0.0.1:{port}/api"
    specs = deployment_specs(load_catalog(DEFAULT_CATALOG))

    def all_deployments_listed() -> bool:
        assert proc.poll() is None, (STATE / "local-stack.log").read_text()[-3000:]
        try:
            listed = httpx.post(f"{api}/deployments/filter", json={"limit": 200}, timeout=5)
        except httpx.HTTPError:
            return False
        return listed.status_code == 200 and len(listed.json()) >= len(specs)

    try:
        wait_for(all_deployments_listed, timeout=120, interval=0.5, what="the stack's deployments")
        yield {
            "api": api,
            "env": {**env, "PREFECT_API_URL": api},
            "home": home,
            "proc": proc,
            "shim": f"http://127.0.0.1:{shim_port}",
        }
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            assert proc.wait(timeout=40) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
            log.close()


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


def test_prefect_deployment_run_of_press_completes_with_logs_and_a_row(stack):
    cli = subprocess.run(
        [sys.executable, "-m", "prefect", "deployment", "run", "sync-group/press"],
        env=stack["env"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "Created flow run" in cli.stdout
    runs = httpx.post(f"{stack['api']}/flow_runs/filter", json={"limit": 10}).json()
    run = next(r for r in runs if r["parameters"].get("group") == "press")

    def final_state():
        state = httpx.get(f"{stack['api']}/flow_runs/{run['id']}").json()["state"]
        return state["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED") and state

    assert wait_for(final_state, timeout=90, what="the press run")["type"] == "COMPLETED"

    def logged():
        body = {"logs": {"flow_run_id": {"any_": [run["id"]]}}, "limit": 200}
        messages = [e["message"] for e in httpx.post(f"{stack['api']}/logs/filter", json=body).json()]
        wanted = ("sync-press (demo)", "sync-press-analysis (demo)", "Limit: 100")
        return all(w in messages for w in wanted) and messages

    wait_for(logged, timeout=30, what="both scripts' output in the run log")
    syncjobs = SyncJobRepository(engine_for(Settings(database_url=None, home=stack["home"])))
    row = syncjobs.get(job_id_for_flow_run(run["id"]))
    assert row["status"] == "COMPLETED" and row["script"] == "press" and row["progress"] == 100
    assert [s["script"] for s in row["result"]["steps"]] == ["sync-press", "sync-press-analysis"]


def test_unchanged_inngest_client_event_completes_the_admin_job(stack):
    """What the admin does: create a PENDING row, then inngest.send({name, data: {jobId}})."""
    import inngest

    syncjobs = SyncJobRepository(engine_for(Settings(database_url=None, home=stack["home"])))
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
    return SyncJobRepository(engine_for(Settings(database_url=None, home=stack["home"]))).recent(500)


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
