"""Run one command as a process tree we can always kill, streaming its output line by line.

Why not subprocess.run(timeout=) or Prefect's task timeout: both stop only the direct child, so
`npx` -> `node` -> its children survive (docs/prefect.md, "Timeouts"). The command gets its own
session (process group) and environment tags (`flows.process_tree`); this process becomes a child
subreaper. On timeout, cancellation or any exit we SIGTERM the group and every descendant that
left it (tagged, or re-parented here), SIGKILL what is left after a grace period, and reap them.
Why not prefect-shell's ShellOperation: it runs commands through a shell, and nothing here may
ever go through one.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, ClassVar

import psutil

from flows.process_tree import (
    STEP_TAG,
    adopted_orphans,
    become_subreaper,
    children_pids,
    group_members,
    reap,
    tagged,
    terminate,
    zombie_children,
)

DRAIN_SECONDS = 2.0
LineHandler = Callable[[str, str], None]  # (stream name "stdout" | "stderr", line without \n)
_Line = tuple[str, str] | None  # None: one stream reached its end


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


class ScriptProcess:
    """One command in its own process group: start it, stream its lines, always stop every process
    it started, whatever they did to their session."""

    # leaders of the scripts running in this process: their exit status belongs to their Popen
    _leaders: ClassVar[set[int]] = set()

    def __init__(
        self,
        argv: Sequence[str],
        *,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
        tags: Mapping[str, str] | None = None,
        kill_grace_seconds: float = 10.0,
        tail_lines: int = 30,
    ) -> None:
        self.argv = list(argv)
        self.cwd = cwd
        self.step_id = uuid.uuid4().hex  # tags every descendant of this one command
        self.env = {**(os.environ if env is None else env), **(tags or {}), STEP_TAG: self.step_id}
        self.kill_grace_seconds = kill_grace_seconds
        self.tail: deque[str] = deque(maxlen=tail_lines)
        self.stderr_tail: deque[str] = deque(maxlen=tail_lines)
        self._lines: queue.Queue[_Line] = queue.Queue()
        self._readers: list[threading.Thread] = []
        self._proc: subprocess.Popen[bytes] | None = None
        self._started = 0.0
        self._born = 0.0  # the leader's start time, as psutil tells process start times
        self._earlier: set[int] = set()

    @property
    def proc(self) -> subprocess.Popen[bytes]:
        assert self._proc is not None, "start() first"
        return self._proc

    def start(self) -> int:
        """Start the command (no shell); return its pid, which is also its process group id."""
        become_subreaper()  # orphans of the script re-parent here: found, killed and reaped
        self._earlier = children_pids()  # not the step's, whatever their start time
        self._started = time.monotonic()
        self._born = time.time()
        self._proc = subprocess.Popen(
            self.argv,
            cwd=self.cwd,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,  # its own process group
        )
        ScriptProcess._leaders.add(self._proc.pid)
        try:
            self._born = psutil.Process(self._proc.pid).create_time()
        except psutil.Error:  # already gone: keep the wall-clock start
            pass
        for pipe, name in ((self._proc.stdout, "stdout"), (self._proc.stderr, "stderr")):
            assert pipe is not None
            reader = threading.Thread(target=_pump, args=(pipe, name, self._lines), daemon=True)
            reader.start()
            self._readers.append(reader)
        return self._proc.pid

    def stream(self, on_line: LineHandler, timeout_seconds: float) -> bool:
        """Hand every line to `on_line` until the command is done; True when it timed out."""
        deadline = self._started + timeout_seconds
        open_streams = len(self._readers)
        drain_until: float | None = None  # set once the leader has exited
        while open_streams:
            now = time.monotonic()
            if drain_until is None and self.proc.poll() is not None:
                # A leftover background child may hold the pipes open for ever: read until the
                # output has been quiet for a moment, then stop listening (the group is killed).
                drain_until = now + DRAIN_SECONDS
            if drain_until is not None and now >= drain_until:
                break
            if now >= deadline:
                return True
            try:
                item = self._lines.get(timeout=min(deadline - now, 0.2))
            except queue.Empty:
                continue
            if item is None:
                open_streams -= 1
                continue
            if drain_until is not None:  # still draining: wait for silence, not a fixed time
                drain_until = time.monotonic() + DRAIN_SECONDS
            self._keep(*item)
            on_line(*item)
        try:  # streams closed; the leader may still be exiting
            self.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            return True
        return False

    def stop(self) -> None:
        """SIGTERM every process of this command, SIGKILL whatever is left after the grace, reap."""
        if self._proc is not None:
            with sigterm_held():
                terminate(self._members, self.kill_grace_seconds, on_poll=self._reap)
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL cannot be ignored
                pass
            self._reap()
            ScriptProcess._leaders.discard(self._proc.pid)
        for reader in self._readers:
            reader.join(timeout=2)

    def _members(self) -> list[psutil.Process]:
        """Every live process of this command: its group, its tagged descendants wherever they
        went, and orphans re-parented here (with what they started) since it started."""
        found = {p.pid: p for p in group_members(self.proc.pid)}
        for process in [
            *tagged(STEP_TAG, self.step_id),
            *adopted_orphans(self._born, self.step_id, self._earlier),
        ]:
            found.setdefault(process.pid, process)
        return list(found.values())

    def _reap(self) -> None:
        """Reap our leader through its Popen, and orphans of this command re-parented here.

        Never another script's leader: os.waitpid on it would make its Popen report exit 0.
        """
        self.proc.poll()
        reap(pid for pid in zombie_children(self._born) if pid not in ScriptProcess._leaders)

    def outcome(self, timed_out: bool) -> ProcessOutcome:
        return ProcessOutcome(
            argv=self.argv,
            exit_code=None if timed_out else self.proc.returncode,
            duration_seconds=round(time.monotonic() - self._started, 3),
            timed_out=timed_out,
            tail=list(self.tail),
            stderr_tail=list(self.stderr_tail),
        )

    def _keep(self, stream: str, line: str) -> None:
        self.tail.append(line)
        if stream == "stderr":
            self.stderr_tail.append(line)


def run_process(
    argv: Sequence[str],
    *,
    timeout_seconds: float,
    on_line: LineHandler,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    tags: Mapping[str, str] | None = None,
    kill_grace_seconds: float = 10.0,
    tail_lines: int = 30,
    on_start: Callable[[int], None] | None = None,
) -> ProcessOutcome:
    """Run `argv` (no shell) until it exits or `timeout_seconds` pass; never leave a survivor.

    `tags` are added to its environment (and so to every descendant's), e.g. the flow-run id.
    """
    process = ScriptProcess(
        argv, cwd=cwd, env=env, tags=tags, kill_grace_seconds=kill_grace_seconds, tail_lines=tail_lines
    )
    pgid = process.start()
    try:
        if on_start is not None:
            on_start(pgid)
        timed_out = process.stream(on_line, timeout_seconds)
    finally:
        # Always: on timeout, on cancellation (Prefect raises inside the flow), on any exception
        # and on success (a script may leave background children or daemons behind).
        process.stop()
    return process.outcome(timed_out)


@contextmanager
def sigterm_held() -> Iterator[None]:
    """Hold SIGTERM until the block ends, then deliver it (main thread only).

    A cancel arrives as SIGTERM, which Prefect turns into an exception; the cleanup it starts
    must not be cut short by a second SIGTERM (a runner or a reconciler insisting, a service
    stopping), or the script's processes would outlive it.
    """
    held: list[int] = []
    try:
        previous = signal.signal(signal.SIGTERM, lambda signum, _frame: held.append(signum))
    except ValueError:  # not the main thread, where Python runs signal handlers: nothing to hold
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
        if held:
            os.kill(os.getpid(), signal.SIGTERM)


def _pump(pipe: IO[bytes], stream: str, out: queue.Queue[_Line]) -> None:
    try:
        for raw in iter(pipe.readline, b""):
            out.put((stream, raw.decode("utf-8", errors="replace").rstrip("\r\n")))
    finally:
        pipe.close()
        out.put(None)
