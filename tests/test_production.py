"""Production, on one machine, with the README's own steps (scripts/production.py: the same
strings, this test's hosts, ports, passwords and directories in the placeholders): the project
installed into a fresh virtualenv, the Prefect database created, the server on PostgreSQL with
leases on disk, `setup --deploy`, two workers with homes of their own (two machines), two shims
in key mode sharing one outbox. Every process runs from that virtualenv, outside the checkout,
with only the README's environment (and the stub scripts' command).

Fifteen events spread over scripts (some sharing a script through sync/press) must each run
exactly once, never two runs of one script at once, on both workers, every SyncJob COMPLETED;
then a worker hangs (SIGSTOP) with a run going and the admin cancels it: the reconciler, a
process of its own, stops the run itself.
"""

from __future__ import annotations

import os
import signal
import subprocess
import uuid
from pathlib import Path

import httpx
import psutil
import pytest

from deployments.syncjob import flow_run_of
from scripts.production import one_host_values, step
from support.paths import REPO, STATE, STUB_ROOT, TESTS
from support.polling import run_async, wait_for
from support.ports import free_port
from support.processes import process_alive, stop_process_group
from support.shim import key_client, shim_healthy
from support.syncjob import insert_pending

pytestmark = pytest.mark.slow

SCRIPTS = ["sync-assemblee", "sync-senat", "sync-press", "sync-press-analysis"]
# Three rounds of five events: each of sync-press's six runs waits for the one before (slot 1).
ROUNDS = 3
EVENT_KEY = "prod-test-key-0123456789abcdef"
PROD = STATE / "production"
OUTSIDE = PROD / "cwd"  # no process runs in the checkout: what they import is the installed package


def stub_env(venv: Path) -> dict[str, str]:
    """The one thing a real machine does not have: stub scripts instead of `npx tsx`."""
    return {
        "POLIGRAPH_SCRIPT_COMMAND": f"{venv}/bin/python {TESTS / 'stubs' / 'stub_script.py'} {{script}}",
        "STUB_DIR": str(STUB_ROOT),
    }


def run_step(
    name: str, values: dict[str, str], extra: dict[str, str] | None = None, timeout: float = 300
) -> str:
    """Each command of a one-shot step, as typed; its output (the step must succeed)."""
    out = []
    for done in step(name).run(values, OUTSIDE, extra, timeout):
        assert done.returncode == 0, f"{done.args}: {done.stdout[-2000:]}{done.stderr[-2000:]}"
        out.append(done.stdout)
    return "".join(out)


def start_step(
    name: str, values: dict[str, str], log: str, extra: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """A long-running step's process, in its own session (as its unit would run it)."""
    return step(name).start(values, OUTSIDE, PROD / log, extra)


@pytest.fixture(scope="module")
def installed() -> Path:
    """The README's install step, into a fresh virtualenv."""
    OUTSIDE.mkdir(parents=True, exist_ok=True)
    venv = PROD / "venv"
    run_step("install", {"venv": str(venv), "checkout": str(REPO)}, timeout=600)
    return venv


@pytest.fixture(scope="module")
def production(installed, pg_url):
    """The Prefect database and server, then setup: the values every later step uses."""
    values = one_host_values(PROD, pg_url, f"prefect_{uuid.uuid4().hex[:8]}", free_port(), EVENT_KEY)
    assert values["venv"] == str(installed)
    (PROD / "app").mkdir(parents=True, exist_ok=True)
    assert "ready" in run_step("prefect-database", values)
    assert "ready" in run_step("prefect-database", values)  # safe to repeat
    server = start_step("prefect-server", values, "prefect-server.log")
    api = f"http://127.0.0.1:{values['prefect_port']}/api"
    try:
        wait_for(lambda: _answers(f"{api}/health"), timeout=120, interval=0.3, what="the Prefect server")
        yield values | {"api": api}
    finally:
        stop_process_group(server, timeout=40)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def start_worker(values: dict[str, str], name: str) -> subprocess.Popen[bytes]:
    home = PROD / name
    worker_values = values | {"worker_name": name, "home": str(home), "health_port": str(free_port())}
    return start_step("worker", worker_values, f"{name}.log", stub_env(Path(values["venv"])))


def forkservers(worker: subprocess.Popen[bytes]) -> set[int]:
    """The fork server(s) of a worker: the parent of each of its runs' processes."""
    found = set()
    for child in psutil.Process(worker.pid).children():
        try:
            if "multiprocessing.forkserver" in " ".join(child.cmdline()):
                found.add(child.pid)
        except psutil.Error:
            continue
    return found


# its own waits allow 400 s for the jobs alone; on a busy 2-core machine the whole takes ~5 min
@pytest.mark.timeout(900)
def test_the_readme_steps_run_every_event_once_on_two_workers(production, syncjobs, stubs):
    values = production
    api = values["api"]
    for script in SCRIPTS:
        stubs.configure(script, sleep=0.5)

    out = run_step("setup", values)
    assert "work pool poligraph: created" in out and "run forms applied" in out
    assert f"step results go to directory {values['result_storage']}" in out
    # prefect deploy sent the flow's schema; setup then gave the deployment its own run form
    deployed = httpx.get(f"{api}/deployments/name/sync-script/sync-scrutins-an", timeout=10).json()
    assert deployed["description"].startswith("Scrutins AN — Scrutins Assemblée nationale\n\n")
    assert deployed["pull_steps"] == [] and deployed["entrypoint"] == "flows.sync_script:sync_script"
    flags = deployed["parameter_openapi_schema"]["properties"]["flags"]
    assert flags["description"].startswith("Replaces the default flags of sync-scrutins-an (--today).")
    assert "work pool poligraph: exists" in run_step("setup", values)  # safe to repeat

    workers = {name: start_worker(values, name) for name in ("worker-1", "worker-2")}
    shim_ports = [free_port(), free_port()]
    shims = [start_step("shim", values | {"shim_port": str(port)}, f"shim-{port}.log") for port in shim_ports]
    try:
        for port in shim_ports:
            wait_for(lambda p=port: shim_healthy(p), timeout=60, what=f"the shim on {port}")
        wait_for(lambda: _online(api) >= {"worker-1", "worker-2"}, timeout=120, what="both workers online")
        clients = [key_client(f"http://127.0.0.1:{port}", EVENT_KEY) for port in shim_ports]
        events = []
        for _ in range(ROUNDS):
            for script in SCRIPTS:
                events.append(("sync/" + script, f"c{uuid.uuid4().hex[:24]}", script))
            events.append(("sync/press", f"c{uuid.uuid4().hex[:24]}", "press"))
        import inngest

        for i, (name, job_id, row_script) in enumerate(events):
            insert_pending(syncjobs, job_id, row_script)
            clients[i % 2].send_sync(inngest.Event(name=name, data={"jobId": job_id}))

        def all_done() -> bool:
            states = [syncjobs.get(job_id)["status"] for _, job_id, _ in events]
            assert "FAILED" not in states, [
                syncjobs.get(j)["error"] for _, j, _ in events if syncjobs.get(j)["error"]
            ]
            return all(s == "COMPLETED" for s in states)

        wait_for(all_done, timeout=400, interval=1, what="every job to complete")
        servers = {pid: name for name, w in workers.items() for pid in forkservers(w)}
        # exactly once: a run per script alone and per round, plus a press group running sync-press + analysis
        expected = {
            "sync-assemblee": ROUNDS,
            "sync-senat": ROUNDS,
            "sync-press": 2 * ROUNDS,
            "sync-press-analysis": 2 * ROUNDS,
        }
        assert {s: stubs.starts(s) for s in SCRIPTS} == expected
        assert len({flow_run_of(syncjobs.get(job_id)) for _, job_id, _ in events}) == len(events)
        for script in SCRIPTS:  # never two runs of one script at once, across both workers
            ordered = stubs.intervals(script)
            assert all(b[0] >= a[1] for a, b in zip(ordered, ordered[1:], strict=False)), script
        used = {servers.get(e["gppid"]) for e in stubs.events(event="start")}
        assert used == {"worker-1", "worker-2"}, "both workers should have run flows, as forks"

        a_hung_worker_s_run_is_stopped_by_its_reconciler(
            values, workers, f"http://127.0.0.1:{shim_ports[0]}", syncjobs, stubs
        )
    finally:
        for proc in [*workers.values(), *shims]:
            os.killpg(proc.pid, signal.SIGCONT)
            stop_process_group(proc, timeout=40)


def _online(api: str) -> set[str]:
    workers = httpx.post(f"{api}/work_pools/poligraph/workers/filter", json={}, timeout=10).json()
    return {w["name"] for w in workers if w["status"] == "ONLINE"}


def a_hung_worker_s_run_is_stopped_by_its_reconciler(values, workers, shim_url, syncjobs, stubs) -> None:
    """The worker that runs a long script stops answering (SIGSTOP): nobody follows the admin's
    cancel but the reconciler of that machine (a process of its own), which stops the run 15 s
    later."""
    import inngest

    stubs.configure("sync-senat", sleep=300, grandchild=True)
    before = stubs.starts("sync-senat")
    job_id = f"c{uuid.uuid4().hex[:24]}"
    insert_pending(syncjobs, job_id, "sync-senat")
    key_client(shim_url, EVENT_KEY).send_sync(inngest.Event(name="sync/sync-senat", data={"jobId": job_id}))
    wait_for(lambda: stubs.starts("sync-senat") > before, timeout=60, what="the long script to start")
    start = stubs.events("sync-senat", "start")[-1]
    pids = [start["pid"], *stubs.pids("sync-senat")]
    servers = {pid: name for name, w in workers.items() for pid in forkservers(w)}
    name = servers[start["gppid"]]
    hung = workers[name]
    hung.send_signal(signal.SIGSTOP)  # the worker alone: its reconciler and its run go on
    try:
        assert syncjobs.cancel(job_id)  # the admin's cancel button
        run_id = flow_run_of(syncjobs.get(job_id))
        wait_for(
            lambda: _state(values["api"], run_id) == "CANCELLED", timeout=90, interval=0.5, what="Cancelled"
        )
        wait_for(lambda: not [p for p in pids if process_alive(p)], timeout=30, what="its scripts killed")
    finally:
        hung.send_signal(signal.SIGCONT)
    log = PROD / f"{name}.log"  # the reconciler wrote it while its worker was stopped
    assert "still Cancelling: stopping its process" in log.read_text()
    row = syncjobs.get(job_id)
    assert row["status"] == "FAILED" and row["error"].startswith("Annulé")  # nothing overwrote the cancel


def _state(api: str, run_id: str) -> str:
    return httpx.get(f"{api}/flow_runs/{run_id}", timeout=10).json()["state"]["type"]


def test_rollout_prunes_renamed_deployments_and_removed_schedules(prefect_api):
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import DeploymentScheduleCreate
    from prefect.client.schemas.schedules import CronSchedule

    from deployments.catalog import get_catalog
    from flows.sync_script import sync_script
    from scripts.pool_deployments import apply_deployments
    from scripts.setup import prune
    from scripts.worker import PoligraphWorker

    catalog = get_catalog()
    run_async(apply_deployments(catalog, PoligraphWorker))
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


def test_the_worker_and_setup_warn_when_the_server_keeps_leases_in_memory(prefect_api, caplog):
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


def test_a_retry_on_another_worker_skips_the_steps_done_on_the_first(production, syncjobs, stubs):
    """Durable steps across machines: results in the shared storage setup configures."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect.states import Scheduled

    from deployments.syncjob import job_id_for_flow_run
    from support.prefect_server import create_run, wait_final

    values = production
    shared = Path(values["result_storage"])  # a mount every worker has at the same path
    assert f"step results go to directory {shared}" in run_step("setup", values)
    stubs.configure("sync-press-analysis", fail_times=3)  # every attempt of the first flow run fails

    # two machines: each worker has its own home, hence its own local result storage
    with temporary_settings({PREFECT_API_URL: values["api"]}):
        worker_a = start_worker(values, "worker-a")
        try:
            run = create_run("sync-group/press")
            assert wait_final(run, timeout=180).is_failed()
            servers_a = forkservers(worker_a)
        finally:
            stop_process_group(worker_a, timeout=40)
        worker_b = start_worker(values, "worker-b")
        try:

            async def retry() -> None:  # what "Retry" in the UI does: the same flow run again
                async with get_client() as client:
                    await client.set_flow_run_state(run, Scheduled(name="AwaitingRetry"), force=True)

            run_async(retry())
            assert wait_final(run, timeout=180).is_completed()
            servers_b = forkservers(worker_b)
        finally:
            stop_process_group(worker_b, timeout=40)

    assert stubs.starts("sync-press") == 1, "the retry ran the completed step again"
    (press,) = stubs.events("sync-press", "start")
    last_analysis = stubs.events("sync-press-analysis", "start")[-1]
    assert press["gppid"] in servers_a and last_analysis["gppid"] in servers_b
    assert any(shared.iterdir()), "no result in the shared storage"
    row = syncjobs.get(job_id_for_flow_run(str(run)))
    assert row["status"] == "COMPLETED" and row["error"] is None
