"""Pieces of the chaos test: what happened when, the kill plan, the event stream, supervision."""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

import inngest

from scripts.supervisor import Supervisor
from support.shim import dev_client


class Timeline:
    """Wall-clock notes, printed at the end so a failure can be read against the logs."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.start = time.monotonic()
        self.entries: list[tuple[float, str]] = []

    def note(self, text: str) -> None:
        with self._lock:
            self.entries.append((time.time(), text))

    def render(self) -> str:
        with self._lock:
            rows = sorted(self.entries)
        first = rows[0][0] if rows else time.time()
        return "\n".join(
            f"{datetime.fromtimestamp(t).strftime('%H:%M:%S.%f')[:-3]} +{t - first:6.1f}s  {text}"
            for t, text in rows
        )


@dataclass(frozen=True, order=True)
class Kill:
    at: float  # seconds after the stream starts
    target: str
    down_for: float = 0.0  # how long a stopped database stays down


def plan_kills(
    rng: random.Random, targets: list[str], window: float, db_down: tuple[float, float]
) -> list[Kill]:
    """One kill per target at a random moment of the window, in time order."""
    return sorted(
        Kill(
            round(rng.uniform(3.0, window), 1),
            target,
            round(rng.uniform(*db_down), 1) if target == "app-db" else 0,
        )
        for target in targets
    )


@dataclass
class Sent:
    job_id: str
    script: str  # the SyncJob.script of the row
    event: str
    shim: str
    acknowledged: bool
    event_ids: list[str] = field(default_factory=list)
    error: str = ""


class EventStream(threading.Thread):
    """What the admin does, again and again, against one shim: insert a PENDING row, send the
    event with the Inngest SDK. A send counts only when the SDK returned its ids (the shim
    answered 200); a row the admin could not insert (database down) means no event."""

    def __init__(
        self,
        name: str,
        shim_url: str,
        events: list[tuple[str, str]],  # (event name, row script)
        insert_pending: Callable[[str, str], None],
        rng: random.Random,
        seconds: float,
        gap: tuple[float, float],
        timeline: Timeline,
    ) -> None:
        super().__init__(name=f"events-{name}", daemon=True)
        self.shim_name = name
        self.client = dev_client(shim_url)
        self.events = events
        self.insert_pending = insert_pending
        self.rng = rng
        self.seconds = seconds
        self.gap = gap
        self.timeline = timeline
        self.sent: list[Sent] = []
        self.not_inserted = 0

    def run(self) -> None:
        deadline = time.monotonic() + self.seconds
        order = list(self.events)
        self.rng.shuffle(order)
        count = 0
        while time.monotonic() < deadline:
            # round robin in a seeded order: runs of one deployment queue one behind the other
            event, script = order[count % len(order)]
            count += 1
            job_id = f"c{uuid.uuid4().hex[:24]}"
            try:
                self.insert_pending(job_id, script)
            except Exception:  # the app's database is down: the admin shows an error, sends nothing
                self.not_inserted += 1
            else:
                self.sent.append(self._send(event, script, job_id))
            time.sleep(self.rng.uniform(*self.gap))  # the pace of the stream, not a synchronisation

    def _send(self, event: str, script: str, job_id: str) -> Sent:
        try:
            ids = self.client.send_sync(inngest.Event(name=event, data={"jobId": job_id}))
        except Exception as exc:  # the SDK gave up: not acknowledged
            self.timeline.note(f"{self.shim_name}: {event} {job_id} NOT acknowledged ({str(exc)[:80]})")
            return Sent(job_id, script, event, self.shim_name, False, error=str(exc))
        return Sent(job_id, script, event, self.shim_name, True, list(ids))


class Supervision(threading.Thread):
    """Runs a Supervisor's loop in one thread that lives as long as its children (a child gets
    SIGTERM when the thread that started it ends: PR_SET_PDEATHSIG), then stops them."""

    def __init__(self, supervisor: Supervisor) -> None:
        super().__init__(name="supervisor", daemon=True)
        self.supervisor = supervisor
        self.done = threading.Event()
        self.stopped = threading.Event()

    def run(self) -> None:
        try:
            while not self.done.is_set():
                self.supervisor.tick()
                self.done.wait(0.1)
        finally:
            self.supervisor.stop()
            self.stopped.set()

    def stop(self, timeout: float = 90) -> None:
        self.done.set()
        self.stopped.wait(timeout)
