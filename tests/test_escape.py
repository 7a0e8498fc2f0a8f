"""Descendants that leave the script's process group are killed too: a real TypeScript script run
with `npx tsx` that spawns a `detached: true` child (as Puppeteer starts Chromium), and a Python
double-fork daemon. Success with leftovers, cancellation, timeout, and a crash of the process
that ran the step (then the reconciler) leave no survivor.

Runs on a worker (cancel from the admin, a killed worker) are in test_recovery.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client

from flows.recovery import Reconciler
from flows.script_runner import run_process
from support.escapers import ESCAPER, Cancelled
from support.paths import REPO
from support.polling import wait_for
from support.processes import process_alive

pytestmark = pytest.mark.integration


def node_script(project: Path, pidfile: Path, mode: str) -> list[str]:
    return ["npx", "tsx", str(project / "detach.ts"), str(pidfile), mode]


def recorded(pidfile: Path, count: int) -> list[int]:
    """The pids a script wrote, once it wrote `count` of them."""

    def read() -> list[int]:
        pids = [int(p) for p in pidfile.read_text().split()] if pidfile.exists() else []
        return pids if len(pids) >= count else []

    return wait_for(read, timeout=60, what=f"{count} pids in {pidfile}")


def survivors(pids: list[int]) -> list[int]:
    return [pid for pid in pids if process_alive(pid)]


def lines_until_ready(stream: str, line: str) -> None:
    if line == "ready":
        raise Cancelled  # what Prefect raises inside a run being cancelled


def test_node_detached_child_is_killed_after_success(tsx_project, tmp_path):
    outcome = run_process(
        node_script(tsx_project, tmp_path / "pids", "exit"),
        timeout_seconds=120,
        on_line=lambda *_: None,
        cwd=tsx_project,
        kill_grace_seconds=1,
    )
    assert outcome.ok, outcome.tail
    assert survivors(recorded(tmp_path / "pids", 2)) == []


def test_node_detached_child_is_killed_on_cancel(tsx_project, tmp_path):
    with pytest.raises(Cancelled):
        run_process(
            node_script(tsx_project, tmp_path / "pids", "stay"),
            timeout_seconds=120,
            on_line=lines_until_ready,
            cwd=tsx_project,
            kill_grace_seconds=1,
        )
    assert survivors(recorded(tmp_path / "pids", 2)) == []


def test_node_detached_child_is_killed_on_timeout(tsx_project, tmp_path):
    seen: list[str] = []
    outcome = run_process(
        node_script(tsx_project, tmp_path / "pids", "stay"),
        timeout_seconds=10,  # npx + tsx take a few seconds to start on a busy machine
        on_line=lambda _stream, line: seen.append(line),
        cwd=tsx_project,
        kill_grace_seconds=1,
    )
    assert outcome.timed_out and "ready" in seen
    assert survivors(recorded(tmp_path / "pids", 2)) == []


# The process that runs steps (a flow-run process), reduced to what matters here: its run file,
# the script started with the run's tag. The test kills it with SIGKILL, as an OOM would.
FLOW_PROCESS = textwrap.dedent(
    """
    import sys
    from flows.run_files import note_script_group, register
    from flows.process_tree import RUN_TAG
    from flows.script_runner import run_process

    run_id, job_id, cwd, *argv = sys.argv[1:]
    register(run_id, job_id)
    run_process(
        argv, timeout_seconds=600, on_line=lambda *_: None, cwd=cwd, tags={RUN_TAG: run_id},
        on_start=lambda pgid: note_script_group(run_id, pgid),
    )
    """
)


@pytest.mark.parametrize("kind", ["node", "python"])
def test_crash_of_the_flow_process_then_the_reconciler_leaves_no_survivor(
    kind, tsx_project, tmp_path, syncjobs, prefect_api
):
    pidfile = tmp_path / "pids"
    if kind == "node":
        argv, expected = node_script(tsx_project, pidfile, "stay"), 2
    else:
        argv, expected = [sys.executable, "-c", ESCAPER, str(pidfile), "stay"], 2
    run_id = str(uuid.uuid4())
    flow_process = subprocess.Popen(
        [sys.executable, "-c", FLOW_PROCESS, run_id, "ccrashed00000000000000001", str(tsx_project), *argv],
        cwd=REPO,
        env=os.environ,
    )
    pids = recorded(pidfile, expected)
    os.kill(flow_process.pid, signal.SIGKILL)
    flow_process.wait()
    assert survivors(pids) == pids, "the crash itself should leave the escaped processes running"

    with get_client(sync_client=True) as client:
        Reconciler(syncjobs).dead_local_runs_pass(client)
    wait_for(lambda: survivors(pids) == [], timeout=10, what="the leftovers to be killed")
