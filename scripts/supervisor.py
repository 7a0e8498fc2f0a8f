"""Keep a few long-running child processes alive: start, restart with backoff, stop cleanly.

Written here rather than taken from supervisord or circus because the local stack needs what
they do not give together: a child that may only start once another service answers (the
worker needs the Prefect server), restarts that never give up, a caller that can
restart a child it judges stuck, and output in the caller's own terminal, one prefix per child.

Each child runs in its own session (so its process group can be signalled whole, and a Ctrl-C
in the terminal reaches only this supervisor) and gets SIGTERM if the supervisor itself dies
(PR_SET_PDEATHSIG), so that a killed `make up` leaves no server holding its port.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from flows.process_tree import die_with_parent


@dataclass(frozen=True)
class Backoff:
    """Delay before restarting a child: doubles on each quick death, capped, and starts over
    once the child has stayed up `stable_seconds`."""

    first_seconds: float = 1.0
    max_seconds: float = 30.0
    stable_seconds: float = 60.0

    def delay(self, quick_deaths: int) -> float:
        return float(min(self.first_seconds * 2 ** max(quick_deaths - 1, 0), self.max_seconds))


@dataclass
class ChildSpec:
    name: str
    argv: list[str]
    env: dict[str, str]
    cwd: Path | None = None
    # A precondition checked before each start (the worker needs the Prefect server).
    ready_to_start: Callable[[], bool] = lambda: True
    waiting_for: str = ""  # what ready_to_start waits for, said once while it is false
    # Write straight to the supervisor's own stdout and stderr instead of through it, prefixed:
    # for a child that must keep going (and logging) while the supervisor itself is stuck.
    inherit_output: bool = False


@dataclass
class Exit:
    name: str
    code: int
    ran_seconds: float
    restart_in: float | None  # None while the supervisor is stopping


@dataclass
class _Child:
    spec: ChildSpec
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0  # time.monotonic()
    started_wall: float = 0.0  # time.time(), for comparisons with server timestamps
    next_start_at: float = 0.0
    quick_deaths: int = 0
    starts: int = 0
    said_waiting: bool = False
    pump: threading.Thread | None = field(default=None, repr=False)


class Supervisor:
    """Start the children, restart any that exits, stop them all on request.

    Call `tick()` often, always from one thread that lives as long as the children (a child
    gets SIGTERM when the thread that started it ends); it starts what is due and reaps what
    exited.
    """

    def __init__(
        self,
        specs: list[ChildSpec],
        backoff: Backoff | None = None,
        stop_grace_seconds: float = 10.0,
        output: IO[str] | None = None,
        own_name: str = "stack",
    ) -> None:
        self._children = {spec.name: _Child(spec) for spec in specs}
        self._backoff = backoff or Backoff()
        self._grace = stop_grace_seconds
        self._output = output or sys.stdout
        self._output_lock = threading.Lock()
        self._own_name = own_name
        self._width = max(len(name) for name in [*self._children, own_name])
        self.stopping = False

    # --- state, for the caller --------------------------------------------------------------
    def running(self, name: str) -> bool:
        proc = self._children[name].proc
        return proc is not None and proc.poll() is None

    def all_running(self) -> bool:
        return all(self.running(name) for name in self._children)

    def started_wall(self, name: str) -> float:
        """time.time() of the current process's start (0 if it never started)."""
        return self._children[name].started_wall

    def uptime(self, name: str) -> float:
        child = self._children[name]
        return time.monotonic() - child.started_at if self.running(name) else 0.0

    def pid(self, name: str) -> int | None:
        proc = self._children[name].proc
        return proc.pid if proc is not None and proc.poll() is None else None

    # --- the loop ------------------------------------------------------------------------
    def tick(self) -> list[Exit]:
        exits = [exit for child in self._children.values() if (exit := self._reap(child))]
        if not self.stopping:
            for child in self._children.values():
                self._start_if_due(child)
        return exits

    def restart(self, name: str, reason: str) -> None:
        """Stop a child the caller judges unhealthy; `tick()` then sees it exit and restarts it."""
        child = self._children[name]
        if child.proc is not None and child.proc.poll() is None:
            self.say(f"{name} (pid {child.proc.pid}) {reason}: restarting it")
            self._terminate([child])

    def stop(self) -> None:
        """Stop the children in reverse order of start (the ones that use the others first):
        SIGTERM to each one's process group, SIGKILL what is left after the grace period."""
        self.stopping = True
        for child in reversed(list(self._children.values())):
            self._terminate([child])
            self._reap(child)

    def kill(self) -> None:
        """A second Ctrl-C: SIGKILL every child's group at once."""
        self.stopping = True
        for child in self._children.values():
            if child.proc is not None:
                _signal_group(child.proc.pid, signal.SIGKILL)
        for child in self._children.values():
            if child.proc is not None:
                child.proc.wait()
        self.tick()

    # --- internals -------------------------------------------------------------------------
    def _start_if_due(self, child: _Child) -> None:
        if child.proc is not None or time.monotonic() < child.next_start_at:
            return
        if not child.spec.ready_to_start():
            if not child.said_waiting and child.spec.waiting_for:
                self.say(f"{child.spec.name} waits for {child.spec.waiting_for}")
                child.said_waiting = True
            return
        child.said_waiting = False
        piped = not child.spec.inherit_output
        child.proc = subprocess.Popen(
            child.spec.argv,
            env=child.spec.env,
            cwd=child.spec.cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if piped else None,
            stderr=subprocess.STDOUT if piped else None,
            start_new_session=True,
            preexec_fn=die_with_parent,  # noqa: PLW1509 - only a prctl call between fork and exec
        )
        child.started_at, child.started_wall = time.monotonic(), time.time()
        child.starts += 1
        again = " again" if child.starts > 1 else ""
        self.say(f"{child.spec.name} started{again} (pid {child.proc.pid})")
        if not piped:
            return
        child.pump = threading.Thread(
            target=self._pump,
            args=(child.spec.name, child.proc),
            name=f"output-{child.spec.name}",
            daemon=True,
        )
        child.pump.start()

    def _reap(self, child: _Child) -> Exit | None:
        if child.proc is None or (code := child.proc.poll()) is None:
            return None
        # What the child left in its group (the worker's flow-run processes) goes too.
        _signal_group(child.proc.pid, signal.SIGKILL)
        ran = time.monotonic() - child.started_at
        child.proc = None
        child.quick_deaths = 1 if ran >= self._backoff.stable_seconds else child.quick_deaths + 1
        how = f"signal {signal.Signals(-code).name}" if code < 0 else f"code {code}"
        if self.stopping:
            self.say(f"{child.spec.name} exited ({how}) after {ran:.1f} s")
            return Exit(child.spec.name, code, ran, None)
        delay = self._backoff.delay(child.quick_deaths)
        child.next_start_at = time.monotonic() + delay
        self.say(f"{child.spec.name} exited ({how}) after {ran:.1f} s; restarting in {delay:g} s")
        return Exit(child.spec.name, code, ran, delay)

    def _terminate(self, children: list[_Child]) -> None:
        live = [c.proc for c in children if c.proc is not None and c.proc.poll() is None]
        for proc in live:
            _signal_group(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + self._grace
        for proc in live:
            try:
                proc.wait(timeout=max(deadline - time.monotonic(), 0))
            except subprocess.TimeoutExpired:
                self.say(f"pid {proc.pid} still alive {self._grace:g} s after SIGTERM: SIGKILL")
                _signal_group(proc.pid, signal.SIGKILL)
                proc.wait()

    def _pump(self, name: str, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            self._write(name, raw.decode(errors="replace").rstrip("\n"))
        proc.stdout.close()

    def say(self, message: str) -> None:
        """A line of the supervisor's own, between the children's lines."""
        self._write(self._own_name, message)

    def _write(self, name: str, line: str) -> None:
        """`HH:MM:SS name | line`, whole lines only, whoever writes."""
        with self._output_lock:
            self._output.write(f"{time.strftime('%H:%M:%S')} {name:<{self._width}} | {line}\n")
            self._output.flush()


def _signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        pass
