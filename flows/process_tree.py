"""Inspect, find and signal processes (psutil), the one place that does.

A script's descendants can leave its process group (`setsid`, Node's `spawn(..., {detached:
true})`, which is how Puppeteer and Playwright start Chromium, or a double-forked daemon), so
killing the group is not enough. Three things find them again:

* environment tags: every script starts with `POLIGRAPH_FLOW_RUN_ID` and `POLIGRAPH_STEP_ID` in
  its environment, which every descendant inherits whatever it does to its session; the kernel
  keeps them (`/proc/<pid>/environ`), so the reconciler finds the leftovers of a run whose
  process died;
* the child subreaper flag on the process that runs steps: orphans re-parent to it instead of
  PID 1, so they stay its descendants and it can reap them;
* the script's process group.

Zombies (exited, not yet reaped) count as dead everywhere: they hold no resources, and in a
container whose PID 1 does not reap orphans they may never go away.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
import time
from collections.abc import Callable, Iterable

import psutil

RUN_TAG = "POLIGRAPH_FLOW_RUN_ID"
STEP_TAG = "POLIGRAPH_STEP_ID"
_DEAD = (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)
_PR_SET_CHILD_SUBREAPER = 36  # <linux/prctl.h>
_PR_SET_PDEATHSIG = 1
POLL_SECONDS = 0.1
SIGKILL_WAIT_SECONDS = 5.0  # members in uninterruptible sleep take a moment to go after SIGKILL

Finder = Callable[[], list[psutil.Process]]


def is_alive(pid: int) -> bool:
    """True for a live process; zombies count as dead."""
    try:
        return psutil.Process(pid).status() not in _DEAD
    except psutil.Error:
        return False


def start_time(pid: int) -> float | None:
    """When `pid` started (seconds since the epoch), None when it is gone or a zombie.

    Stored next to a pid, it tells a process from a later one that reused its pid.
    """
    try:
        process = psutil.Process(pid)
        if process.status() in _DEAD:
            return None
        return process.create_time()
    except psutil.Error:
        return None


def signal_process(pid: int, started: float | None, sig: signal.Signals) -> bool:
    """Signal `pid` if it is still the process that started at `started` (not a reused pid)."""
    if started is None or start_time(pid) != started:
        return False
    try:
        os.kill(pid, sig)
        return True
    except ProcessLookupError:
        return False


def _load_prctl() -> Callable[..., int] | None:
    # psutil and the standard library do not expose prctl, and python-prctl would be a compiled
    # dependency for two calls, hence ctypes. Resolved at import, so a forked child (see
    # die_with_parent) only makes the call.
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _load_prctl()


def become_subreaper() -> bool:
    """Make orphaned descendants of this process re-parent to it (Linux only); True when set."""
    return _PRCTL is not None and _PRCTL(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0


def die_with_parent() -> None:
    """For a child between fork and exec: SIGTERM when its parent dies (Linux only)."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def tag_of(process: psutil.Process, name: str) -> str | None:
    """The value of environment variable `name` the process started with; None when unreadable."""
    try:
        return process.environ().get(name)
    except psutil.Error:
        return None


def _live(processes: Iterable[psutil.Process]) -> list[psutil.Process]:
    alive = []
    for process in processes:
        try:
            if process.status() not in _DEAD:
                alive.append(process)
        except psutil.Error:
            continue
    return alive


def tagged(name: str, value: str) -> list[psutil.Process]:
    """Live processes whose environment carries `name=value` (other users' are unreadable)."""
    return [p for p in _live(psutil.process_iter()) if p.pid != os.getpid() and tag_of(p, name) == value]


def group_members(pgid: int) -> list[psutil.Process]:
    """Live processes of process group `pgid`."""
    members = []
    for process in _live(psutil.process_iter()):
        try:
            if os.getpgid(process.pid) == pgid:
                members.append(process)
        except OSError:  # gone meanwhile
            continue
    return members


def children_pids() -> set[int]:
    try:
        return {child.pid for child in psutil.Process().children()}
    except psutil.Error:
        return set()


def adopted_orphans(since: float, step_tag: str, earlier: set[int]) -> list[psutil.Process]:
    """Children of this process started at or after `since` that belong to no other step, and
    their descendants: with the subreaper flag, the orphans of a script and what they started,
    even one that cleared its environment.

    Only direct children are candidates: an orphan is re-parented to this process itself, while
    the descendants of its other children (a database server's connection processes, in a test)
    are none of a script's business. `earlier`: the children this process had before the step
    began (start times only have clock-tick resolution, so they alone cannot tell).
    """
    found: dict[int, psutil.Process] = {}
    try:
        children = psutil.Process().children()
    except psutil.Error:
        return []
    for child in _live(children):
        if child.pid in earlier:
            continue
        try:
            if child.create_time() < since or tag_of(child, STEP_TAG) not in (None, step_tag):
                continue
            found[child.pid] = child
            for descendant in _live(child.children(recursive=True)):
                found.setdefault(descendant.pid, descendant)
        except psutil.Error:
            continue
    return list(found.values())


def send(processes: Iterable[psutil.Process], sig: signal.Signals) -> None:
    for process in processes:
        try:
            process.send_signal(sig)
        except psutil.Error:  # gone, or its pid now belongs to someone we may not signal
            continue


def terminate(find: Finder, grace_seconds: float, on_poll: Callable[[], None] = lambda: None) -> set[int]:
    """SIGTERM everything `find` returns, SIGKILL whatever is still found after the grace.

    `find` is asked again at every poll, so processes started during the grace are caught too.
    `on_poll` runs at each poll (to reap). Returns the pids that were signalled.
    """
    seen: set[int] = set()
    targets = find()
    if not targets:
        return seen
    send(targets, signal.SIGTERM)
    seen.update(p.pid for p in targets)
    deadline = time.monotonic() + grace_seconds
    while targets and time.monotonic() < deadline:
        time.sleep(POLL_SECONDS)
        on_poll()
        targets = find()
        seen.update(p.pid for p in targets)
    end = time.monotonic() + SIGKILL_WAIT_SECONDS
    while targets and time.monotonic() < end:
        send(targets, signal.SIGKILL)
        time.sleep(POLL_SECONDS / 2)
        on_poll()
        targets = find()
        seen.update(p.pid for p in targets)
    return seen


def reap(pids: Iterable[int]) -> None:
    """Collect the exit status of those `pids` that are exited children of this process."""
    for pid in pids:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:  # not our child (or already reaped)
            continue


def zombie_children(since: float) -> list[int]:
    """Exited, unreaped children of this process started at or after `since`."""
    zombies = []
    try:
        children = psutil.Process().children()
    except psutil.Error:
        return []
    for child in children:
        try:
            if child.status() == psutil.STATUS_ZOMBIE and child.create_time() >= since:
                zombies.append(child.pid)
        except psutil.Error:
            continue
    return zombies


def kill_run_leftovers(flow_run_id: str, groups: Iterable[int] = ()) -> list[int]:
    """SIGKILL what a dead run left: every process tagged with its id, and its scripts' groups.

    A group member tagged with another run (a reused group id) is left alone. Returns the pids.
    """

    def find() -> list[psutil.Process]:
        found = {p.pid: p for p in tagged(RUN_TAG, flow_run_id)}
        for pgid in groups:
            for member in group_members(pgid):
                if tag_of(member, RUN_TAG) in (None, flow_run_id):
                    found.setdefault(member.pid, member)
        return list(found.values())

    return sorted(terminate(find, grace_seconds=0))
