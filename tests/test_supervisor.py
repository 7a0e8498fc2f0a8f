"""The supervisor of `make up`'s processes, with real (tiny) child processes."""

from __future__ import annotations

import io
import sys
import time

import pytest

from scripts.supervisor import Backoff, ChildSpec, Supervisor
from support.polling import wait_for
from support.processes import process_alive

pytestmark = pytest.mark.unit

PY = sys.executable
SLEEPER = [PY, "-c", "import time; print('up', flush=True); time.sleep(60)"]
STUBBORN = [
    PY,
    "-c",
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(60)",
]


def run_until(supervisor: Supervisor, condition, timeout: float = 20):
    def ticked():
        supervisor.tick()
        return condition()

    return wait_for(ticked, timeout=timeout, interval=0.05)


def test_backoff_doubles_on_quick_deaths_up_to_the_cap():
    backoff = Backoff(first_seconds=1, max_seconds=30)
    assert [backoff.delay(n) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]


def test_a_child_that_dies_is_restarted_with_its_exit_code_logged():
    out = io.StringIO()
    spec = ChildSpec("worker", [PY, "-c", "import sys; print('hello', flush=True); sys.exit(3)"], {})
    supervisor = Supervisor([spec], backoff=Backoff(first_seconds=0.1, max_seconds=0.2), output=out)
    try:
        run_until(supervisor, lambda: out.getvalue().count("worker started") >= 3)
    finally:
        supervisor.stop()
    text = out.getvalue()
    assert "stack  | worker started (pid" in text and "worker started again" in text
    assert "worker exited (code 3) after" in text and "restarting in 0.1 s" in text
    assert "restarting in 0.2 s" in text  # the second quick death waits longer
    assert "worker | hello" in text  # the child's own output, prefixed


def test_a_child_may_write_straight_to_the_supervisor_s_own_output(capfd):
    """The worker's reconciler: its lines must not depend on the worker reading a pipe."""
    out = io.StringIO()
    spec = ChildSpec("direct", [PY, "-c", "print('straight', flush=True)"], {}, inherit_output=True)
    supervisor = Supervisor([spec], backoff=Backoff(first_seconds=30), output=out)
    try:
        run_until(supervisor, lambda: "direct exited (code 0)" in out.getvalue())
    finally:
        supervisor.stop()
    assert "straight" in capfd.readouterr().out  # the process's own stdout, not a pipe
    assert "straight" not in out.getvalue()


def test_a_child_waits_for_its_precondition():
    out, gate = io.StringIO(), {"open": False}
    spec = ChildSpec("late", SLEEPER, {}, ready_to_start=lambda: gate["open"], waiting_for="the gate")
    supervisor = Supervisor([spec], output=out)
    try:
        supervisor.tick()
        supervisor.tick()
        assert not supervisor.running("late")
        assert out.getvalue().count("late waits for the gate") == 1
        gate["open"] = True
        run_until(supervisor, lambda: supervisor.running("late"))
    finally:
        supervisor.stop()


def test_stop_terms_then_kills_the_stubborn_and_leaves_nothing():
    out = io.StringIO()
    specs = [ChildSpec("polite", SLEEPER, {}), ChildSpec("stubborn", STUBBORN, {})]
    supervisor = Supervisor(specs, stop_grace_seconds=1, output=out)
    run_until(supervisor, lambda: out.getvalue().count("| up") == 2)
    pids = [supervisor.pid("polite"), supervisor.pid("stubborn")]
    started = time.monotonic()
    supervisor.stop()
    assert time.monotonic() - started < 10
    assert not any(process_alive(pid) for pid in pids if pid)
    text = out.getvalue()
    assert "polite exited (signal SIGTERM)" in text
    assert "still alive 1 s after SIGTERM: SIGKILL" in text and "stubborn exited (signal SIGKILL)" in text


def test_restart_on_request_stops_the_child_and_the_next_tick_starts_it_again():
    out = io.StringIO()
    supervisor = Supervisor([ChildSpec("stuck", SLEEPER, {})], backoff=Backoff(first_seconds=0.1), output=out)
    try:
        run_until(supervisor, lambda: supervisor.running("stuck"))
        first = supervisor.pid("stuck")
        supervisor.restart("stuck", "looks stuck")
        run_until(supervisor, lambda: supervisor.pid("stuck") not in (None, first))
    finally:
        supervisor.stop()
    assert "looks stuck: restarting it" in out.getvalue()
