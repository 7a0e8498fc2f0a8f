"""P5: a burst of events → flow runs, drained by the shim ÷ the raw create rate of the same server.

    .venv/bin/python -m bench.burst [--events 10000] [--rounds 2] [--prefect-db sqlite|postgres|both]

Each database kind gets one fresh Prefect server (the local stack's settings) for all its rounds;
the two sides alternate which goes first. The baseline creates runs directly with Prefect's
async client, one `create_flow_run_from_deployment` per run (a 503 that outlives the client's
own retries is sent again), at the better of 1 and 4 requests at once, `--raw-sample` runs each:
the rate of a small database, which overstates the raw rate of a whole burst (creates slow down
as the database grows), so the ratio errs against the shim. Ours sends the burst to a
`python -m shim` (key mode, outbox on a durable PostgreSQL), 50 events per request, and counts
until the outbox has no pending event. Both spread the runs over the same five deployments,
registered but not served (the runs stay Scheduled, as they would behind a busy serve).
Both sides first warm the server up (100 runs each, not counted). Each side starts on a quiet
server (its CPU under 15% of a core for 1.5 s): after a round, the server goes on digesting its
runs and events for a while, which slowed the next side 2-4×.
`POLIGRAPH_SHIM_*` variables in the environment reach the shim under test (to try its settings).
Afterwards every event must have exactly one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

from bench.harness import (
    KEY,
    WORK,
    Figure,
    Series,
    base_env,
    count_rows,
    create_database,
    durable_postgres,
    machine,
    prefect_server,
    print_table,
    shim,
    wait_quiet,
    wait_until,
)

SCRIPTS = ["sync-president", "sync-senat", "sync-assemblee", "sync-gouvernement", "sync-press"]
EVENTS_PER_REQUEST = 50
WARM_UP_EVENTS = 100  # each side, before the rounds


async def register(api_url: str) -> dict[str, str]:
    """The burst's deployments (catalog names, so that the shim routes to them), not served."""
    from prefect.client.orchestration import PrefectClient

    async with PrefectClient(api_url) as client:
        flow_id = await client.create_flow_from_name("sync-script")
        ids = {}
        for script in SCRIPTS:
            ids[script] = str(
                await client.create_deployment(flow_id=flow_id, name=script, parameters={"script": script})
            )
        return ids


async def raw_creates(
    api_url: str, deployments: dict[str, str], count: int, concurrency: int, tag: str
) -> float:
    """Seconds for `count` runs created one request each, `concurrency` at a time."""
    from prefect.client.orchestration import PrefectClient
    from prefect.exceptions import PrefectHTTPStatusError

    slots = asyncio.Semaphore(concurrency)
    names = list(deployments)
    async with PrefectClient(api_url) as client:

        async def one(i: int) -> None:
            async with slots:
                while True:  # as any client must: a 503 that outlived the client's retries, again
                    try:
                        await client.create_flow_run_from_deployment(
                            uuid.UUID(deployments[names[i % len(names)]]),
                            parameters={"limit": i + 1},
                            idempotency_key=f"{tag}-{i}",
                            tags=[tag],
                        )
                        return
                    except PrefectHTTPStatusError as exc:
                        if exc.response.status_code != 503:
                            raise

        started = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(count)))
        return time.perf_counter() - started


async def count_runs(api_url: str, tag: str) -> int:
    async with httpx.AsyncClient(base_url=api_url, timeout=60) as client:
        reply = await client.post("/flow_runs/count", json={"flow_runs": {"tags": {"all_": [tag]}}})
        reply.raise_for_status()
        return int(reply.json())


def send_burst(shim_url: str, count: int) -> float:
    """Send `count` events in requests of EVENTS_PER_REQUEST, 4 at a time; seconds to the last 200."""
    bodies = [
        json.dumps(
            [
                {"name": f"sync/{SCRIPTS[(i + j) % len(SCRIPTS)]}", "data": {"limit": i + j + 1}}
                for j in range(min(EVENTS_PER_REQUEST, count - i))
            ]
        ).encode()
        for i in range(0, count, EVENTS_PER_REQUEST)
    ]

    async def send_all() -> None:
        slots = asyncio.Semaphore(4)
        async with httpx.AsyncClient(timeout=120) as client:

            async def one(body: bytes) -> None:
                async with slots:
                    while True:
                        reply = await client.post(f"{shim_url}/e/{KEY}", content=body)
                        if reply.status_code == 200:
                            return
                        await asyncio.sleep(0.1)  # 503: the outbox was busy; send again as the SDKs do

            await asyncio.gather(*(one(body) for body in bodies))

    started = time.perf_counter()
    asyncio.run(send_all())
    return time.perf_counter() - started


def outbox_state(pg_url: str, schema: str) -> tuple[int, int, int]:
    """(events, done, distinct flow runs) in the shim's outbox."""
    engine = sa.create_engine(pg_url)
    with engine.connect() as conn:
        row = conn.execute(
            sa.text(
                f"SELECT count(*), count(*) FILTER (WHERE status = 'done'), count(DISTINCT flow_run_id) "
                f'FROM "{schema}".inngest_event'
            )
        ).one()
    engine.dispose()
    return int(row[0]), int(row[1]), int(row[2])


def pending(pg_url: str, schema: str) -> int:
    return count_rows(pg_url, f"SELECT count(*) FROM \"{schema}\".inngest_event WHERE status = 'pending'")


def measure_raw(api_url: str, deployments: dict[str, str], count: int, round_no: int) -> float:
    """The better rate of `count` creates one at a time and `count` creates 4 at once."""
    rates = []
    for concurrency in (1, 4):
        tag = f"bench-raw-{round_no}-{concurrency}"
        seconds = asyncio.run(raw_creates(api_url, deployments, count, concurrency, tag))
        created = asyncio.run(count_runs(api_url, tag))
        assert created == count, f"raw: {created} runs for {count} creates"
        rates.append(count / seconds)
        print(f"    raw creates, {concurrency} at once: {rates[-1]:.1f} runs/s", flush=True)
    return max(rates)


def measure_shim(
    server_url: str, home: Path, pg_url: str, count: int, round_no: int, notes: dict[str, Any]
) -> float:
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    tuning = {k: v for k, v in os.environ.items() if k.startswith("POLIGRAPH_SHIM_")}  # to try settings
    env = (
        base_env(home)
        | tuning
        | {
            "PREFECT_API_URL": server_url,
            "DATABASE_URL": pg_url,
            "POLIGRAPH_SHIM_SCHEMA": schema,
            "POLIGRAPH_EVENT_KEYS": KEY,
        }
    )
    before = asyncio.run(count_runs(server_url, "inngest"))
    with shim(env, f"shim-{round_no}") as (url, _proc):
        started = time.perf_counter()
        acknowledged = send_burst(url, count)
        wait_until(lambda: pending(pg_url, schema) == 0, 3600, "the burst to drain", interval=0.2)
        seconds = time.perf_counter() - started
        busy = _metric(url, 'poligraph_shim_dispatch_errors_total{kind="busy"}')
    runs = asyncio.run(count_runs(server_url, "inngest")) - before
    events, done, distinct = outbox_state(pg_url, schema)
    lost, duplicated = count - done, runs - count
    notes.setdefault("ack", []).append(acknowledged)
    notes.setdefault("busy", []).append(busy)
    notes.setdefault("lost", []).append(lost)
    notes.setdefault("duplicated", []).append(duplicated)
    assert events == done == distinct == count, (events, done, distinct, count)
    return count / seconds


def _metric(url: str, sample: str) -> float:
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith(sample + " "):
            return float(line.split()[-1])
    return 0.0


def burst_figure(pg_url: str, prefect_db: str, count: int, rounds: int, raw_sample: int) -> Figure:
    """One Prefect server (a fresh database) for every round of both sides: the order alternates
    between rounds, so the database's growth weighs on each side alike."""
    label = "Prefect on SQLite (default stack)" if prefect_db == "sqlite" else "Prefect on PostgreSQL"
    raw_count = min(count, raw_sample)
    figure = Figure(
        key="P5",
        title=f"burst of {count:,} events → flow runs, {label}",
        unit="runs/s",
        baseline_name=f"raw single creates, best of 1 and 4 at once, {raw_count:,} runs each",
        goal="≥ 0.8×, 0 lost, 0 duplicated",
        fmt="{:.1f}",
        higher_is_better=True,
    )
    notes: dict[str, Any] = {}
    home = WORK / f"burst-{prefect_db}-{uuid.uuid4().hex[:6]}"
    database = (
        create_database(pg_url, f"prefect_{uuid.uuid4().hex[:8]}") if prefect_db == "postgres" else None
    )
    with prefect_server(home, database) as server:
        deployments = asyncio.run(register(server.url))
        # Warm-up, not counted: a fresh server's first creates (each endpoint's first requests,
        # its database's first plans) slowed whichever side came first, the shim's bulk creates
        # most (round 1 at half of round 2).
        asyncio.run(raw_creates(server.url, deployments, WARM_UP_EVENTS, 4, "bench-warm-up"))
        measure_shim(server.url, home, pg_url, WARM_UP_EVENTS, -1, {})
        for round_no in range(rounds):
            for side in ["raw", "shim"] if round_no % 2 == 0 else ["shim", "raw"]:
                waited = wait_quiet(server.proc.pid)
                print(f"  P5 {prefect_db} round {round_no + 1} {side}: server quiet after {waited:.1f} s")
                if side == "raw":
                    figure.baseline.add(measure_raw(server.url, deployments, raw_count, round_no))
                else:
                    figure.ours.add(measure_shim(server.url, home, pg_url, count, round_no, notes))
                latest = (figure.baseline if side == "raw" else figure.ours).values[-1]
                print(f"  P5 {prefect_db} round {round_no + 1} {side}: {latest:.1f} runs/s", flush=True)
    figure.passes = lambda f: f.ratio >= 0.8 and not any(notes["lost"]) and not any(notes["duplicated"])
    figure.notes.append(
        f"acknowledged in {Series(notes['ack']).summary('{:.1f}')} s; lost {sum(notes['lost'])}, "
        f"duplicated {sum(notes['duplicated'])}; 429/503 answers seen by the dispatcher "
        f"{Series(notes['busy']).summary('{:.0f}')}"
    )
    return figure


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--prefect-db", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument(
        "--raw-sample",
        type=int,
        default=2000,
        help="runs the baseline creates (its rate falls as the database grows)",
    )
    args = parser.parse_args()
    print(f"machine: {machine()}")
    kinds = ["sqlite", "postgres"] if args.prefect_db == "both" else [args.prefect_db]
    with durable_postgres() as pg_url:
        figures = [burst_figure(pg_url, kind, args.events, args.rounds, args.raw_sample) for kind in kinds]
    print_table(figures)


if __name__ == "__main__":
    main()
