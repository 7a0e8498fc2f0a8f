"""Run everything on one machine, supervised: a Prefect server (UI; SQLite, or a PostgreSQL
database of its own when DATABASE_URL is a PostgreSQL: scripts/prefect_settings.py), one worker of
the `poligraph` pool (scripts/worker.py: the same command as on a production machine, creating the
catalog's deployments as it starts), and the Inngest-compatible Event API (`python -m shim`).

    python -m scripts.local_stack          (what `make up` runs)

Each child is restarted when it dies (exponential backoff) and its output is shown prefixed
with its name. The shim starts at once and stores events while Prefect is away; the worker starts
once the Prefect server answers. The line `stack   | ready: …` is printed once
everything answers (scripts/readiness.py), and again after each recovery. Ctrl-C or SIGTERM
stops everything (exit 0); a second Ctrl-C kills at once.

Local state lives in POLIGRAPH_HOME (default ~/.poligraph-jobs): the Prefect database under
prefect/ unless PREFECT_HOME is set, and the SQLite SyncJob table unless DATABASE_URL is set.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from datetime import UTC, datetime
from types import FrameType

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from deployments.catalog import get_catalog
from deployments.prefect_yaml import WORK_POOL
from deployments.settings import get_settings
from deployments.specs import deployment_specs
from scripts.limits import DISK_LEASES
from scripts.prefect_settings import (
    DATABASE_WAIT_SECONDS,
    DatabaseUnusable,
    server_environment,
    worker_environment,
)
from scripts.readiness import Readiness, StackProbe
from scripts.supervisor import Backoff, ChildSpec, Supervisor
from shim.settings import ShimSettings

HOST = "127.0.0.1"
TICK_SECONDS = 0.2
WORKER_NAME = "local"  # how readiness finds it among the pool's workers


class StackSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="POLIGRAPH_", env_file=".env", extra="ignore")

    prefect_port: int = Field(default=4200, description="Port of the local Prefect server.")
    ready_warning_seconds: float = Field(
        default=90, gt=0, description="Say what is missing when not ready after this long (and again)."
    )
    restart_max_seconds: float = Field(
        default=30, gt=0, description="Longest wait before restarting a child that keeps dying."
    )
    stop_grace_seconds: float = Field(
        default=20, ge=0, description="SIGTERM → SIGKILL grace per child (the worker ends its runs in it)."
    )
    database_wait_seconds: float = Field(
        default=DATABASE_WAIT_SECONDS,
        ge=0,
        description="At start, how long to wait for a PostgreSQL DATABASE_URL to answer "
        "(`scripts.prefect_database` reads it too).",
    )
    worker_limit: int = Field(default=4, ge=1, description="Runs the worker executes at once.")
    worker_stall_seconds: float = Field(
        default=120,
        gt=0,
        description="Restart the worker when it has sent no heartbeat this long while the Prefect "
        "server answers.",
    )


def stack_environment(port: int, database_wait_seconds: float = DATABASE_WAIT_SECONDS) -> dict[str, str]:
    settings = get_settings()
    env = dict(os.environ)
    env.setdefault("PREFECT_HOME", str(settings.home / "prefect"))
    os.makedirs(env["PREFECT_HOME"], exist_ok=True)
    env["PREFECT_API_URL"] = f"http://{HOST}:{port}/api"
    # The supervisor restarts a dead server: slot leases on disk survive that (in memory, a step
    # holding its script's slot across the restart would leave the slot taken for good).
    env.setdefault("PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE", DISK_LEASES)
    # One machine: a run with no process here has none anywhere, so a run the server's death left
    # Pending or Cancelling (or Running before its body began) is ended after 30 s rather than 60
    # (its queued successors wait for it).
    env.setdefault("POLIGRAPH_STUCK_RUN_SECONDS", "30")
    env["PYTHONUNBUFFERED"] = "1"  # children's lines reach the terminal as they are written
    env.setdefault("POLIGRAPH_WORKER_DEPLOY", "true")  # the worker creates the deployments
    # The Prefect settings of the stack (server and worker) live in scripts/prefect_settings.py.
    return worker_environment(server_environment(env, database_wait_seconds))


def worker_command(python: str, limit: int) -> list[str]:
    """What a production machine runs (the README's command), named for readiness."""
    return [python, "-m", "prefect", "worker", "start", "--pool", WORK_POOL, "--type", "poligraph"] + [
        "--name",
        WORKER_NAME,
        "--limit",
        str(limit),
    ]


def children(env: dict[str, str], port: int, probe: StackProbe, worker_limit: int) -> list[ChildSpec]:
    """In start order; they are stopped in reverse (shim, worker, then the server)."""
    python = sys.executable
    server = [python, "-m", "prefect", "server", "start", "--host", HOST, "--port", str(port)]
    return [
        ChildSpec("prefect", server, env),
        ChildSpec(
            "worker",
            worker_command(python, worker_limit),
            env,
            ready_to_start=probe.prefect_healthy,
            waiting_for="the Prefect server to answer",
        ),
        ChildSpec("shim", [python, "-m", "shim"], env),  # independent of Prefect: it has an outbox
    ]


class ReadinessMonitor(threading.Thread):
    """Checks readiness in the background (a check may wait on a slow server) and keeps the
    latest result with the monotonic time its check started."""

    def __init__(self, probe: StackProbe, supervisor: Supervisor) -> None:
        super().__init__(name="readiness", daemon=True)
        self._probe = probe
        self._supervisor = supervisor
        self._lock = threading.Lock()
        self._latest: tuple[Readiness, float] | None = None
        self._done = threading.Event()
        self.quick = threading.Event()  # check again now (something changed)

    def latest(self) -> tuple[Readiness, float] | None:
        with self._lock:
            return self._latest

    def run(self) -> None:
        while not self._done.is_set():
            started = time.monotonic()
            worker = self._supervisor.started_wall("worker") if self._supervisor.running("worker") else None
            try:
                result = self._probe.check(datetime.fromtimestamp(worker, UTC) if worker else None)
            except Exception as exc:  # an answer the probe did not expect: not ready, check again
                result = Readiness([f"a readiness check ({type(exc).__name__}: {exc})"], False, False)
            with self._lock:
                self._latest = (result, started)
            # Every second until ready; then a lighter pace, or at once when told.
            self.quick.wait(timeout=1.0 if result.missing else 5.0)
            self.quick.clear()

    def stop(self) -> None:
        self._done.set()
        self.quick.set()


class ForcedStop(Exception):
    """A second Ctrl-C while stopping."""


class LocalStack:
    def __init__(self, settings: StackSettings) -> None:
        self.settings = settings
        self.env = stack_environment(settings.prefect_port, settings.database_wait_seconds)
        self.api_url = self.env["PREFECT_API_URL"]
        shim = ShimSettings()  # refuses a bad shim configuration here, not in a restart loop
        shim_host = HOST if shim.host in ("0.0.0.0", "::") else shim.host
        self.shim_url = f"http://{shim_host}:{shim.port}"
        names = [spec.full_name for spec in deployment_specs(get_catalog())]
        heartbeat_every = float(self.env.get("PREFECT_WORKER_HEARTBEAT_SECONDS", "30"))
        self.probe = StackProbe(
            self.api_url,
            self.shim_url,
            names,
            worker=(WORK_POOL, WORKER_NAME),
            heartbeat_stale_seconds=max(60.0, 3 * heartbeat_every),
        )
        self.supervisor = Supervisor(
            children(self.env, settings.prefect_port, self.probe, settings.worker_limit),
            backoff=Backoff(max_seconds=settings.restart_max_seconds),
            stop_grace_seconds=settings.stop_grace_seconds,
        )
        self.monitor = ReadinessMonitor(self.probe, self.supervisor)
        self.stop_requested = False
        self.announced_ready = False
        self.not_ready_since = time.monotonic()
        self.last_warning = time.monotonic()
        self.invalidated_at = time.monotonic()  # readiness checks started before this are stale
        self.worker_excused_at = time.monotonic()  # last time the worker was heard, or could not be

    def on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if self.stop_requested:
            raise ForcedStop
        self.stop_requested = True

    def run(self) -> int:
        say = self.supervisor.say
        say(
            f"starting: Prefect server on http://{HOST}:{self.settings.prefect_port} "
            f"(home {self.env['PREFECT_HOME']}), shim on {self.shim_url}; wait for the line 'ready'"
        )
        self.monitor.start()
        try:
            while not self.stop_requested:
                self.step()
                time.sleep(TICK_SECONDS)
            say("stopping (Ctrl-C again to kill at once)")
            self.monitor.stop()
            self.supervisor.stop()
        except ForcedStop:
            say("killing every child now")
            self.supervisor.kill()
            return 130
        say("stopped")
        return 0

    def step(self) -> None:
        now = time.monotonic()
        exits = self.supervisor.tick()
        if exits:
            self.invalidated_at = now
            self.monitor.quick.set()
            if self.announced_ready:
                self.supervisor.say(f"not ready: {', '.join(e.name for e in exits)} exited")
                self._not_ready(now)
        latest = self.monitor.latest()
        if latest is None:
            return
        readiness, checked_at = latest
        recent = checked_at > self.invalidated_at  # started after the last child exit
        if recent and self.supervisor.all_running():
            if readiness.ready and not self.announced_ready:
                self._say_ready()
            elif not readiness.ready and self.announced_ready:
                self.supervisor.say(f"not ready: missing {'; '.join(readiness.missing)}")
                self._not_ready(now)
        if recent and (readiness.worker_heard or not readiness.prefect_up):
            self.worker_excused_at = now
        if (
            not self.announced_ready
            and now - max(self.not_ready_since, self.last_warning) >= self.settings.ready_warning_seconds
        ):
            self.last_warning = now
            waited = now - self.not_ready_since
            self.supervisor.say(
                f"still not ready after {waited:.0f} s; missing: {self._missing_now(readiness)}"
            )
        self._watch_worker(now)

    def _watch_worker(self, now: float) -> None:
        """A worker that lost the server mid-start can hang without exiting."""
        stall = self.settings.worker_stall_seconds
        if self.supervisor.uptime("worker") > stall and now - self.worker_excused_at > stall:
            self.supervisor.restart(
                "worker", f"has sent no heartbeat for {stall:g} s while the Prefect server answers"
            )
            self.worker_excused_at = now

    def _not_ready(self, now: float) -> None:
        self.announced_ready = False
        self.not_ready_since = self.last_warning = now

    def _missing_now(self, readiness: Readiness) -> str:
        down = [name for name in ("prefect", "worker", "shim") if not self.supervisor.running(name)]
        parts = [f"{name} (not running)" for name in down] + readiness.missing
        return "; ".join(parts) or "a fresh check"

    def _say_ready(self) -> None:
        self.announced_ready = True
        port = self.settings.prefect_port
        self.supervisor.say(
            f"ready: UI http://{HOST}:{port}  Event API (shim) {self.shim_url}  "
            f"{len(self.probe.deployment_names)} deployments, worker {WORKER_NAME!r} of pool {WORK_POOL!r}"
            f"  —  export PREFECT_API_URL={self.api_url}"
        )


def main() -> int:
    try:
        stack = LocalStack(StackSettings())
    except DatabaseUnusable as exc:
        print(f"stack: cannot start: {exc}", file=sys.stderr)
        return exc.exit_code
    signal.signal(signal.SIGINT, stack.on_signal)
    signal.signal(signal.SIGTERM, stack.on_signal)
    return stack.run()


if __name__ == "__main__":
    sys.exit(main())
