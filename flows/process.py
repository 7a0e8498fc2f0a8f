"""Run one command as a process tree we can always kill, streaming its output line by line.

Why not subprocess.run(timeout=) or Prefect's task timeout: both stop only the direct child, so
`npx` -> `node` -> its children survive (prefect-notes §4). The command gets its own session
(process group); on timeout, cancellation or any exit we SIGTERM the whole group, then SIGKILL
after a grace period. Why not prefect-shell's ShellOperation: it runs commands through bash.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

DRAIN_SECONDS = 2.0
LineHandler = Callable[[str, str], None]  # (stream name "stdout" | "stderr", line without \n)


@dataclass
class ProcessOutcome:
    argv: list[str]
    exit_code: int | None
    duration_seconds: float
    timed_out: bool
    tail: list[str] = field(default_factory=list)  # last lines of both streams, in order
    stderr_tail: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out


def run_process(
    argv: Sequence[str],
    *,
    timeout_seconds: float,
    on_line: LineHandler,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    kill_grace_seconds: float = 10.0,
    tail_lines: int = 30,
    on_start: Callable[[int], None] | None = None,
) -> ProcessOutcome:
    """Run `argv` (no shell) until it exits or `timeout_seconds` pass; never leave a survivor."""
    started = time.monotonic()
    proc = subprocess.Popen(
        list(argv),
        cwd=cwd,
        env=dict(env) if env is not None else None,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own process group: killpg reaches every descendant
    )
    if on_start is not None:
        on_start(proc.pid)  # the process group id, as the child leads its own session
    lines: queue.Queue[tuple[str, str] | None] = queue.Queue()
    readers = [
        threading.Thread(target=_pump, args=(proc.stdout, "stdout", lines), daemon=True),
        threading.Thread(target=_pump, args=(proc.stderr, "stderr", lines), daemon=True),
    ]
    for reader in readers:
        reader.start()
    tail: deque[str] = deque(maxlen=tail_lines)
    stderr_tail: deque[str] = deque(maxlen=tail_lines)
    timed_out = False
    open_streams = len(readers)
    try:
        deadline = started + timeout_seconds
        drain_until: float | None = None  # set once the leader has exited
        while open_streams:
            now = time.monotonic()
            if drain_until is None and proc.poll() is not None:
                # A leftover background child may hold the pipes open for ever: read until the
                # output has been quiet for a moment, then stop listening (the group is killed).
                drain_until = now + DRAIN_SECONDS
            if drain_until is not None and now >= drain_until:
                break
            if now >= deadline:
                timed_out = True
                break
            try:
                item = lines.get(timeout=min(deadline - now, 0.2))
            except queue.Empty:
                continue
            if item is None:
                open_streams -= 1
                continue
            stream, line = item
            if drain_until is not None:  # still draining: wait for silence, not a fixed time
                drain_until = time.monotonic() + DRAIN_SECONDS
            tail.append(line)
            if stream == "stderr":
                stderr_tail.append(line)
            on_line(stream, line)
        if not timed_out:
            # Streams closed; the leader may still be exiting.
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                timed_out = True
    finally:
        # Always: on timeout, on cancellation (Prefect raises inside the flow) and on success
        # (a script may leave background children behind).
        kill_process_group(proc, kill_grace_seconds)
        for reader in readers:
            reader.join(timeout=2)
    return ProcessOutcome(
        argv=list(argv),
        exit_code=None if timed_out else proc.returncode,
        duration_seconds=round(time.monotonic() - started, 3),
        timed_out=timed_out,
        tail=list(tail),
        stderr_tail=list(stderr_tail),
    )


def kill_process_group(proc: subprocess.Popen[bytes], grace_seconds: float) -> None:
    """SIGTERM the process group of `proc`, then SIGKILL whatever is left after the grace."""
    pgid = proc.pid  # start_new_session: the group id is the leader's pid
    if not _group_alive(pgid) and proc.poll() is not None:
        return
    _signal_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace_seconds
    while time.monotonic() < deadline:
        proc.poll()  # reap the leader so it stops counting as alive
        if not _group_alive(pgid):
            break
        time.sleep(0.05)
    else:
        _signal_group(pgid, signal.SIGKILL)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL cannot be ignored
        pass
    # Members in uninterruptible sleep take a moment to go away after SIGKILL.
    end = time.monotonic() + 5
    while _group_alive(pgid) and time.monotonic() < end:
        _signal_group(pgid, signal.SIGKILL)
        time.sleep(0.05)


def kill_group_now(pgid: int) -> None:
    """SIGKILL a process group left behind by a dead run (nothing is left to stop it politely)."""
    if _group_alive(pgid):
        _signal_group(pgid, signal.SIGKILL)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _group_alive(pgid: int) -> bool:
    """True while a live (non-zombie) process is in the group."""
    proc_root = Path("/proc")
    if not proc_root.is_dir():  # pragma: no cover - non-Linux fallback
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        return True
    # Zombies count as members for killpg(pgid, 0) and may never be reaped when PID 1 does not
    # reap orphans (containers), so read the states from /proc instead.
    for entry in proc_root.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # fields after the ")" closing the command name: state ppid pgrp ...
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            return True
    return False


def _pump(pipe, stream: str, out: queue.Queue[tuple[str, str] | None]) -> None:
    try:
        for raw in iter(pipe.readline, b""):
            out.put((stream, raw.decode("utf-8", errors="replace").rstrip("\r\n")))
    finally:
        pipe.close()
        out.put(None)
