"""P3 on the production topology, next to the local stack; and the Prefect server's CPU with idle
workers (P7).

    .venv/bin/python -m bench.production [--runs 10] [--idle 1,4,8] [--idle-seconds 30]

Production is started with the README's own steps (scripts/production.py): the project installed
into a fresh virtualenv, the Prefect database created, the server on PostgreSQL (fsync on), setup
--deploy, two workers with homes of their own, two shims in key mode sharing one outbox. The local
stack is what `make up` runs by default: a Prefect server on SQLite, its worker, one shim. Both
keep SyncJob on the same durable PostgreSQL (the production shims' outbox in a schema of its own).

P3: the admin's send (a PENDING row, then `sync/sync-president` with its jobId, alternately to
each shim) → the no-op step's process started, one run at a time, the two sides alternating
within each round; with the breakdown ack → created (dispatch) → Pending (poll) → Running
(process start) → the step's task Running (body) → the script's process (script).

P7: the Prefect server's CPU (its whole process tree, % of one core, sampled over
`--idle-seconds`) with no worker, then 1, 4 and 8 idle production workers (each its fork server
and reconciler): what idle machines cost the server.
"""

from __future__ import annotations

import argparse
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import sqlalchemy as sa

from bench.harness import (
    KEY,
    NOOP_SCRIPT,
    WORK,
    WORKER_NAME,
    Figure,
    Series,
    admin_send,
    answers,
    base_env,
    durable_postgres,
    finished,
    free_port,
    machine,
    prefect_server,
    print_table,
    run_by_tag,
    shim,
    spawn,
    stamp,
    started_at,
    states,
    stop,
    tree_cpu_seconds,
    wait_quiet,
    wait_until,
    worker_command,
    worker_online,
)
from scripts.prefect_settings import worker_environment
from scripts.production import one_host_values, step

SCRIPT = "sync-president"
PARTS = ("dispatch", "poll", "process start", "body", "script")


@dataclass
class Side:
    name: str
    api: str
    shims: list[str]
    starts: Path
    parts: dict[str, Series] = field(default_factory=lambda: {p: Series() for p in PARTS})
    sends: int = 0


def _run_step(name: str, values: dict[str, str], cwd: Path, extra: dict[str, str] | None = None) -> None:
    done = step(name).run(values, cwd, extra)
    if done and done[-1].returncode != 0:
        raise RuntimeError(f"{name}: {done[-1].args} exited {done[-1].returncode}: {done[-1].stderr[-3000:]}")


def _start_step(
    name: str, values: dict[str, str], cwd: Path, log: Path, extra: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    return step(name).start(values, cwd, log, extra)


@dataclass
class Production:
    values: dict[str, str]
    api: str
    cwd: Path
    server: subprocess.Popen[bytes]
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    starts: Path = field(default_factory=Path)
    started: dict[str, float] = field(default_factory=dict)  # worker name -> time.time() of its start

    def online(self, names: list[str]) -> bool:
        return all(worker_online(self.api, name, self.started[name]) for name in names)

    def start_worker(self, name: str) -> subprocess.Popen[bytes]:
        self.started[name] = time.time()
        values = self.values | {
            "worker_name": name,
            "home": str(self.cwd / name),
            "health_port": str(free_port()),
        }
        extra = {
            "POLIGRAPH_SCRIPT_COMMAND": f"{self.values['venv']}/bin/python -I -S {NOOP_SCRIPT} {{script}}",
            "BENCH_STARTS": str(self.starts),
        }
        proc = _start_step("worker", values, self.cwd, self.cwd / f"{name}.log", extra)
        self.workers.append(proc)
        return proc


@contextmanager
def production(pg_url: str) -> Iterator[Production]:
    """The README's steps, from the install on."""
    work = WORK / f"production-{uuid.uuid4().hex[:6]}"
    (work / "app").mkdir(parents=True)
    starts = work / "starts"
    starts.mkdir()
    values = one_host_values(work, pg_url, "prefect_production", free_port(), KEY)
    print("  production: installing into a fresh virtualenv", flush=True)
    _run_step("install", values, work)
    _run_step("prefect-database", values, work)
    server = _start_step("prefect-server", values, work, work / "prefect-server.log")
    api = f"http://127.0.0.1:{values['prefect_port']}/api"
    stack = Production(values, api, work, server, starts=starts)
    try:
        wait_until(lambda: answers(f"{api}/health"), 180, "the production Prefect server", interval=0.5)
        _run_step("setup", values, work)
        yield stack
    finally:
        for proc in stack.workers:
            stop(proc, 60)
        stop(server, 60)


@contextmanager
def production_shims(stack: Production, count: int = 2) -> Iterator[list[str]]:
    procs, urls = [], []
    try:
        for _ in range(count):
            port = free_port()
            values = stack.values | {"shim_port": str(port)}
            extra = {"POLIGRAPH_SHIM_SCHEMA": "poligraph_jobs_production"}  # not the local stack's outbox
            procs.append(_start_step("shim", values, stack.cwd, stack.cwd / f"shim-{port}.log", extra))
            urls.append(f"http://127.0.0.1:{port}")
        for url in urls:
            wait_until(lambda u=url: answers(f"{u}/health"), 60, "a production shim")
        yield urls
    finally:
        for proc in procs:
            stop(proc)


@contextmanager
def local_stack(pg_url: str) -> Iterator[Side]:
    """What `make up` runs: Prefect on SQLite with the stack's settings, its worker, the shim."""
    home = WORK / f"local-{uuid.uuid4().hex[:6]}"
    env = base_env(home)
    with prefect_server(home) as server:
        env = worker_environment(env) | {
            "PREFECT_API_URL": server.url,
            "DATABASE_URL": pg_url,
            "POLIGRAPH_EVENT_KEYS": KEY,
        }
        since = time.time()
        worker = spawn(worker_command(), env | {"POLIGRAPH_WORKER_DEPLOY": "true"}, home / "worker.log")
        try:
            wait_until(lambda: worker_online(server.url, WORKER_NAME, since), 180, "the local worker", 0.5)
            with shim(env) as (url, _):
                yield Side("local stack", server.url, [url], Path(env["BENCH_STARTS"]))
        finally:
            stop(worker, 60)


def send_and_time(side: Side, engine: sa.Engine, client: httpx.Client) -> float:
    """One admin send through one of the side's shims; fills the breakdown, returns ack → script."""
    before = set(side.starts.glob("*.start"))
    url = side.shims[side.sends % len(side.shims)]
    side.sends += 1
    event_id, t0 = admin_send(engine, client, url, SCRIPT)
    found = wait_until(
        lambda: run_by_tag(side.api, f"inngest-event:{event_id}"), 60, "the run", interval=0.02
    )
    started = wait_until(lambda: started_at(side.starts, SCRIPT, before), 60, "the script", interval=0.01)
    wait_until(lambda: finished(side.api, found["id"]), 120, "the run to end")
    seen = states(side.api, found["id"])
    task = _first_task_start(side.api, found["id"])
    created = stamp(found["created"])
    side.parts["dispatch"].add(created - t0)
    side.parts["poll"].add(seen["Pending"] - created)
    side.parts["process start"].add(seen["Running"] - seen["Pending"])
    side.parts["body"].add(task - seen["Running"])
    side.parts["script"].add(started - task)
    return started - t0


def _first_task_start(api: str, flow_run_id: str) -> float:
    body = {"flow_runs": {"id": {"any_": [flow_run_id]}}, "sort": "EXPECTED_START_TIME_ASC", "limit": 1}
    (task,) = httpx.post(f"{api}/task_runs/filter", json=body, timeout=10).json()
    return stamp(task["start_time"])


def p3_figure(runs: int, pg_url: str, stack: Production, shims: list[str]) -> Figure:
    figure = Figure(
        key="P3",
        title="event → script started, production topology",
        unit="s",
        baseline_name="the local stack (make up)",
        goal="p50 ≤ 1.0 s, p90 ≤ 1.5 s",
    )
    figure.passes = lambda f: f.ours.median <= 1.0 and f.ours.quantile(0.9) <= 1.5
    prod = Side("production", stack.api, shims, stack.starts)
    engine = sa.create_engine(pg_url)
    with local_stack(pg_url) as local, httpx.Client(timeout=30) as client:
        sides = [local, prod]
        for i in range(runs + 1):  # the first round warms both up
            for side in sides[i % 2 :] + sides[: i % 2]:
                latency = send_and_time(side, engine, client)
                if i == 0:
                    for series in side.parts.values():
                        series.values.clear()
                    continue
                (figure.baseline if side is local else figure.ours).add(latency)
                print(f"  P3 run {i} {side.name}: script started {latency:.2f} s after the ack", flush=True)
        for side in sides:
            parts = ", ".join(f"{name} {s.median:.2f}" for name, s in side.parts.items())
            series = figure.baseline if side is local else figure.ours
            figure.notes.append(f"{side.name}: p90 {series.quantile(0.9):.2f} s; medians: {parts} s")
    engine.dispose()
    return figure


def server_cpu(pid: int, seconds: float) -> Series:
    """% of one core the server's process tree used, in 5 s samples over `seconds`."""
    samples = Series()
    for _ in range(max(1, int(seconds / 5))):
        before, at = tree_cpu_seconds(pid), time.monotonic()
        time.sleep(5)  # a sampling period, not a synchronisation
        samples.add(100 * (tree_cpu_seconds(pid) - before) / (time.monotonic() - at))
    return samples


def idle_figures(stack: Production, counts: list[int], seconds: float) -> list[Figure]:
    for proc in stack.workers:
        stop(proc, 60)
    stack.workers.clear()
    wait_quiet(stack.server.pid)
    alone = server_cpu(stack.server.pid, seconds)
    figures = []
    for count in counts:
        while len(stack.workers) < count:
            stack.start_worker(f"idle-{len(stack.workers) + 1}")
        names = [f"idle-{i + 1}" for i in range(count)]
        wait_until(lambda n=names: stack.online(n), 300, f"{count} workers online", interval=1)
        wait_quiet(stack.server.pid, below=0.5)  # the workers' start-up calls are over
        figure = Figure(
            key="P7",
            title=f"Prefect server CPU with {count} idle worker{'s' if count > 1 else ''}",
            unit="% of a core",
            baseline_name="no worker",
            goal="≤ 5 % a worker",
            fmt="{:.1f}",
            baseline=alone,
            ratio_of=lambda f: f.ours.median - f.baseline.median,
        )
        figure.ours = server_cpu(stack.server.pid, seconds)
        figure.passes = lambda f, c=count: f.ours.median - f.baseline.median <= 5 * c
        figure.notes.append("ratio column: what the workers add, in % of a core")
        figures.append(figure)
        print(f"  {figure.line()}", flush=True)
    return figures


def production_figures(runs: int, idle: list[int], idle_seconds: float) -> list[Figure]:
    figures: list[Figure] = []
    with durable_postgres() as pg_url, production(pg_url) as stack:
        for name in ("worker-1", "worker-2"):
            stack.start_worker(name)
        wait_until(lambda: stack.online(["worker-1", "worker-2"]), 180, "the production workers", interval=1)
        if runs:
            with production_shims(stack) as shims:
                figures.append(p3_figure(runs, pg_url, stack, shims))
        if idle:
            figures += idle_figures(stack, idle, idle_seconds)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--idle", default="1,4,8", help="idle worker counts for P7 (empty: none)")
    parser.add_argument("--idle-seconds", type=float, default=30)
    args = parser.parse_args()
    print(f"machine: {machine()}")
    counts = [int(n) for n in args.idle.split(",") if n.strip()]
    print_table(production_figures(args.runs, counts, args.idle_seconds))


if __name__ == "__main__":
    main()
