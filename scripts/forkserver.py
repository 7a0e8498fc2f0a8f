"""Flow runs started as forks of a process that has already imported Prefect and the flows.

Prefect starts a flow run it holds the flow object of (`run_flow_in_subprocess`) with
multiprocessing's "spawn": a new interpreter that imports Prefect, the flow and its dependencies
before the run can turn Running (1.5 to 3 s on two shared cores, and the flow's first-use
imports land inside the run: docs/prefect.md, "Flow start"). A process worker does worse: it
starts `python -m prefect.engine`, which also reads the deployment and loads the flow from its
entrypoint (4 to 5 s). multiprocessing's "forkserver" method starts the same call from a fork of
a server process that imported all of that once, at the worker's start. The server is
single-threaded when it forks (the worker is not, so forking the worker would not be safe); the
run gets the same serialized call, environment and settings as with spawn, and the worker gets
back a process with the same interface (pid, join, exitcode, kill).

This is the one module that reaches into Prefect's private parts (all checked at start, and by
tests/test_forkserver.py, so that a Prefect upgrade that moved them fails loudly instead of
starting runs slowly or not at all):

* `run_flow_in_subprocess` asks `multiprocessing.get_context("spawn")` through the
  `multiprocessing` name of `prefect.flow_engine`; `install` points that name at an object whose
  `get_context` gives the forkserver context;
* `ForkedRunStarter` follows the `ProcessStarter` protocol of `prefect.runner._flow_run_executor`
  (what Prefect's own `DirectSubprocessStarter` does, plus the job's environment), and
  `run_forked` runs it through `FlowRunExecutorContext` (`run_services`), as Prefect's
  ProcessWorker does: the run's submission, process tracking, cancellation over the control
  channel, crash handling and hooks stay Prefect's.

The worker (scripts/worker.py) uses only `install`, `run_services` and `run_forked`.
"""

from __future__ import annotations

import inspect
import logging
import multiprocessing
import multiprocessing.context
import multiprocessing.forkserver
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc

if TYPE_CHECKING:
    from prefect import Flow
    from prefect.client.schemas.objects import FlowRun
    from prefect.runner._control_channel import ControlChannel
    from prefect.runner._flow_run_executor import FlowRunExecutorContext as RunServices
    from prefect.runner._process_manager import ProcessHandle

log = logging.getLogger(__name__)

# What a flow run imports, loaded once in the fork server (each fork shares its pages).
PRELOAD = [
    "prefect.flow_engine",
    "prefect.task_engine",
    "prefect.results",
    "prefect.concurrency._leases",
    "psycopg",
    "sqlalchemy.dialects.postgresql.psycopg",
    "sqlalchemy.dialects.sqlite.pysqlite",
    "flows.sync_script",
    "flows.sync_group",
    "flows.warmup",  # and each fork opens its first connections while Prefect starts the run
    # imported by Prefect on first use inside a run (measured: 0.3 to 0.6 s of a run's CPU)
    "fastapi",
    "graphviz",
    "opentelemetry.trace",
    "scripts.forkserver_freeze",  # last: what is loaded by now is frozen (gc.freeze)
]


class _ForkserverMultiprocessing:
    """Stands for the `multiprocessing` module inside prefect.flow_engine: any context asked for
    is the fork server's."""

    def __init__(self, context: multiprocessing.context.BaseContext) -> None:
        self._context = context

    def get_context(self, method: str | None = None) -> multiprocessing.context.BaseContext:
        return self._context


def install(preload: list[str] | None = None) -> None:
    """From now on, this process's flow runs started from flow objects are forks of a preloaded
    server (started here, so the first run does not wait for its imports)."""
    from prefect import flow_engine

    source = inspect.getsource(flow_engine.run_flow_in_subprocess)
    if 'multiprocessing.get_context("spawn")' not in source:
        raise RuntimeError("prefect.flow_engine.run_flow_in_subprocess no longer starts runs as expected")
    if isinstance(flow_engine.multiprocessing, _ForkserverMultiprocessing):
        return
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD if preload is None else preload)
    multiprocessing.forkserver.ensure_running()
    flow_engine.multiprocessing = _ForkserverMultiprocessing(context)  # type: ignore[assignment]


class ForkedRunStarter:
    """Starts one flow run from its flow object (a fork, once `install` ran) with the job's
    environment, and waits for it: `task_status.started(handle)` first, then the join."""

    def __init__(
        self,
        *,
        flow: Flow[..., Any],
        env: dict[str, str | None],
        deployment_name: str | None,
        control_channel: ControlChannel,
    ) -> None:
        self._flow = flow
        self._env = env
        self._deployment_name = deployment_name
        self._control_channel = control_channel

    async def start(
        self,
        flow_run: FlowRun,
        task_status: anyio.abc.TaskStatus[ProcessHandle] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        from prefect import flow_engine
        from prefect.runner._process_manager import ProcessHandle

        env: dict[str, str | None] = {**self._env, "PREFECT__DEPLOYMENT_NAME": self._deployment_name}
        registered = False
        try:
            # the control channel lets a cancel reach the run's engine before its SIGTERM
            port, token = self._control_channel.register(flow_run.id)
            env |= {"PREFECT__CONTROL_PORT": str(port), "PREFECT__CONTROL_TOKEN": token}
            registered = True
        except RuntimeError:  # the channel could not bind: cancels fall back to the signal alone
            pass
        handed_off = False
        try:
            process = flow_engine.run_flow_in_subprocess(self._flow, flow_run=flow_run, env=env)
            task_status.started(ProcessHandle(process))
            handed_off = True
            await anyio.to_thread.run_sync(process.join)
        except BaseException:
            if registered and not handed_off:
                self._control_channel.unregister(flow_run.id)
            raise


def run_services() -> RunServices:
    """Prefect's services for runs started outside its Runner (client, process map,
    cancellations and their observer, control channel), to enter once for the worker's life."""
    from prefect.runner._flow_run_executor import FlowRunExecutorContext

    return FlowRunExecutorContext()


async def run_forked(
    services: RunServices,
    flow_run: FlowRun,
    flow: Flow[..., Any],
    *,
    env: dict[str, str | None],
    deployment_name: str | None,
    task_status: anyio.abc.TaskStatus[int],
) -> tuple[int, int]:
    """Run `flow_run` as a fork; `task_status` gets its pid as soon as it started; returns (pid,
    status code) once it ended (as ProcessWorker.run does for its command)."""
    starter = ForkedRunStarter(
        flow=flow, env=env, deployment_name=deployment_name, control_channel=services.control_channel
    )

    async def resolve(_: FlowRun) -> Flow[..., Any]:  # for its on_crashed / on_cancellation hooks
        return flow

    executor = services.create_executor(flow_run, starter, resolve_flow=resolve, propose_submitting=False)
    outcome: list[Any] = []

    async def execute(*, task_status: anyio.abc.TaskStatus[Any] = anyio.TASK_STATUS_IGNORED) -> None:
        outcome.append(await executor.submit(task_status=task_status))

    async with anyio.create_task_group() as group:
        handle = await group.start(execute)
        if handle.pid is None:
            raise RuntimeError("Flow run process has no PID")
        task_status.started(handle.pid)
    execution = outcome[0] if outcome else None
    if execution is None or execution.status_code is None:
        raise RuntimeError("Failed to start flow run process.")
    return execution.handle.pid, execution.status_code
