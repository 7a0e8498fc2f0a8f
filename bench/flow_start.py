"""P2 (ack → run created), P3 (event → script started), P4 (a no-op step, Running → Completed)
and P6 (idle RSS), on the local stack.

    .venv/bin/python -m bench.flow_start [--runs 10]

Starts a Prefect server with the local stack's settings, the local stack's worker (every catalog
deployment; SyncJob on a durable PostgreSQL), the shim in key mode, and `bench.bare_flow` (a bare
Prefect flow running the same no-op subprocess, served by Prefect's own `serve`). Runs alternate, one at a
time, each after the previous ended:

* ours: the admin's send (a PENDING SyncJob row, then `sync/sync-president` with its jobId) to
  the shim; the script is the no-op step (`bench/noop_script.py`, which notes when it starts).
* bare: `create_flow_run_from_deployment` of the bare flow.

P2 is the time from the shim's 200 to the run's `created` stamp (ours) against the duration of
the bare side's create call (one REST request); P3 the time from the shim's 200 (ours) or the
create call (bare) to the step's process starting; P4 the flow run's Running → Completed (state
timestamps). P6 samples the resident memory of the shim and of the worker, idle, once the stack is
up and again after the runs, next to a bare FastAPI app (`bench.bare_app`) and the bare flow's serve.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import psutil
import sqlalchemy as sa

from bench.harness import (
    KEY,
    REPO,
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
    rss_mb,
    run_by_tag,
    shim,
    spawn,
    stamp,
    started_at,
    states,
    stop,
    wait_until,
    worker_command,
    worker_online,
)
from scripts.prefect_settings import worker_environment

SCRIPT = "sync-president"
IDLE_SAMPLES = 5  # RSS samples per idle moment, a second apart
CHILD_MARKERS = {"fork server": "multiprocessing.forkserver", "reconciler": "scripts.reconcile"}


async def deployment_ids(api_url: str, names: list[str]) -> dict[str, str] | None:
    async with httpx.AsyncClient(base_url=api_url, timeout=10) as client:
        ids = {}
        for name in names:
            reply = await client.get(f"/deployments/name/{name}")
            if reply.status_code != 200:
                return None
            ids[name] = reply.json()["id"]
        return ids


def create_bare_run(client: httpx.Client, deployment_url: str) -> dict[str, Any]:
    """One create call, sent again after a 503 (Prefect's SQLite busy) as any client would."""
    while True:
        reply = client.post(f"{deployment_url}/create_flow_run", json={})
        if reply.status_code != 503:
            reply.raise_for_status()
            return dict(reply.json())
        time.sleep(0.1)


def idle_rss(
    figures: dict[str, Figure], ours: dict[str, int], bare: dict[str, int], children: dict[str, Series]
) -> None:
    """IDLE_SAMPLES samples of each process's RSS, interleaved, a second apart; and of the
    worker's fork server (whose pages each run shares) and reconciler, processes of their own."""
    for _ in range(IDLE_SAMPLES):
        time.sleep(1)
        for name, figure in figures.items():
            figure.ours.add(rss_mb(ours[name]))
            figure.baseline.add(rss_mb(bare[name]))
        for child in psutil.Process(ours["worker"]).children():
            command = " ".join(child.cmdline())
            for name, marker in (
                ("fork server", "multiprocessing.forkserver"),
                ("reconciler", "scripts.reconcile"),
            ):
                if marker in command:
                    children[name].add(rss_mb(child.pid))


def flow_start_figures(runs: int) -> list[Figure]:
    p2 = Figure(
        key="P2",
        title="event acknowledged → flow run created",
        unit="s",
        baseline_name="one direct create-flow-run request",
        goal="≤ 1.5×",
    )
    p2.passes = lambda f: f.ratio <= 1.5
    p6 = {
        "shim": Figure(
            key="P6",
            title="idle RSS of the shim",
            unit="MB",
            baseline_name="bare FastAPI app",
            goal="≤ 100 MB",
            fmt="{:.0f}",
        ),
        "worker": Figure(
            key="P6",
            title="idle RSS of the worker (every deployment)",
            unit="MB",
            baseline_name="bare flow's serve",
            goal="≤ 150 MB",
            fmt="{:.0f}",
        ),
    }
    p6["shim"].passes = lambda f: max(f.ours.values) <= 100
    p6["worker"].passes = lambda f: max(f.ours.values) <= 150
    p3 = Figure(
        key="P3",
        title="event → script started",
        unit="s",
        baseline_name="bare served flow, create → subprocess started",
        goal="p50 ≤ 1.5 s",
        ratio_of=None,
    )
    p3.passes = lambda f: f.ours.median <= 1.5
    p4 = Figure(
        key="P4",
        title="no-op step, Running → Completed",
        unit="s",
        baseline_name="bare flow running one subprocess",
        goal="≤ 1.5× and ≤ 0.1 s over bare",
    )
    p4.passes = lambda f: f.ratio <= 1.5 and f.ours.median - f.baseline.median <= 0.1
    parts: dict[str, Series] = {k: Series() for k in ("dispatch", "pickup", "process", "flow body")}
    worker_children = {"fork server": Series(), "reconciler": Series()}
    task_floor = Series()  # the bare flow with its subprocess in one Prefect task
    home = WORK / f"start-{uuid.uuid4().hex[:6]}"
    env = base_env(home)
    starts = Path(env["BENCH_STARTS"])
    with durable_postgres() as pg_url, prefect_server(home) as server:
        env = worker_environment(env) | {
            "PREFECT_API_URL": server.url,
            "DATABASE_URL": pg_url,
            "POLIGRAPH_EVENT_KEYS": KEY,
        }
        since = time.time()
        worker = spawn(worker_command(), env | {"POLIGRAPH_WORKER_DEPLOY": "true"}, home / "worker.log")
        # Prefect's runner at its quickest poll (whole seconds only), as the stack's serve had it
        bare_env = env | {"PREFECT_RUNNER_POLL_FREQUENCY": "1"}
        bare = spawn([sys.executable, "-m", "bench.bare_flow"], bare_env, home / "bare.log", REPO)
        bare_port = free_port()
        bare_app = spawn(
            [sys.executable, "-m", "bench.bare_app", str(bare_port)], env, home / "bare_app.log", REPO
        )
        try:
            ids = wait_until(
                lambda: asyncio.run(
                    deployment_ids(
                        server.url, [f"sync-script/{SCRIPT}", "bare-step/bare", "bare-task-step/bare"]
                    )
                ),
                180,
                "the deployments",
                interval=0.5,
            )
            wait_until(lambda: worker_online(server.url, WORKER_NAME, since), 120, "the worker", interval=0.5)
            wait_until(lambda: answers(f"http://127.0.0.1:{bare_port}/health"), 60, "the bare app")
            engine = sa.create_engine(pg_url)
            with shim(env) as (shim_url, shim_proc), httpx.Client(timeout=30) as client:
                ours_pids = {"shim": shim_proc.pid, "worker": worker.pid}
                bare_pids = {"shim": bare_app.pid, "worker": bare.pid}
                idle_rss(p6, ours_pids, bare_pids, worker_children)
                sides = ["ours", "bare", "task"]
                for i in range(runs + 1):  # the first round warms up (imports cached, engines made)
                    for side in sides[i % 3 :] + sides[: i % 3]:
                        before = set(starts.glob("*.start"))
                        if side == "ours":
                            event_id, t0 = admin_send(engine, client, shim_url, SCRIPT)
                            run = wait_until(
                                lambda e=event_id: run_by_tag(server.url, f"inngest-event:{e}"),
                                60,
                                "the run",
                                interval=0.02,
                            )
                        else:
                            deployment = ids["bare-step/bare" if side == "bare" else "bare-task-step/bare"]
                            t0 = time.time()
                            run = create_bare_run(client, f"{server.url}/deployments/{deployment}")
                            create_call = time.time() - t0
                        name = {"ours": SCRIPT, "bare": "bare", "task": "bare-task"}[side]
                        script_start = wait_until(
                            lambda n=name, b=before: started_at(starts, n, b), 60, "the step", interval=0.02
                        )
                        wait_until(
                            lambda r=run["id"]: finished(server.url, r), 120, "the run to end", interval=0.1
                        )
                        seen = states(server.url, run["id"])
                        if i == 0:
                            continue
                        assert "Completed" in seen, f"{side} run ended {seen}"
                        start_latency = script_start - t0
                        step = seen["Completed"] - seen["Running"]
                        if side == "task":
                            task_floor.add(step)
                            print(f"  P4 run {i} task: Running → Completed {step:.2f} s", flush=True)
                            continue
                        (p3.ours if side == "ours" else p3.baseline).add(start_latency)
                        (p4.ours if side == "ours" else p4.baseline).add(step)
                        if side == "bare":
                            p2.baseline.add(create_call)
                        if side == "ours":
                            created = stamp(run["created"])
                            p2.ours.add(created - t0)
                            parts["dispatch"].add(created - t0)
                            parts["pickup"].add(seen["Pending"] - created)
                            parts["process"].add(seen["Running"] - seen["Pending"])
                            parts["flow body"].add(script_start - seen["Running"])
                        print(
                            f"  P3/P4 run {i} {side}: script started {start_latency:.2f} s after the "
                            f"{'ack' if side == 'ours' else 'create'}; Running → Completed {step:.2f} s",
                            flush=True,
                        )
                idle_rss(p6, ours_pids, bare_pids, worker_children)
        finally:
            stop(worker, 60)
            stop(bare, 60)
            stop(bare_app)
    p3.ratio_of = lambda f: f.ours.median / f.baseline.median
    p3.notes.append(
        "ours, medians: "
        + ", ".join(f"{name} {series.median:.2f} s" for name, series in parts.items())
        + " (ack → created → Pending → Running → script)"
    )
    p4.notes.append(
        f"reference: the bare flow with its subprocess in one plain Prefect task (no slot, no SyncJob): "
        f"{task_floor.summary()} s, {task_floor.median / p4.baseline.median:.1f}× bare"
    )
    p6["shim"].notes.append("sampled idle after start-up and again after the runs, 5 times each")
    p6["worker"].notes.append(
        "processes of its own: "
        + ", ".join(f"{name} {series.summary('{:.0f}')} MB" for name, series in worker_children.items())
    )
    return [p2, p3, p4, p6["shim"], p6["worker"]]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    print(f"machine: {machine()}")
    figures = flow_start_figures(args.runs)
    print(f"machine at the end: {machine()}")
    print_table(figures)


if __name__ == "__main__":
    main()
