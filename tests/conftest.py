"""Shared fixtures: a real Prefect server, a real PostgreSQL, stub scripts, a served runner.

The environment is set at import time, before any test module imports Prefect, so that every
Prefect client in this process and in its subprocesses talks to the test server.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
STATE = Path(tempfile.mkdtemp(prefix="poligraph-jobs-tests-"))
STUB_ROOT = STATE / "stubs"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


PREFECT_PORT = _free_port()
os.environ.update(
    {
        "PREFECT_HOME": str(STATE / "prefect"),
        "PREFECT_API_URL": f"http://127.0.0.1:{PREFECT_PORT}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_RUNNER_POLL_FREQUENCY": "1",
        "PREFECT_SERVER_DEPLOYMENTS_CONCURRENCY_SLOT_WAIT_SECONDS": "5",
        "PREFECT_LOGGING_TO_API_BATCH_INTERVAL": "0.5",
        "POLIGRAPH_HOME": str(STATE / "home"),
        "POLIGRAPH_CATALOG": str(TESTS / "catalog.yaml"),
        "POLIGRAPH_SCRIPT_COMMAND": f"{{python}} {TESTS / 'stubs' / 'stub_script.py'} {{script}}",
        "POLIGRAPH_RETRY_DELAYS": "0",
        "POLIGRAPH_KILL_GRACE_SECONDS": "2",
        "POLIGRAPH_RECONCILE_INTERVAL_SECONDS": "1",
        "POLIGRAPH_ALERT_RETRY_DELAYS": "0,0",
        "STUB_DIR": str(STUB_ROOT),
    }
)
for name in ("DATABASE_URL", "POLIGRAPH_APP_DIR", "POLIGRAPH_DEMO_FAIL"):
    os.environ.pop(name, None)
STUB_ROOT.mkdir(parents=True)

from pg_cluster import apply_sql, temporary_postgres  # noqa: E402


def wait_for(predicate: Callable[[], Any], timeout: float = 30, interval: float = 0.2, what: str = ""):
    """Poll `predicate` until it returns something truthy; return that value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)


def run_async(coro):
    return asyncio.run(coro)


# --- PostgreSQL -------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    with temporary_postgres() as url:
        apply_sql(url, TESTS / "sql" / "syncjob.sql")
        os.environ["DATABASE_URL"] = url
        from flows.settings import reload_settings

        reload_settings()
        yield url
        os.environ.pop("DATABASE_URL", None)
        reload_settings()


@pytest.fixture
def store(pg_url: str):
    """The SyncJob store on the test PostgreSQL, emptied before each test."""
    import sqlalchemy as sa

    from flows.syncjob import get_store

    job_store = get_store()
    with job_store.engine.begin() as conn:
        conn.execute(sa.text('DELETE FROM "SyncJob"'))
    return job_store


def insert_pending(store, job_id: str, script: str) -> None:
    """What the admin's POST /api/admin/syncs does before sending the event."""
    import sqlalchemy as sa

    with store.engine.begin() as conn:
        conn.execute(
            sa.text("INSERT INTO \"SyncJob\" (id, script, status) VALUES (:id, :script, 'PENDING')"),
            {"id": job_id, "script": script},
        )


# --- stub scripts -----------------------------------------------------------------------------
class Stubs:
    def __init__(self, root: Path) -> None:
        self.root = root

    def reset(self) -> None:
        for path in self.root.iterdir():
            path.unlink()

    def configure(self, script: str, **spec: Any) -> None:
        (self.root / f"{script}.json").write_text(json.dumps(spec))

    def events(self, script: str | None = None, event: str | None = None) -> list[dict]:
        calls = self.root / "calls.jsonl"
        if not calls.exists():
            return []
        rows = [json.loads(line) for line in calls.read_text().splitlines() if line.strip()]
        return [
            r
            for r in rows
            if (script is None or r["script"] == script) and (event is None or r["event"] == event)
        ]

    def starts(self, script: str) -> int:
        return len(self.events(script, "start"))

    def intervals(self, script: str) -> list[tuple[float, float]]:
        starts = {r["pid"]: r["time"] for r in self.events(script, "start")}
        ends = {r["pid"]: r["time"] for r in self.events(script, "end")}
        return sorted((starts[pid], ends[pid]) for pid in starts if pid in ends)

    def pids(self, script: str) -> list[int]:
        path = self.root / f"{script}.pids"
        return [int(p) for p in path.read_text().split()] if path.exists() else []


@pytest.fixture
def stubs() -> Stubs:
    helper = Stubs(STUB_ROOT)
    helper.reset()
    return helper


def process_alive(pid: int) -> bool:
    """True for a live process; zombies (exited, not yet reaped) count as dead."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat[stat.rfind(")") + 2 :].split()[0] not in ("Z", "X")


# --- Prefect ----------------------------------------------------------------------------------
def start_prefect_server(
    port: int, home: Path, log_name: str, extra_env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """`prefect server start` on 127.0.0.1:port with its own home; returns once healthy."""
    env = {**os.environ, "PREFECT_HOME": str(home), **(extra_env or {})}
    log = (STATE / log_name).open("ab")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "prefect",
            "server",
            "start",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--no-ui",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    import httpx

    def healthy() -> bool:
        assert server.poll() is None, (STATE / log_name).read_text()[-3000:]
        try:
            return httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(healthy, timeout=90, interval=0.3, what="prefect server health")
    return server


def stop_process_group(proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[str]:
    server = start_prefect_server(PREFECT_PORT, Path(os.environ["PREFECT_HOME"]), "prefect-server.log")
    try:
        from deployments.catalog import get_catalog
        from deployments.concurrency import ensure_script_limits

        run_async(ensure_script_limits(get_catalog()))
        yield os.environ["PREFECT_API_URL"]
    finally:
        stop_process_group(server)


def start_serve(extra_env: dict[str, str], log_name: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, **extra_env}
    log = (STATE / log_name).open("wb")
    return subprocess.Popen(
        [sys.executable, "-m", "deployments.serve"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=REPO,
        start_new_session=True,
    )


def stop_serve(proc: subprocess.Popen[bytes]) -> None:
    stop_process_group(proc)


def deployment_ready(full_name: str) -> Callable[[], bool]:
    from prefect.client.orchestration import get_client

    async def check() -> bool:
        async with get_client() as client:
            try:
                await client.read_deployment_by_name(full_name)
            except Exception:
                return False
            return True

    return lambda: run_async(check())


def flow_run_state(flow_run_id) -> Any:
    from prefect.client.orchestration import get_client

    async def read():
        async with get_client() as client:
            return (await client.read_flow_run(flow_run_id)).state

    return run_async(read())


def create_run(full_name: str, state=None, idempotency_key: str | None = None, **parameters):
    """A flow run of deployment `flow/deployment`, as `prefect deployment run` makes one."""
    from prefect.client.orchestration import get_client

    async def create():
        async with get_client() as client:
            deployment = await client.read_deployment_by_name(full_name)
            run = await client.create_flow_run_from_deployment(
                deployment.id, parameters=parameters, state=state, idempotency_key=idempotency_key
            )
            return run.id

    return run_async(create())


def wait_final(flow_run_id, timeout: float = 90):
    """The final state of a flow run, once it has one."""
    return wait_for(
        lambda: (state := flow_run_state(flow_run_id)) and state.is_final() and state,
        timeout=timeout,
        what=f"flow run {flow_run_id} to finish",
    )


def run_logs(flow_run_id) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    async def read():
        async with get_client() as client:
            logs = await client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
            return [entry.message for entry in logs]

    return run_async(read())


@pytest.fixture(autouse=True)
def _clean_stub_dir_between_tests():
    yield
    shutil.rmtree(STUB_ROOT, ignore_errors=True)
    STUB_ROOT.mkdir(parents=True, exist_ok=True)
