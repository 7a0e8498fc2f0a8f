"""serve's flow runs forked from a process that has already imported Prefect and the flows.

Prefect's runner starts each served flow run with multiprocessing's "spawn": a new interpreter
that imports Prefect, the flow and its dependencies before the run can turn Running (1.5 to 3 s
on two shared cores, and the flow's first-use imports land inside the run: docs/prefect.md,
"Flow start"). multiprocessing's "forkserver" method starts the same call from a fork of a
server process that imported all of that once, at serve's start. The server is single-threaded
when it forks (serve itself is not, so forking serve would not be safe); the run gets the same
serialized call, environment and settings as with spawn, and serve gets back a process with the
same interface (pid, join, exitcode, kill).

Two private hooks of Prefect 3.9.1, both checked at start (a Prefect that changed them fails
`serve_forked` instead of silently spawning again, and the tests check a served run is a fork):

* The runner runs a deployment's flow object directly (`run_flow_in_subprocess`) only when the
  flow is in its registry (`Runner.add_flow`, which builds its own deployment); `prefect.serve`
  registers deployments without it, and each run becomes `python -m prefect.engine`, which
  imports everything again. `serve_forked` registers our deployments and their flows.
* `run_flow_in_subprocess` asks `multiprocessing.get_context("spawn")` through the
  `multiprocessing` name of `prefect.flow_engine`; `install` points that name at an object whose
  `get_context` gives the forkserver context.

With the flow in the registry the runner, not the run, calls the flow's on_crashed and
on_cancellation hooks when a run's process ends that way (as Prefect does for `add_flow`).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import multiprocessing
import multiprocessing.context
import multiprocessing.forkserver
from typing import TYPE_CHECKING, Any
from uuid import UUID

if TYPE_CHECKING:
    from prefect import Flow
    from prefect.deployments.runner import RunnerDeployment

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
]


class _ForkserverMultiprocessing:
    """Stands for the `multiprocessing` module inside prefect.flow_engine: any context asked for
    is the fork server's."""

    def __init__(self, context: multiprocessing.context.BaseContext) -> None:
        self._context = context

    def get_context(self, method: str | None = None) -> multiprocessing.context.BaseContext:
        return self._context


def install(preload: list[str] | None = None) -> None:
    """From now on, this process's served flow runs start as forks of a preloaded server (started
    here, so the first run does not wait for its imports)."""
    from prefect import flow_engine

    source = inspect.getsource(flow_engine.run_flow_in_subprocess)
    if 'multiprocessing.get_context("spawn")' not in source:
        raise RuntimeError("prefect.flow_engine.run_flow_in_subprocess no longer starts runs as expected")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD if preload is None else preload)
    multiprocessing.forkserver.ensure_running()
    flow_engine.multiprocessing = _ForkserverMultiprocessing(context)  # type: ignore[assignment]


def serve_forked(
    deployments: list[tuple[RunnerDeployment, Flow[..., Any]]], limit: int, poll_seconds: float
) -> None:
    """`prefect.serve(*deployments, limit=limit, pause_on_shutdown=False)`, each run a fork, and
    a poll for new runs every `poll_seconds` (PREFECT_RUNNER_POLL_FREQUENCY takes whole seconds;
    the runner's `query_seconds` does not)."""
    from prefect.exceptions import TerminationSignal
    from prefect.runner import Runner

    install()
    runner = Runner(pause_on_shutdown=False, limit=limit, query_seconds=poll_seconds)
    registry = runner._deployment_registry
    for deployment, flow in deployments:
        deployment_id = runner.add_deployment(deployment)
        assert isinstance(deployment_id, UUID)  # called from sync code: not a coroutine
        registry.register_flow(deployment_id, flow)
    try:
        asyncio.run(runner.start())
    except (KeyboardInterrupt, TerminationSignal) as exc:
        log.info("received %s, shutting down", type(exc).__name__)
