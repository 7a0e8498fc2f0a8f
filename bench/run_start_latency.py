"""How long from creating a flow run to the run being Running, on a running stack (a quick check
by hand; `make bench` measures P3 properly).

    make up                                   # in one terminal
    .venv/bin/python bench/run_start_latency.py --runs 5 --deployment sync-script/sync-president

The worker starts a run on the event of its creation: well under a second on the local stack.
Prints one line per run and the median.
Runs are created one after another, each after the previous one finished, so the deployment's
one-at-a-time limit does not add waiting time.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from prefect.client.orchestration import get_client


async def measure(deployment_name: str, runs: int) -> list[float]:
    latencies = []
    async with get_client() as client:
        deployment = await client.read_deployment_by_name(deployment_name)
        for _ in range(runs):
            run = await client.create_flow_run_from_deployment(deployment.id)
            created = run.created or run.expected_start_time
            while True:
                states = await client.read_flow_run_states(run.id)
                running = [s for s in states if s.type.value == "RUNNING"]
                if running:
                    latency = (running[0].timestamp - created).total_seconds()
                    latencies.append(latency)
                    print(f"{run.name}: Running {latency:.2f}s after creation")
                    break
                await asyncio.sleep(0.1)
            while not (await client.read_flow_run(run.id)).state.is_final():
                await asyncio.sleep(0.5)
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--deployment", default="sync-script/sync-president")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    started = time.monotonic()
    latencies = asyncio.run(measure(args.deployment, args.runs))
    print(
        f"median {statistics.median(latencies):.2f}s, max {max(latencies):.2f}s "
        f"over {len(latencies)} runs ({time.monotonic() - started:.0f}s total)"
    )


if __name__ == "__main__":
    main()
