"""serve's fork server hooks into two private places of Prefect: a Prefect that changed them must
stop serve at start, not spawn runs slowly without a word (the served runs themselves are
checked in test_served.py)."""

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
