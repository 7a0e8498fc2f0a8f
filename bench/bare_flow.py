"""P3/P4's baseline: a bare Prefect flow that runs one subprocess (the same no-op step), served.

    python -m bench.bare_flow        (PREFECT_API_URL, BENCH_STARTS and the runner settings set)

Deployment `bare-step/bare`, served by Prefect's `serve` polling every second; and
`bare-task-step/bare`, the same subprocess inside one plain Prefect task (P4's reference: what a
step run as a task costs before any of our work). Nothing but Prefect and the standard library is
imported, in the serve process and in each flow run's.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from prefect import flow, serve, task

NOOP = Path(__file__).resolve().parent / "noop_script.py"


@flow(name="bare-step")
def bare_step() -> None:
    subprocess.run([sys.executable, "-I", "-S", str(NOOP), "bare"], check=True)


@task
def noop_step() -> None:
    subprocess.run([sys.executable, "-I", "-S", str(NOOP), "bare-task"], check=True)


@flow(name="bare-task-step")
def bare_task_step() -> None:
    noop_step()


if __name__ == "__main__":
    serve(
        bare_step.to_deployment(name="bare"),
        bare_task_step.to_deployment(name="bare"),
        limit=4,
        pause_on_shutdown=False,
    )
