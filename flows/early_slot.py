"""The first step's concurrency slot, asked for as the run starts instead of when the step does.

Taking a slot is a write on the Prefect server (20 to 60 ms, more when a SQLite server answers 503
first). A run asks for its first step's slot in a background thread as its body begins, so the
request overlaps the SyncJob RUNNING write and Prefect's start of the step's task; the step then
takes the lease over (`take`) instead of asking itself. Nothing else changes: a step that finds no
early lease, or one whose request failed, asks for its slot as before (and fails as before), and a
lease no step took over (the row was cancelled, the step was cached, the run failed first) is
released when the run body ends (`release_untaken`). The holder shown for an early lease is the
flow run (its task run does not exist yet).
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass

from flows.slots import LEASE_SECONDS, Lease, give_back, slot_api

log = logging.getLogger(__name__)
# An early lease older than this is given back and a fresh one taken: the step's renewal loop
# starts from its own acquisition, and half the lease is a wide margin.
MAX_EARLY_AGE_SECONDS = LEASE_SECONDS / 2
# For `python -m bench.flow_start --early-slot-ab` only: a run whose environment has it set to 1
# asks nothing early (its step asks for its slot itself), to measure what the early request saves.
BENCH_SWITCH = "BENCH_NO_EARLY_SLOT"


@dataclass
class _Early:
    future: Future[Lease]
    asked_at: float


_early: dict[tuple[str, str], _Early] = {}  # by (flow run id, limit name)
_lock = threading.Lock()


@contextmanager
def first_step_slot(name: str | None, flow_run_id: str) -> Iterator[None]:
    """For a run's body: its first step's slot (`name`; None: nothing to ask) asked for at once,
    and given back at the end if no step took it over."""
    if name is not None and os.environ.get(BENCH_SWITCH) != "1":
        ask_early(name, flow_run_id)
    try:
        yield
    finally:
        release_untaken(flow_run_id)


def ask_early(name: str, flow_run_id: str) -> None:
    """Start taking a slot of the limit `name` for the run in the background (once)."""
    with _lock:
        if (flow_run_id, name) in _early:
            return
        future: Future[Lease] = Future()
        _early[(flow_run_id, name)] = _Early(future, time.monotonic())

    def acquire() -> None:
        try:
            future.set_result(slot_api().acquire(name, {"type": "flow_run", "id": flow_run_id}))
        except BaseException as exc:  # noqa: BLE001 - the step asks again and meets it itself
            future.set_exception(exc)

    threading.Thread(target=acquire, name=f"early-slot-{name}", daemon=True).start()


def take(name: str, flow_run_id: str) -> Lease | None:
    """The run's early lease of `name` for the step about to hold it, waiting for the request to
    end; None when there is none, its request failed, or it is too old to hand over."""
    with _lock:
        early = _early.pop((flow_run_id, name), None)
    if early is None:
        return None
    try:
        lease = early.future.result()
    except Exception:
        return None
    if time.monotonic() - early.asked_at > MAX_EARLY_AGE_SECONDS:
        give_back(name, lease, log)
        return None
    return lease


def release_untaken(flow_run_id: str) -> None:
    """Give back every early lease of the run that no step took over. A request still waiting
    (the slot is held by another run) is not waited for: its lease is given back when it comes,
    or expires if the process ends first."""
    with _lock:
        untaken = [(key[1], _early.pop(key)) for key in list(_early) if key[0] == flow_run_id]
    for name, early in untaken:
        early.future.add_done_callback(functools.partial(_release_done, name))


def _release_done(name: str, done: Future[Lease]) -> None:
    if done.exception() is None:
        give_back(name, done.result(), log)
