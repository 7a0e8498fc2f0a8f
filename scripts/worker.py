"""The `poligraph` worker type: Prefect's process worker, with each run started the fast way.

    prefect worker start --pool poligraph --type poligraph --limit 4 --with-healthcheck

A real member of its work pool (heartbeats, health, the pool's queues and concurrency limits,
shown on the work pool's page), registered with Prefect through the `prefect.collections` entry
point of this package, so `prefect worker start` finds it like any integration's worker. What it
adds to `ProcessWorker`:

* runs of this project's two flows are forks of a fork server preloaded with Prefect and the
  flows (scripts/forkserver.py), not new interpreters: Pending → Running in about 0.4 s instead
  of 4 to 5 s on two shared cores. Any other flow deployed to the pool runs as ProcessWorker
  runs it;
* it looks for runs when Prefect's events say one was created or ended (scripts/run_wakeups.py),
  not only every PREFECT_WORKER_QUERY_SECONDS;
* the reconciler (`python -m scripts.reconcile`: cancels, dead and stuck runs, failure alerts)
  runs next to it as a child process it keeps alive (scripts/reconciler_process.py);
* with POLIGRAPH_WORKER_DEPLOY=true (the local stack), it first creates the catalog's
  deployments in its pool, as `python -m scripts.setup --deploy` does in production.

docs/prefect.md ("Production workers") says why a worker type of our own rather than serve on
each machine. This module is imported by every Prefect process that loads its collections (the
server included): everything beyond the class definitions is imported where it is used.
"""

from __future__ import annotations

import importlib
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
from prefect.workers.process import (
    ProcessJobConfiguration,
    ProcessWorker,
    ProcessWorkerResult,
)
from pydantic import PrivateAttr

if TYPE_CHECKING:
    from uuid import UUID

    from prefect import Flow
    from prefect.client.schemas.objects import Flow as APIFlow
    from prefect.client.schemas.objects import FlowRun, WorkPool
    from prefect.client.schemas.responses import DeploymentResponse

    from scripts.forkserver import RunServices
    from scripts.reconciler_process import ReconcilerProcess
    from scripts.run_wakeups import RunWakeups

WORKER_TYPE = "poligraph"


class PoligraphJobConfiguration(ProcessJobConfiguration):
    """ProcessWorker's configuration, which also keeps the deployment's entrypoint and name."""

    _entrypoint: str | None = PrivateAttr(default=None)
    _deployment_name: str | None = PrivateAttr(default=None)

    def prepare_for_flow_run(
        self,
        flow_run: FlowRun,
        deployment: DeploymentResponse | None = None,
        flow: APIFlow | None = None,
        work_pool: WorkPool | None = None,
        worker_name: str | None = None,
        worker_id: UUID | None = None,
    ) -> None:
        super().prepare_for_flow_run(flow_run, deployment, flow, work_pool, worker_name, worker_id=worker_id)
        if deployment is not None:
            self._entrypoint = deployment.entrypoint
            self._deployment_name = deployment.name


class PoligraphWorker(ProcessWorker):
    type = WORKER_TYPE
    job_configuration = PoligraphJobConfiguration
    _display_name = "Poligraph"
    _description = (
        "Prefect's process worker for poligraph-jobs: runs of its flows start as forks of a "
        "preloaded process, as soon as Prefect's events say they were created."
    )
    _documentation_url = "https://poligraph.fr"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._services = AsyncExitStack()
        self._executions: RunServices | None = None
        self._wakeups: RunWakeups | None = None
        self._reconciler: ReconcilerProcess | None = None
        self._poll_lock = anyio.Lock()
        self._in_flight = 0  # runs started by run() and not ended
        self._idle = anyio.Event()
        self._stopping = False
        self._stop_task: Any = None

    # --- life ------------------------------------------------------------------------------
    async def setup(self) -> None:
        import os

        from deployments.settings import get_settings
        from scripts import forkserver
        from scripts.prefect_settings import small_ca_bundle_over_http
        from scripts.reconciler_process import ReconcilerProcess
        from scripts.run_wakeups import RunWakeups

        settings = get_settings()
        self._take_the_stop_signals()
        small_ca_bundle_over_http(os.environ, settings.home)  # for the runs: read when each starts
        forkserver.install()
        if settings.worker_deploy:
            await _deploy_catalog(self._work_pool_name)  # it says if the server keeps leases in memory
        else:
            await _warn_about_the_server()
        self._reconciler = ReconcilerProcess()
        self._reconciler.start()
        # One set of run services for the worker's life (client, process map, cancellations, the
        # control channel), as serve's runner has, rather than a new set per run. Entered first,
        # so it closes last: after the worker's runs ended, not under them.
        self._executions = await self._exit_stack.enter_async_context(forkserver.run_services())
        await super().setup()
        self._wakeups = RunWakeups(self.get_and_submit_flow_runs, self._scheduled_time)
        group = await self._services.enter_async_context(anyio.create_task_group())
        self._services.callback(group.cancel_scope.cancel)  # runs before the group is awaited
        group.start_soon(self._wakeups.poll_loop)
        group.start_soon(self._wakeups.follow_events, self._pool_id)

    def _take_the_stop_signals(self) -> None:
        """SIGTERM or SIGINT: take no new run, let the running ones end, then exit; a second one:
        exit now (runs and their scripts are then the reconciler's, at the next start).

        Prefect's own handling (`prefect worker start` turns SIGTERM into SIGINT) leaves 3.9.1's
        worker running for ever once it has no run, so that `systemctl stop` would wait its whole
        TimeoutStopSec; the stop is done here instead."""
        import asyncio
        import os
        import signal

        loop = asyncio.get_running_loop()
        main_task = asyncio.current_task()
        assert main_task is not None

        def requested(signum: int) -> None:
            if self._stopping:
                self._logger.warning("second %s: stopping now", signal.Signals(signum).name)
                os.kill(os.getpid(), signal.SIGKILL)
            self._stopping = True
            self._stop_task = loop.create_task(self._stop_when_idle(main_task))

        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, requested, signum)

    async def _stop_when_idle(self, main_task: Any) -> None:
        if self._in_flight:
            self._logger.info("stopping: no new runs; waiting for %d run(s) to end", self._in_flight)
            await self._idle.wait()
        self._logger.info("stopping")
        main_task.cancel()

    async def teardown(self, *exc_info: Any) -> None:
        try:
            await self._services.aclose()  # no more wake-ups
            if self._in_flight:  # stopped otherwise than by a signal: let the runs end all the same
                await self._idle.wait()
            # Prefect 3.9.1's worker channel (heartbeats over a websocket) runs in the runs' task
            # group and does not end when asked to stop: with the runs over, the group goes.
            if self._runs_task_group is not None:
                self._runs_task_group.cancel_scope.cancel()
        finally:
            try:
                await super().teardown(*exc_info)
            finally:
                if self._reconciler is not None:
                    self._reconciler.stop()

    def _pool_id(self) -> UUID | None:
        return self._work_pool.id if self._work_pool is not None else None

    async def _scheduled_time(self, flow_run_id: UUID) -> Any:
        run = await self.client.read_flow_run(flow_run_id)
        return run.next_scheduled_start_time

    async def get_and_submit_flow_runs(self) -> list[FlowRun]:
        # The events and the periodic loop both ask: one query at a time (two at once would both
        # see a run and the second would log a duplicate submission).
        if self._stopping:
            return []
        async with self._poll_lock:
            return await super().get_and_submit_flow_runs()

    # --- one run -----------------------------------------------------------------------------
    async def run(
        self,
        flow_run: FlowRun,
        configuration: ProcessJobConfiguration,
        task_status: anyio.abc.TaskStatus[int] | None = None,
    ) -> ProcessWorkerResult:
        self._in_flight += 1
        if self._in_flight == 1:
            self._idle = anyio.Event()
        try:
            return await self._run(flow_run, configuration, task_status)
        finally:
            self._in_flight -= 1
            if not self._in_flight:
                self._idle.set()

    async def _run(
        self,
        flow_run: FlowRun,
        configuration: ProcessJobConfiguration,
        task_status: anyio.abc.TaskStatus[int] | None,
    ) -> ProcessWorkerResult:
        flow = _our_flow(getattr(configuration, "_entrypoint", None))
        if flow is None or configuration._command_configured or self._executions is None:
            return await super().run(flow_run, configuration, task_status)
        if task_status is None:
            task_status = anyio.TASK_STATUS_IGNORED

        from scripts.forkserver import run_forked

        pid, status_code = await run_forked(
            self._executions,
            flow_run,
            flow,
            env=configuration.env,
            deployment_name=getattr(configuration, "_deployment_name", None),
            task_status=task_status,
        )
        return ProcessWorkerResult(status_code=status_code, identifier=str(pid))


def _our_flow(entrypoint: str | None) -> Flow[..., Any] | None:
    """This project's flow for a deployment's entrypoint (`flows/sync_script.py:sync_script` or
    `flows.sync_script:sync_script` / `flows.sync_script.sync_script`), None for any other."""
    from prefect import Flow

    if not entrypoint:
        return None
    path, _, name = entrypoint.replace(":", ".").rpartition(".")
    module = path.removesuffix(".py").replace("/", ".")
    if module not in ("flows.sync_script", "flows.sync_group"):
        return None
    found = getattr(importlib.import_module(module), name, None)
    return found if isinstance(found, Flow) else None


async def _warn_about_the_server() -> None:
    """A server that keeps slot leases in memory strands the slots of the steps running when it
    restarts: said at each worker's start, where an operator looks (best effort)."""
    from prefect.client.orchestration import get_client

    from scripts.limits import warn_if_leases_in_memory

    try:
        async with get_client() as client:
            await warn_if_leases_in_memory(client)
    except Exception:  # the server may not answer yet: the worker waits for it as it always does
        pass


async def _deploy_catalog(work_pool: str) -> None:
    from deployments.catalog import get_catalog
    from scripts.limits import ensure_script_limits
    from scripts.pool_deployments import apply_deployments

    catalog = get_catalog()
    await ensure_script_limits(catalog)
    await apply_deployments(catalog, PoligraphWorker, work_pool)
