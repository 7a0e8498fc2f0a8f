"""Production mode, on one machine: Prefect server on PostgreSQL, the generated prefect.yaml
deployed to a process work pool, two workers, two shim replicas sharing one outbox.

Twenty-five events spread over scripts (some sharing a script through sync/press) must each run
exactly once, never two runs of one script at once, on both workers, every SyncJob COMPLETED.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import httpx
import psycopg
import pytest

from deployments.syncjob import flow_run_of
from scripts.limits import DISK_LEASES
from support.paths import REPO, STATE, STUB_ROOT
from support.polling import run_async, wait_for
from support.ports import free_port
from support.prefect_server import start_prefect_server
from support.processes import stop_process_group
from support.shim import start_shim_process
from support.syncjob import insert_pending

pytestmark = pytest.mark.slow


SCRIPTS = ["sync-assemblee", "sync-senat", "sync-press", "sync-press-analysis"]


def production_env(api: str, pg_url: str, extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "POLIGRAPH_CATALOG"}  # the real catalog
    env.update(PREFECT_API_URL=api, DATABASE_URL=pg_url, **extra)
    return env


def spawn(args: list[str], env: dict[str, str], log_name: str) -> subprocess.Popen[bytes]:
    log = (STATE / log_name).open("ab")
    return subprocess.Popen(
        args, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )


def start_worker(base: dict[str, str], name: str, **extra: str) -> subprocess.Popen[bytes]:
    """`prefect worker start` on the poligraph pool, polling every second, its own local state."""
    return spawn(
        [sys.executable, "-m", "prefect", "worker", "start", "--pool", "poligraph", "--limit", "4"],
        {
            **base,
            "PREFECT_WORKER_QUERY_SECONDS": "1",
            "PREFECT_WORKER_PREFETCH_SECONDS": "2",
            "POLIGRAPH_HOME": str(STATE / name),
            **extra,
        },
        f"{name}.log",
    )


def run_setup(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "scripts.setup", *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture
def prefect_on_postgres(pg_url):
    database = f"prefect_{uuid.uuid4().hex[:8]}"
    admin_url = pg_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{database}"')
    server_db = admin_url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://") + f"/{database}"
    port = free_port()
    server = start_prefect_server(
        port,
        STATE / f"{database}-home",
        f"{database}.log",
        # as the production section says: slot leases survive a server restart
        {
            "PREFECT_SERVER_DATABASE_CONNECTION_URL": server_db,
            "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": DISK_LEASES,
        },
    )
    yield f"http://127.0.0.1:{port}/api"
    stop_process_group(server)


# Three rounds of five events: each of sync-press's six runs waits for the one before (slot 1).
ROUNDS = 3


# its own waits allow 400 s for the jobs alone; on a busy 2-core machine the whole takes ~5 min
@pytest.mark.timeout(600)
def test_two_workers_and_two_shims_run_every_event_once(prefect_on_postgres, pg_url, syncjobs, stubs):
    api = prefect_on_postgres
    schema = f"shim_{uuid.uuid4().hex[:8]}"
    base = production_env(api, pg_url, {"STUB_DIR": str(STUB_ROOT), "POLIGRAPH_SHIM_SCHEMA": schema})
    for script in SCRIPTS:
        stubs.configure(script, sleep=0.5)

    setup = run_setup(base, "--deploy")
    assert setup.returncode == 0, setup.stdout[-2000:] + setup.stderr[-2000:]
    assert (REPO / "prefect.yaml").read_text() == _generated_prefect_yaml()  # deploy left it as is
    # prefect deploy sent the flow's schema; setup then gave the deployment its own run form
    deployed = httpx.get(f"{api}/deployments/name/sync-script/sync-scrutins-an", timeout=10).json()
    assert deployed["description"].startswith("Scrutins AN — Scrutins Assemblée nationale\n\n")
    flags = deployed["parameter_openapi_schema"]["properties"]["flags"]
    assert flags["description"].startswith("Replaces the default flags of sync-scrutins-an (--today).")
    again = run_setup(base)
    assert again.returncode == 0 and "work pool poligraph: exists" in again.stdout  # safe to repeat

    workers = [start_worker(base, f"worker-{i}") for i in (1, 2)]
    shim_ports = [free_port(), free_port()]
    shims = []
    try:
        shims += [start_shim_process(base, port, f"shim-{port}.log") for port in shim_ports]
        events = []
        for _ in range(ROUNDS):
            for script in SCRIPTS:
                events.append(("sync/" + script, f"c{uuid.uuid4().hex[:24]}", script))
            events.append(("sync/press", f"c{uuid.uuid4().hex[:24]}", "press"))
        for i, (name, job_id, row_script) in enumerate(events):
            insert_pending(syncjobs, job_id, row_script)
            body = [{"name": name, "data": {"jobId": job_id}}]
            sent = httpx.post(
                f"http://127.0.0.1:{shim_ports[i % 2]}/e/NO_EVENT_KEY_SET", content=json.dumps(body)
            )
            assert sent.json()["status"] == 200

        def all_done() -> bool:
            states = [syncjobs.get(job_id)["status"] for _, job_id, _ in events]
            assert "FAILED" not in states, [
                syncjobs.get(j)["error"] for _, j, _ in events if syncjobs.get(j)["error"]
            ]
            return all(s == "COMPLETED" for s in states)

        wait_for(all_done, timeout=400, interval=1, what="every job to complete")
    finally:
        for proc in workers + shims:
            stop_process_group(proc, timeout=40)

    # exactly once: a run per script alone and per round, plus a press group running sync-press + analysis
    expected = {
        "sync-assemblee": ROUNDS,
        "sync-senat": ROUNDS,
        "sync-press": 2 * ROUNDS,
        "sync-press-analysis": 2 * ROUNDS,
    }
    assert {s: stubs.starts(s) for s in SCRIPTS} == expected
    flow_runs = {flow_run_of(syncjobs.get(job_id)) for _, job_id, _ in events}
    assert len(flow_runs) == len(events)
    for script in SCRIPTS:  # never two runs of one script at once, across both workers
        ordered = stubs.intervals(script)
        assert all(b[0] >= a[1] for a, b in zip(ordered, ordered[1:], strict=False)), script
    worker_pids = {w.pid for w in workers}
    used = {e["gppid"] for e in stubs.events(event="start")} & worker_pids
    assert used == worker_pids, "both workers should have run flows"


def _generated_prefect_yaml() -> str:
    from deployments.catalog import load_catalog
    from deployments.prefect_yaml import render
    from deployments.settings import DEFAULT_CATALOG

    return render(load_catalog(DEFAULT_CATALOG))


def test_rollout_prunes_renamed_deployments_and_removed_schedules(prefect_api):
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import DeploymentScheduleCreate
    from prefect.client.schemas.schedules import CronSchedule

    from deployments.catalog import get_catalog
    from deployments.specs import deployment_specs
    from flows.sync_script import sync_script
    from scripts.serve import runner_deployment
    from scripts.setup import prune

    catalog = get_catalog()
    for spec in deployment_specs(catalog):
        runner_deployment(spec).apply()
    sync_script.to_deployment(name="renamed-away", tags=["poligraph"], parameters={"script": "alpha"}).apply()

    async def scenario():
        async with get_client() as client:
            daily = await client.read_deployment_by_name("sync-group/daily")
            extra = DeploymentScheduleCreate(
                schedule=CronSchedule(cron="0 3 * * *", timezone="UTC"),
                active=True,
                slug="dropped-from-catalog",
            )
            await client.create_deployment_schedules(daily.id, [extra])
            removed = await prune(client, catalog)
            daily = await client.read_deployment_by_name("sync-group/daily")
            names = [f"{d.name}" for d in await client.read_deployments(limit=200)]
            return removed, [s.slug for s in daily.schedules], names

    removed, slugs, names = asyncio.run(scenario())
    assert "deployment sync-script/renamed-away" in removed
    assert "schedule dropped-from-catalog of sync-group/daily" in removed
    assert slugs == ["test-daily"] and "renamed-away" not in names


def test_serve_and_setup_warn_when_the_server_keeps_leases_in_memory(prefect_api, caplog):
    from deployments.catalog import get_catalog
    from scripts.limits import MEMORY_LEASES, ensure_script_limits, server_lease_storage
    from support.polling import run_async

    async def storage() -> str | None:
        from prefect.client.orchestration import get_client

        async with get_client() as client:
            return await server_lease_storage(client)

    assert run_async(storage()) == MEMORY_LEASES  # the test server keeps Prefect's default
    with caplog.at_level("WARNING", logger="poligraph.limits"):
        run_async(ensure_script_limits(get_catalog()))
    assert (
        "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE=prefect.server.concurrency.lease_storage.filesystem"
        in caplog.text
    )


def test_a_retry_on_another_worker_skips_the_steps_done_on_the_first(
    prefect_on_postgres, pg_url, syncjobs, stubs
):
    """Durable steps across machines: results in the shared storage setup configures."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect.states import Scheduled

    from deployments.syncjob import job_id_for_flow_run
    from support.prefect_server import create_run, wait_final

    shared = STATE / "shared-results"  # a mount every worker has at the same path
    base = production_env(
        prefect_on_postgres,
        pg_url,
        {"STUB_DIR": str(STUB_ROOT), "POLIGRAPH_RESULT_STORAGE": f"file://{shared}"},
    )
    setup = run_setup(base)
    assert setup.returncode == 0, setup.stderr[-2000:]
    assert f"step results go to directory {shared}" in setup.stdout
    deploy = subprocess.run(
        [
            sys.executable,
            "-m",
            "prefect",
            "--no-prompt",
            "deploy",
            "--name",
            "press",
            "--prefect-file",
            "prefect.yaml",
        ],
        env=base,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert deploy.returncode == 0, deploy.stdout[-2000:] + deploy.stderr[-2000:]
    stubs.configure("sync-press-analysis", fail_times=3)  # every attempt of the first flow run fails

    # two machines: each worker has its own Prefect home, hence its own local result storage
    machine = {name: {"PREFECT_HOME": str(STATE / f"{name}-prefect")} for name in ("a", "b")}
    with temporary_settings({PREFECT_API_URL: prefect_on_postgres}):
        worker_a = start_worker(base, "worker-a", **machine["a"])
        try:
            run = create_run("sync-group/press")
            assert wait_final(run, timeout=180).is_failed()
        finally:
            stop_process_group(worker_a, timeout=40)
        worker_b = start_worker(base, "worker-b", **machine["b"])
        try:

            async def retry() -> None:  # what "Retry" in the UI does: the same flow run again
                async with get_client() as client:
                    await client.set_flow_run_state(run, Scheduled(name="AwaitingRetry"), force=True)

            run_async(retry())
            assert wait_final(run, timeout=180).is_completed()
        finally:
            stop_process_group(worker_b, timeout=40)

    assert stubs.starts("sync-press") == 1, "the retry ran the completed step again"
    (press,) = stubs.events("sync-press", "start")
    last_analysis = stubs.events("sync-press-analysis", "start")[-1]
    assert press["gppid"] == worker_a.pid and last_analysis["gppid"] == worker_b.pid
    assert any(shared.iterdir()), "no result in the shared storage"
    row = syncjobs.get(job_id_for_flow_run(str(run)))
    assert row["status"] == "COMPLETED" and row["error"] is None
