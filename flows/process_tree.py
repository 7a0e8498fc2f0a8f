"""Inspect and signal processes and process groups (psutil), the one place that does.

Zombies (exited, not yet reaped) count as dead everywhere: they hold no resources, and in a
container whose PID 1 does not reap orphans they may never go away.
"""

from __future__ import annotations

import os
import signal

import psutil

_DEAD = (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)


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


def group_members(pgid: int) -> list[int]:
    """Live processes of process group `pgid`."""
    members = []
    for process in psutil.process_iter(["status"]):
        if process.info["status"] in _DEAD:
            continue
        try:
            if os.getpgid(process.pid) == pgid:
                members.append(process.pid)
        except OSError:  # gone meanwhile
            continue
    return members


def group_alive(pgid: int) -> bool:
    return bool(group_members(pgid))


def signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def kill_group_now(pgid: int) -> None:
    """SIGKILL a process group left behind by a dead run (nothing is left to stop it politely)."""
    if group_alive(pgid):
        signal_group(pgid, signal.SIGKILL)
