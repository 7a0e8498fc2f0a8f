"""The worker's runs start through Prefect's private parts, all in scripts/forkserver.py: a Prefect
upgrade that moved or changed them must fail here, loudly, not start runs slowly (or not at all)
without a word (the forked runs themselves are checked in test_worker.py)."""

from __future__ import annotations

import multiprocessing

import pytest
from prefect import flow_engine

from scripts import forkserver

pytestmark = pytest.mark.unit


def test_install_refuses_a_prefect_that_starts_runs_differently(monkeypatch):
    def run_flow_in_subprocess(*args, **kwargs):
        return multiprocessing.get_context("fork")

    monkeypatch.setattr(flow_engine, "run_flow_in_subprocess", run_flow_in_subprocess)
    with pytest.raises(RuntimeError, match="no longer starts runs as expected"):
        forkserver.install()
    assert flow_engine.multiprocessing is multiprocessing  # left as it was


def test_what_prefect_asks_for_is_the_fork_server():
    context = multiprocessing.get_context("forkserver")
    stand_in = forkserver._ForkserverMultiprocessing(context)
    assert stand_in.get_context("spawn") is context


def test_the_preloaded_modules_exist():
    import importlib.util

    for name in forkserver.PRELOAD:
        assert importlib.util.find_spec(name) is not None, name


def test_the_private_parts_the_worker_starts_runs_with_are_where_and_as_they_were():
    import inspect

    from prefect.runner._control_channel import ControlChannel
    from prefect.runner._flow_run_executor import FlowRunExecutorContext
    from prefect.runner._process_manager import ProcessHandle

    create = inspect.signature(FlowRunExecutorContext.create_executor).parameters
    assert {"flow_run", "starter", "resolve_flow", "propose_submitting"} <= set(create)
    assert {"register", "unregister"} <= set(dir(ControlChannel))

    class Started:  # what run_flow_in_subprocess returns, as far as the handle is concerned
        pid = 4242

    assert ProcessHandle(Started()).pid == 4242  # type: ignore[arg-type]
    run = inspect.signature(flow_engine.run_flow_in_subprocess).parameters
    assert {"flow", "flow_run", "env"} <= set(run)
    assert isinstance(forkserver.run_services(), FlowRunExecutorContext)
