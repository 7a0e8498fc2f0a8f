"""A real Prefect server, served deployments, and the flow-run reads tests assert on."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx

from support.paths import REPO, STATE
from support.polling import run_async, wait_for
from support.ports import free_port
from support.processes import stop_process_group


def server_command(port: int) -> list[str]:
    """`prefect server start` on 127.0.0.1:port, without the UI."""
    return [
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
    ]


def start_prefect_server(
    port: int, home: Path, log_name: str, extra_env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """`prefect server start` on 127.0.0.1:port with its own home; returns once healthy."""
    env = {**os.environ, "PREFECT_HOME": str(home), **(extra_env or {})}
    log = (STATE / log_name).open("ab")
    server = subprocess.Popen(
        server_command(port),
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )

    def healthy() -> bool:
        assert server.poll() is None, (STATE / log_name).read_text()[-3000:]
        try:
            return httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(healthy, timeout=90, interval=0.3, what="prefect server health")
    return server


class PrefectServer:
    """A Prefect server a test can stop and start again: same port, same home, same database."""

    def __init__(self, home: Path, log_name: str, extra_env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.home = home
        self.log_name = log_name
        self.extra_env = extra_env or {}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def start(self) -> None:
        self.proc = start_prefect_server(self.port, self.home, self.log_name, self.extra_env)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process_group(self.proc)
            self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()


WORKER_NAME = "test-worker"


def worker_command(name: str = WORKER_NAME, limit: int = 4) -> list[str]:
    """What a production machine runs: a worker of the poligraph pool."""
    return [
        sys.executable,
        "-m",
        "prefect",
        "worker",
        "start",
        "--pool",
        "poligraph",
        "--type",
        "poligraph",
    ] + [
        "--name",
        name,
        "--limit",
        str(limit),
    ]


def start_worker(
    extra_env: dict[str, str], log_name: str, name: str = WORKER_NAME
) -> subprocess.Popen[bytes]:
    """The worker (creating the catalog's deployments as it starts, as the local stack's does;
    its reconciler beside it) in its own session."""
    env = {**os.environ, "POLIGRAPH_WORKER_DEPLOY": "true", **extra_env}
    log = (STATE / log_name).open("wb")
    return subprocess.Popen(
        worker_command(name),
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=REPO,
        start_new_session=True,
    )


def start_worker_ready(
    extra_env: dict[str, str], log_name: str, timeout: float = 90, name: str = WORKER_NAME
) -> subprocess.Popen[bytes]:
    """`start_worker`, returning once every deployment of the catalog exists and the worker has
    sent its pool a heartbeat (its fork server and run services are up)."""
    from deployments.catalog import get_catalog
    from deployments.specs import deployment_specs

    started = datetime.now(UTC)
    proc = start_worker(extra_env, log_name, name)
    try:
        for spec in deployment_specs(get_catalog()):
            wait_for(deployment_ready(spec.full_name), timeout=timeout, what=spec.full_name)
        wait_for(
            lambda: worker_heard_since(name, started), timeout=timeout, what=f"worker {name}'s heartbeat"
        )
    except BaseException:
        stop_process_group(proc)
        raise
    return proc


def worker_heard_since(name: str, since: datetime) -> bool:
    from prefect.client.orchestration import get_client

    async def check() -> bool:
        async with get_client() as client:
            try:
                workers = await client.read_workers_for_work_pool("poligraph")
            except Exception:
                return False
        return any(
            w.name == name and w.last_heartbeat_time and w.last_heartbeat_time >= since for w in workers
        )

    return run_async(check())


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


def flow_run_state(flow_run_id: UUID | str) -> Any:
    from prefect.client.orchestration import get_client

    async def read() -> Any:
        async with get_client() as client:
            return (await client.read_flow_run(UUID(str(flow_run_id)))).state

    return run_async(read())


def create_run(
    full_name: str, state: Any = None, idempotency_key: str | None = None, **parameters: Any
) -> UUID:
    """A flow run of deployment `flow/deployment`, as `prefect deployment run` makes one."""
    from prefect.client.orchestration import get_client

    async def create() -> UUID:
        async with get_client() as client:
            deployment = await client.read_deployment_by_name(full_name)
            run = await client.create_flow_run_from_deployment(
                deployment.id, parameters=parameters, state=state, idempotency_key=idempotency_key
            )
            return run.id

    return run_async(create())


def wait_final(flow_run_id: UUID | str, timeout: float = 90) -> Any:
    """The final state of a flow run, once it has one."""
    return wait_for(
        lambda: (state := flow_run_state(flow_run_id)) and state.is_final() and state,
        timeout=timeout,
        what=f"flow run {flow_run_id} to finish",
    )


def run_logs(flow_run_id: UUID | str) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    async def read() -> list[str]:
        async with get_client() as client:
            logs = await client.read_logs(
                LogFilter(flow_run_id=LogFilterFlowRunId(any_=[UUID(str(flow_run_id))]))
            )
            return [entry.message for entry in logs]

    return run_async(read())


def artifacts_of(flow_run_id: UUID | str) -> dict[str, Any]:
    """The artifacts of a flow run, by key (what its Artifacts tab shows)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    async def read() -> dict[str, Any]:
        async with get_client() as client:
            found = await client.read_artifacts(
                artifact_filter=ArtifactFilter(
                    flow_run_id=ArtifactFilterFlowRunId(any_=[UUID(str(flow_run_id))])
                )
            )
            return {artifact.key: artifact for artifact in found}

    return run_async(read())


def apply_catalog_deployments() -> None:
    """The configured catalog's deployments, created in the pool but with no worker: their runs
    stay Scheduled."""
    from deployments.catalog import get_catalog
    from scripts.pool_deployments import apply_deployments
    from scripts.worker import PoligraphWorker

    run_async(apply_deployments(get_catalog(), PoligraphWorker))


def delete_scheduled_runs() -> None:
    """Delete every run still Scheduled or Pending, so that no later test's runner picks it up."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType

    async def delete() -> None:
        async with get_client() as client:
            waiting = FlowRunFilter(
                state=FlowRunFilterState(
                    type=FlowRunFilterStateType(any_=[StateType.SCHEDULED, StateType.PENDING])
                )
            )
            while runs := await client.read_flow_runs(flow_run_filter=waiting, limit=200):  # the API's max
                for run in runs:
                    await client.delete_flow_run(run.id)

    run_async(delete())
