"""`run_process` with real subprocesses: streaming, exit codes, and killing the whole tree."""

from __future__ import annotations

import json
import os
import signal
import sys
import textwrap
import time
from pathlib import Path

import pytest

from flows.script_runner import run_process
from support.escapers import ESCAPER, Cancelled

pytestmark = pytest.mark.unit

PY = sys.executable


def script(code: str) -> list[str]:
    return [PY, "-c", textwrap.dedent(code)]


def pid_dead(pid: int) -> bool:
    """Gone from /proc, or a zombie (dead, only waiting to be reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat[stat.rfind(")") + 2 :].split()[0] in ("Z", "X")


def read_pids(path: Path) -> list[int]:
    assert path.exists(), "the child never recorded its pids (timeout too short?)"
    return [int(p) for p in path.read_text().split()]


def collect() -> tuple[list[tuple[str, str]], object]:
    seen: list[tuple[str, str]] = []
    return seen, lambda stream, line: seen.append((stream, line))


# A child that starts a grandchild, which starts a great-grandchild, records the three pids in
# argv[1] (atomically), prints "ready" and sleeps. With IGNORE_TERM every one ignores SIGTERM.
TREE = """
import os, signal, subprocess, sys, time

IGNORE_TERM = {ignore}
if IGNORE_TERM:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
pidfile = sys.argv[1]
sleeper = "import signal, time\\nif {ignore}: signal.signal(signal.SIGTERM, signal.SIG_IGN)\\ntime.sleep(600)"
middle = (
    "import os, signal, subprocess, sys, time\\n"
    "if {ignore}: signal.signal(signal.SIGTERM, signal.SIG_IGN)\\n"
    "p = subprocess.Popen([sys.executable, '-c', sys.argv[2]])\\n"
    "open(sys.argv[1] + '.tmp', 'w').write(str(p.pid))\\n"
    "os.replace(sys.argv[1] + '.tmp', sys.argv[1])\\n"
    "time.sleep(600)\\n"
)

grandchild = subprocess.Popen([sys.executable, "-c", middle, pidfile + ".ggc", sleeper])
deadline = time.monotonic() + 20
while not os.path.exists(pidfile + ".ggc") and time.monotonic() < deadline:
    time.sleep(0.02)
great = open(pidfile + ".ggc").read()
with open(pidfile + ".tmp", "w") as handle:
    handle.write(f"{{os.getpid()}} {{grandchild.pid}} {{great}}")
os.replace(pidfile + ".tmp", pidfile)
print("ready", flush=True)
time.sleep(600)
"""


def test_streams_lines_while_running(tmp_path: Path) -> None:
    first_seen = tmp_path / "first-seen"
    second_seen = tmp_path / "second-seen"
    argv = script(
        """
        import os, sys, time

        def wait_for(path):
            deadline = time.monotonic() + 5
            while not os.path.exists(path):
                if time.monotonic() > deadline:
                    print(f"never saw {path}", file=sys.stderr, flush=True)
                    sys.exit(3)
                time.sleep(0.02)

        print("first", flush=True)
        wait_for(sys.argv[1])
        print("second", file=sys.stderr, flush=True)
        wait_for(sys.argv[2])
        print("third", flush=True)
        """
    ) + [str(first_seen), str(second_seen)]
    seen: list[tuple[str, str]] = []

    def on_line(stream: str, line: str) -> None:
        seen.append((stream, line))
        # the child blocks until these exist: they can only appear if the line came while it ran
        if (stream, line) == ("stdout", "first"):
            first_seen.touch()
        if (stream, line) == ("stderr", "second"):
            second_seen.touch()

    outcome = run_process(argv, timeout_seconds=9, on_line=on_line, kill_grace_seconds=1)
    assert seen == [("stdout", "first"), ("stderr", "second"), ("stdout", "third")]
    assert outcome.exit_code == 0
    assert outcome.timed_out is False
    assert outcome.ok is True
    assert outcome.tail == ["first", "second", "third"]
    assert outcome.stderr_tail == ["second"]
    assert outcome.argv == argv


def test_nonzero_exit_and_bounded_tail() -> None:
    argv = script(
        """
        import sys
        for i in range(3):
            print(f"out {i}", flush=True)
        for i in range(20):
            print(f"err {i}", file=sys.stderr, flush=True)
        sys.exit(3)
        """
    )
    seen, on_line = collect()
    outcome = run_process(argv, timeout_seconds=9, on_line=on_line, kill_grace_seconds=1, tail_lines=5)
    assert outcome.exit_code == 3
    assert outcome.ok is False
    assert outcome.timed_out is False
    assert outcome.stderr_tail == [f"err {i}" for i in range(15, 20)]
    assert len(outcome.tail) == 5
    # stdout and stderr are read by two threads: their relative order is not guaranteed
    assert "err 19" in outcome.tail
    assert len(seen) == 23  # on_line gets everything, the tails are only bounded copies


def test_killed_by_signal_is_not_ok() -> None:
    argv = script("import os, signal; os.kill(os.getpid(), signal.SIGKILL)")
    _, on_line = collect()
    outcome = run_process(argv, timeout_seconds=9, on_line=on_line, kill_grace_seconds=1)
    assert outcome.exit_code == -9
    assert outcome.ok is False
    assert outcome.timed_out is False


def test_timeout_kills_whole_tree(tmp_path: Path) -> None:
    pidfile = tmp_path / "pids"
    seen, on_line = collect()
    outcome = run_process(
        script(TREE.format(ignore=False)) + [str(pidfile)],
        timeout_seconds=3,
        on_line=on_line,
        kill_grace_seconds=1,
    )
    assert ("stdout", "ready") in seen
    assert outcome.timed_out is True
    assert outcome.exit_code is None
    assert outcome.ok is False
    assert outcome.duration_seconds < 3 + 1 + 3
    pids = read_pids(pidfile)
    assert len(pids) == 3
    assert [pid for pid in pids if not pid_dead(pid)] == []


def test_sigterm_ignored_still_killed_after_grace(tmp_path: Path) -> None:
    pidfile = tmp_path / "pids"
    seen, on_line = collect()
    started = time.monotonic()
    outcome = run_process(
        script(TREE.format(ignore=True)) + [str(pidfile)],
        timeout_seconds=3,
        on_line=on_line,
        kill_grace_seconds=1,
    )
    elapsed = time.monotonic() - started
    assert ("stdout", "ready") in seen
    assert outcome.timed_out is True
    assert outcome.ok is False
    # SIGTERM did nothing: the grace ran out before SIGKILL
    assert elapsed >= 3 + 1 - 0.1
    assert elapsed < 3 + 1 + 4
    pids = read_pids(pidfile)
    assert len(pids) == 3
    assert [pid for pid in pids if not pid_dead(pid)] == []


def test_background_grandchild_killed_after_success() -> None:
    argv = script(
        """
        import subprocess, sys
        child = subprocess.Popen(
            [sys.executable, "-c", "import time; time.sleep(600)"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        print(child.pid, flush=True)
        """
    )
    seen, on_line = collect()
    outcome = run_process(argv, timeout_seconds=9, on_line=on_line, kill_grace_seconds=1)
    assert outcome.ok is True
    assert outcome.exit_code == 0
    assert outcome.duration_seconds < 5
    assert len(seen) == 1
    grandchild = int(seen[0][1])
    assert pid_dead(grandchild), f"grandchild {grandchild} survived a successful run"


def test_argv_items_are_literal(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    items = [
        f"; touch {marker}",
        f"$(touch {marker})",
        f"`touch {marker}`",
        f"&& touch {marker}",
        "two words",
        "*",
        "$HOME",
    ]
    argv = script("import json, os, sys; print(json.dumps([os.getcwd(), *sys.argv[1:]]))") + items
    seen, on_line = collect()
    outcome = run_process(argv, timeout_seconds=9, on_line=on_line, cwd=tmp_path, kill_grace_seconds=1)
    assert outcome.ok is True
    assert len(seen) == 1
    cwd, *received = json.loads(seen[0][1])
    assert received == items
    assert os.path.samefile(cwd, tmp_path)
    assert not marker.exists()
    assert list(tmp_path.iterdir()) == []


def test_env_is_passed(tmp_path: Path) -> None:
    argv = script("import os; print(os.environ.get('POLIGRAPH_TEST_VALUE'))")
    seen, on_line = collect()
    env = {**os.environ, "POLIGRAPH_TEST_VALUE": "a; b"}
    outcome = run_process(argv, timeout_seconds=9, on_line=on_line, env=env, kill_grace_seconds=1)
    assert outcome.ok is True
    assert seen == [("stdout", "a; b")]


def test_grandchild_holding_stdout_does_not_turn_success_into_timeout() -> None:
    argv = script(
        """
        import subprocess, sys
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])  # inherits stdout
        print("done", flush=True)
        """
    )
    _, on_line = collect()
    outcome = run_process(argv, timeout_seconds=3, on_line=on_line, kill_grace_seconds=1)
    assert outcome.timed_out is False
    assert outcome.exit_code == 0


def escaper(pidfile: Path, mode: str) -> list[str]:
    return script(ESCAPER) + [str(pidfile), mode]


def escaped_pids(pidfile: Path) -> list[int]:
    pids = read_pids(pidfile)
    assert len(pids) == 2
    return pids


def test_detached_child_and_daemon_are_killed_after_success(tmp_path: Path) -> None:
    _, on_line = collect()
    outcome = run_process(
        escaper(tmp_path / "pids", "exit"), timeout_seconds=20, on_line=on_line, kill_grace_seconds=1
    )
    assert outcome.ok
    assert [pid for pid in escaped_pids(tmp_path / "pids") if not pid_dead(pid)] == []


def test_detached_child_and_daemon_are_killed_on_timeout(tmp_path: Path) -> None:
    _, on_line = collect()
    outcome = run_process(
        escaper(tmp_path / "pids", "stay"), timeout_seconds=3, on_line=on_line, kill_grace_seconds=1
    )
    assert outcome.timed_out
    assert [pid for pid in escaped_pids(tmp_path / "pids") if not pid_dead(pid)] == []


def test_detached_child_and_daemon_are_killed_when_the_run_is_cancelled(tmp_path: Path) -> None:
    def cancel_when_ready(stream: str, line: str) -> None:
        if line == "ready":
            raise Cancelled

    with pytest.raises(Cancelled):
        run_process(
            escaper(tmp_path / "pids", "stay"),
            timeout_seconds=60,
            on_line=cancel_when_ready,
            kill_grace_seconds=1,
        )
    assert [pid for pid in escaped_pids(tmp_path / "pids") if not pid_dead(pid)] == []


def test_orphans_are_reaped_not_left_as_zombies(tmp_path: Path) -> None:
    import psutil

    _, on_line = collect()
    run_process(escaper(tmp_path / "pids", "exit"), timeout_seconds=20, on_line=on_line, kill_grace_seconds=1)
    me = psutil.Process()
    zombies = [c.pid for c in me.children() if c.status() == psutil.STATUS_ZOMBIE]
    assert not set(zombies) & set(escaped_pids(tmp_path / "pids"))


def test_descendants_of_the_runners_other_children_are_left_alone(tmp_path: Path) -> None:
    """A long-lived child of this process (a database server, in a test) starting a process while
    a step runs, as PostgreSQL does for each connection: not the step's to kill."""
    import subprocess

    spawner = subprocess.Popen(
        script(
            """
            import os, subprocess, sys, time
            go, pidfile = sys.argv[1], sys.argv[2]
            while not os.path.exists(go):
                time.sleep(0.02)
            worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
            open(pidfile + ".tmp", "w").write(str(worker.pid))
            os.replace(pidfile + ".tmp", pidfile)
            time.sleep(600)
            """
        )
        + [str(tmp_path / "go"), str(tmp_path / "worker")]
    )
    try:

        def spawn_during_the_step(stream: str, line: str) -> None:
            (tmp_path / "go").touch()
            deadline = time.monotonic() + 10
            while not (tmp_path / "worker").exists() and time.monotonic() < deadline:
                time.sleep(0.02)

        outcome = run_process(
            script("print('hi', flush=True)"), timeout_seconds=20, on_line=spawn_during_the_step
        )
        assert outcome.ok
        worker = int((tmp_path / "worker").read_text())
        assert not pid_dead(worker) and not pid_dead(spawner.pid)
    finally:
        spawner.kill()
        spawner.wait()
        if (tmp_path / "worker").exists():
            os.kill(int((tmp_path / "worker").read_text()), signal.SIGKILL)


def test_a_sigterm_during_cleanup_is_held_until_it_is_done() -> None:
    from flows.script_runner import sigterm_held

    received: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, _frame: received.append(signum))
    try:
        with sigterm_held():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)  # let the interpreter run handlers
            assert received == []
        time.sleep(0.05)
        assert received == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, previous)


FLOOD_FOREVER = (
    "import sys\nwhile True:\n    sys.stdout.write('flood ' * 20 + '\\n')\n    sys.stderr.write('err\\n')\n"
)


def readers_left() -> list[str]:
    import threading

    return [t.name for t in threading.enumerate() if t.name.startswith("script-") and t.is_alive()]


def test_a_flood_cut_short_by_its_timeout_leaves_no_reader_waiting() -> None:
    # the readers fill their bounded queue and wait for room; once the loop stops they drop lines
    _, on_line = collect()
    started = time.monotonic()
    outcome = run_process(script(FLOOD_FOREVER), timeout_seconds=2, on_line=on_line, kill_grace_seconds=1)
    assert outcome.timed_out and outcome.tail
    assert readers_left() == [] and time.monotonic() - started < 2 + 1.5  # no wait for a reader


def test_a_flood_cut_short_by_a_cancel_leaves_no_reader_waiting() -> None:
    seen = []

    def cancel_after_some(stream: str, line: str) -> None:
        seen.append(line)
        if len(seen) == 5000:
            raise Cancelled

    with pytest.raises(Cancelled):
        run_process(
            script(FLOOD_FOREVER), timeout_seconds=30, on_line=cancel_after_some, kill_grace_seconds=1
        )
    assert readers_left() == []
