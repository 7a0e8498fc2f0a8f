"""What the benchmarks start and how they report: processes in temporary directories (nothing is
written into the repository), a durable PostgreSQL, a Prefect server with the local stack's
settings, the shim, the worker; interleaved rounds summarised as min / median / max.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx
import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))  # tests/support: the PostgreSQL binaries and their user

from scripts.prefect_settings import server_environment  # noqa: E402
from support.pg_cluster import PostgresCluster, apply_sql  # noqa: E402
from support.polling import wait_for  # noqa: E402
from support.ports import free_port  # noqa: E402,F401 (the benchmarks' ports)
from support.prefect_server import server_command  # noqa: E402
from support.prefect_server import worker_command as support_worker_command  # noqa: E402
from support.processes import stop_process_group  # noqa: E402

T = TypeVar("T")
WORK = Path(tempfile.mkdtemp(prefix="poligraph-bench-"))
KEY = "bench-event-key"
NOOP_SCRIPT = REPO / "bench" / "noop_script.py"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{cpu}, {psutil.cpu_count()} CPUs, {psutil.virtual_memory().total // 2**30} GiB, "
        f"Python {platform.python_version()}, load average {psutil.getloadavg()[0]:.1f}"
    )


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    return wait_for(predicate, timeout, interval, what)


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


# --- figures -----------------------------------------------------------------------------------
@dataclass
class Series:
    values: list[float] = field(default_factory=list)

    def add(self, value: float) -> None:
        self.values.append(value)

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    def quantile(self, q: float) -> float:
        ordered = sorted(self.values)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    def summary(self, fmt: str = "{:.3f}") -> str:
        if not self.values:
            return "-"
        return " / ".join(fmt.format(v) for v in (min(self.values), self.median, max(self.values)))


@dataclass
class Figure:
    key: str
    title: str
    unit: str
    baseline_name: str
    goal: str
    baseline: Series = field(default_factory=Series)
    ours: Series = field(default_factory=Series)
    fmt: str = "{:.3f}"
    higher_is_better: bool = False
    ratio_of: Callable[[Figure], float] | None = None
    passes: Callable[[Figure], bool] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        if self.ratio_of:
            return self.ratio_of(self)
        return self.ours.median / self.baseline.median if self.baseline.values else float("nan")

    @property
    def met(self) -> bool:
        return bool(self.passes and self.passes(self))

    def line(self) -> str:
        return (
            f"{self.key} {self.title} ({self.unit}): baseline [{self.baseline_name}] "
            f"{self.baseline.summary(self.fmt)}; ours {self.ours.summary(self.fmt)}; "
            f"ratio {self.ratio:.2f}; goal {self.goal}: {'MET' if self.met else 'NOT MET'}"
        )


def print_table(figures: list[Figure]) -> None:
    print("\n| Figure | Baseline (min / median / max) | Ours (min / median / max) | Ratio | Goal | |")
    print("|---|---|---|---|---|---|")
    for f in figures:
        print(
            f"| {f.key} {f.title} ({f.unit}) | {f.baseline_name}: {f.baseline.summary(f.fmt)} "
            f"| {f.ours.summary(f.fmt)} | {f.ratio:.2f} | {f.goal} | {'met' if f.met else '**not met**'} |"
        )
        for note in f.notes:
            print(f"|   ↳ {note} | | | | | |")


# --- processes ---------------------------------------------------------------------------------
def spawn(args: list[str], env: dict[str, str], log: Path, cwd: Path = REPO) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        args,
        env=env,
        cwd=cwd,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def stop(proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    if proc.poll() is None:
        stop_process_group(proc, timeout)


def base_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "POLIGRAPH_"))}
    env.pop("DATABASE_URL", None)
    env.update(
        POLIGRAPH_HOME=str(home),
        PREFECT_HOME=str(home / "prefect"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="1",
        POLIGRAPH_SCRIPT_COMMAND=f"{{python}} -I -S {NOOP_SCRIPT} {{script}}",
        BENCH_STARTS=str(home / "starts"),
        POLIGRAPH_PREFECT_DATABASE_URL="sqlite",
    )
    (home / "prefect").mkdir(parents=True, exist_ok=True)
    (home / "starts").mkdir(parents=True, exist_ok=True)
    return env


@contextmanager
def durable_postgres() -> Iterator[str]:
    """A throwaway PostgreSQL as production runs it: fsync and synchronous commits on (the test
    helper turns them off for speed). Yields a SQLAlchemy URL with the SyncJob table."""
    cluster = PostgresCluster(durable=True)
    try:
        cluster.start()
        cluster.create_database()
        apply_sql(cluster.url, REPO / "tests" / "sql" / "syncjob.sql")
        yield cluster.url
    finally:
        cluster.remove()


def create_database(pg_url: str, name: str) -> str:
    """A new database on the bench's PostgreSQL, as an asyncpg URL for Prefect's server."""
    import psycopg

    admin = pg_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"'.encode())
    return admin.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://") + f"/{name}"


@dataclass
class BenchPrefectServer:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path


@contextmanager
def prefect_server(
    home: Path, database_url: str | None = None, extra: dict[str, str] | None = None
) -> Iterator[BenchPrefectServer]:
    """`prefect server start` with the local stack's server environment (scripts/prefect_settings)."""
    port = free_port()
    env = base_env(home)
    if database_url:
        env["POLIGRAPH_PREFECT_DATABASE_URL"] = database_url
    env = server_environment(env | (extra or {}))
    log = home / f"prefect-{port}.log"
    proc = spawn(
        server_command(port),
        env,
        log,
    )
    url = f"http://127.0.0.1:{port}/api"
    try:
        wait_until(
            lambda: proc.poll() is None and answers(f"{url}/health") or _dead(proc, log), 120, "Prefect"
        )
        yield BenchPrefectServer(url, proc, log)
    finally:
        stop(proc, 30)


def wait_quiet(pid: int, below: float = 0.15, quiet_samples: int = 3, timeout: float = 180) -> float:
    """Seconds until the process tree of `pid` used under `below` of a core for `quiet_samples`
    half-seconds in a row (a Prefect server still digesting the previous round's runs and
    events would slow whichever side comes next). Gives up after `timeout`."""
    started = time.monotonic()
    quiet = 0
    while quiet < quiet_samples and time.monotonic() - started < timeout:
        before = tree_cpu_seconds(pid)
        time.sleep(0.5)  # a sampling period, not a synchronisation
        quiet = quiet + 1 if (tree_cpu_seconds(pid) - before) / 0.5 < below else 0
    return time.monotonic() - started


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) used so far by `pid` and its live descendants."""
    root = psutil.Process(pid)
    total = 0.0
    for proc in [root, *root.children(recursive=True)]:
        try:
            times = proc.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            continue
    return total


def _dead(proc: subprocess.Popen[bytes], log: Path) -> bool:
    if proc.poll() is not None:
        raise RuntimeError(f"process exited {proc.returncode}: {log.read_text()[-3000:]}")
    return False


@contextmanager
def shim(env: dict[str, str], name: str = "shim") -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = free_port()
    log = Path(env["POLIGRAPH_HOME"]) / f"{name}-{port}.log"
    proc = spawn([sys.executable, "-m", "shim"], {**env, "POLIGRAPH_SHIM_PORT": str(port)}, log)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: answers(f"{url}/health") or _dead(proc, log), 60, "the shim")
        yield url, proc
    finally:
        stop(proc)


WORKER_NAME = "bench"


def worker_command(name: str = WORKER_NAME) -> list[str]:
    """The local stack's (and a production machine's) worker of the poligraph pool."""
    return support_worker_command(name)


def worker_online(api_url: str, name: str, since: float) -> bool:
    """The worker `name` sent its pool a heartbeat after `since` (time.time())."""
    reply = httpx.post(f"{api_url}/work_pools/poligraph/workers/filter", json={}, timeout=10)
    if reply.status_code != 200:
        return False
    for worker in reply.json():
        beat = worker.get("last_heartbeat_time")
        if worker["name"] == name and beat and stamp(beat) >= since:
            return True
    return False


# --- runs, read back through Prefect's REST API and the no-op script's start files ---------------
FINAL_TYPES = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")


def stamp(value: str) -> float:
    """One of Prefect's ISO timestamps as epoch seconds."""
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def read_run(api_url: str, flow_run_id: str) -> dict[str, Any]:
    reply = httpx.get(f"{api_url}/flow_runs/{flow_run_id}", timeout=10)
    reply.raise_for_status()
    return dict(reply.json())


def finished(api_url: str, flow_run_id: str) -> dict[str, Any] | None:
    """The run once it is in a final state, else None."""
    run = read_run(api_url, flow_run_id)
    return run if (run.get("state") or {}).get("type") in FINAL_TYPES else None


def run_by_tag(api_url: str, tag: str) -> dict[str, Any] | None:
    body = {"flow_runs": {"tags": {"all_": [tag]}}, "limit": 1}
    reply = httpx.post(f"{api_url}/flow_runs/filter", json=body, timeout=10)
    reply.raise_for_status()
    found = reply.json()
    return found[0] if found else None


def states(api_url: str, flow_run_id: str) -> dict[str, float]:
    """The first timestamp of each state name of a run, as epoch seconds."""
    reply = httpx.get(f"{api_url}/flow_run_states/", params={"flow_run_id": flow_run_id}, timeout=10)
    reply.raise_for_status()
    found: dict[str, float] = {}
    for state in reply.json():
        at = stamp(state["timestamp"])
        found[state["name"]] = min(found.get(state["name"], at), at)
    return found


def started_at(starts: Path, name: str, before: set[Path]) -> float | None:
    """When the no-op script `name` started (the time it wrote), once a start file not in `before`
    is there."""
    new = [p for p in starts.glob(f"{name}-*.start") if p not in before]
    text = new[0].read_text() if new else ""
    return float(text) if text.strip() else None  # empty: the script is writing it right now


def admin_send(engine: Any, client: httpx.Client, shim_url: str, script: str) -> tuple[str, float]:
    """What the admin does: a PENDING SyncJob row, then `sync/<script>` with its jobId to the
    shim. Returns the event id and the time of the 200."""
    import uuid

    import sqlalchemy as sa

    job_id = f"cbench{uuid.uuid4().hex[:19]}"
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                'INSERT INTO "SyncJob" (id, script, status, progress, "createdAt") '
                "VALUES (:id, :script, 'PENDING', 0, now())"
            ),
            {"id": job_id, "script": script},
        )
    body = [{"name": f"sync/{script}", "data": {"jobId": job_id}}]
    reply = client.post(f"{shim_url}/e/{KEY}", content=json.dumps(body))
    acknowledged = time.time()
    return reply.json()["ids"][0], acknowledged


def count_rows(pg_url: str, query: str) -> int:
    """`SELECT count(*) …` on a connection of its own."""
    import sqlalchemy as sa

    engine = sa.create_engine(pg_url)
    with engine.connect() as conn:
        count = conn.execute(sa.text(query)).scalar_one()
    engine.dispose()
    return int(count)


def rss_mb(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20
