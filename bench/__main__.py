"""`make bench`: every figure of the performance table, each against its baseline in the same run.

    .venv/bin/python -m bench [--only P1,P5] [--burst-events 1000] [--burst-rounds 2] …

P1 (bench.ingest), P2/P3/P4/P6 (bench.flow_start), P5 on the default stack (Prefect on SQLite)
and on Prefect-on-PostgreSQL (bench.burst), P3 on the production topology next to the local stack
and P7, the Prefect server's CPU with idle workers (bench.production). Each module runs its own
rounds, interleaving ours and the baseline; the table at the end has min / median / max of both,
the ratio of the medians and the goal. About 15 minutes on 2 cores; the modules also run alone,
with more rounds (and `python -m bench.burst --events 10000` for the full burst of the issue).
"""

from __future__ import annotations

import argparse
import time

from bench.burst import burst_figure
from bench.flow_start import flow_start_figures
from bench.harness import Figure, durable_postgres, machine, print_table
from bench.ingest import ingest_figure
from bench.production import production_figures

PARTS = ("P1", "P2", "P3", "P4", "P5", "P6", "P7")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", default=",".join(PARTS), help="figures to measure, e.g. P1,P5")
    parser.add_argument("--rounds", type=int, default=3, help="P1 rounds of wrk")
    parser.add_argument("--runs", type=int, default=8, help="P2-P4 runs of each side")
    parser.add_argument("--burst-events", type=int, default=1000, help="P5 events per burst")
    parser.add_argument("--burst-rounds", type=int, default=2, help="P5 rounds per database")
    parser.add_argument("--raw-sample", type=int, default=250, help="P5 baseline creates per try")
    parser.add_argument("--idle", default="1,4,8", help="P7 idle worker counts")
    parser.add_argument("--idle-seconds", type=float, default=30, help="P7 sampling time per count")
    args = parser.parse_args()
    wanted = {part.strip().upper() for part in args.only.split(",")}
    started = time.monotonic()
    print(f"machine: {machine()}", flush=True)
    figures: list[Figure] = []
    if "P1" in wanted:
        figures.append(ingest_figure(args.rounds, 10, 32))
    if wanted & {"P2", "P3", "P4", "P6"}:
        figures += [f for f in flow_start_figures(args.runs) if f.key in wanted]
    if "P5" in wanted:
        with durable_postgres() as pg_url:
            for prefect_db in ("sqlite", "postgres"):
                figures.append(
                    burst_figure(pg_url, prefect_db, args.burst_events, args.burst_rounds, args.raw_sample)
                )
    if wanted & {"P3", "P7"}:
        idle = [int(n) for n in args.idle.split(",") if n.strip()] if "P7" in wanted else []
        runs = args.runs if "P3" in wanted else 0
        figures += [f for f in production_figures(runs, idle, args.idle_seconds) if f.key in wanted]
    print(f"\nmachine at the end: {machine()}; took {(time.monotonic() - started) / 60:.1f} min")
    print_table(figures)


if __name__ == "__main__":
    main()
