"""Which flow runs are alive on this machine: each run leaves a small file while it executes.

If the process that ran a flow is killed with its machine's service (SIGKILL, OOM, reboot), Prefect
still shows the run Running and no hook runs. The reconciler reads these files: a file whose
process is gone means a dead run, known at once instead of after Prefect's heartbeat timeout.

A run writes its file as its body begins and removes it once Prefect holds its final state (the
flow's completion and failure hooks): a process killed while it reports that state is seen dead
too. A file left by a process that ended otherwise (a final state whose hook runs elsewhere) is
removed by the reconciler, which finds its run ended.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from deployments.settings import get_settings
from flows.process_tree import RUN_TAG, start_time, tag_of, tagged

# What Prefect's runner and process worker put in the environment of a flow run's process (its
# scripts inherit it too, but they also carry RUN_TAG).
PREFECT_RUN_ENV = "PREFECT__FLOW_RUN_ID"


@dataclass(frozen=True)
class RunFile:
    flow_run_id: str
    job_id: str
    pid: int
    started: float | None  # the process's start time: guards against pid reuse
    path: Path
    script_groups: tuple[int, ...] = ()  # process groups of the scripts it started


def runs_dir() -> Path:
    return get_settings().home / "runs"


def register(flow_run_id: str, job_id: str) -> Path:
    """Mark this process as running `flow_run_id` (until `unregister`)."""
    directory = runs_dir()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{flow_run_id}.json"
    pid = os.getpid()
    path.write_text(
        json.dumps({"flowRunId": flow_run_id, "jobId": job_id, "pid": pid, "started": start_time(pid)})
    )
    return path


def unregister(flow_run_id: str) -> None:
    (runs_dir() / f"{flow_run_id}.json").unlink(missing_ok=True)


def note_script_group(flow_run_id: str, pgid: int) -> None:
    """Remember a script's process group, so it can be killed if this process dies first."""
    path = runs_dir() / f"{flow_run_id}.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return  # a run without a file (tests calling the task alone): nothing to note
    data["scriptGroups"] = [*data.get("scriptGroups", []), pgid][-5:]
    path.write_text(json.dumps(data))


def _read(path: Path) -> RunFile | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return RunFile(
        data["flowRunId"],
        data["jobId"],
        data["pid"],
        data.get("started"),
        path,
        tuple(data.get("scriptGroups", ())),
    )


def _alive(run: RunFile) -> bool:
    return run.started is not None and start_time(run.pid) == run.started


def dead_runs() -> list[RunFile]:
    """Runs whose process is gone without cleaning up."""
    directory = runs_dir()
    if not directory.is_dir():
        return []
    runs = (_read(path) for path in directory.glob("*.json"))
    return [run for run in runs if run is not None and not _alive(run)]


def live_run(flow_run_id: str) -> RunFile | None:
    """The run file of `flow_run_id` when its process is alive on this machine."""
    run = _read(runs_dir() / f"{flow_run_id}.json")
    return run if run is not None and _alive(run) else None


def flow_process_here(flow_run_id: str) -> bool:
    """Whether the process of `flow_run_id` lives on this machine, from its start (before the flow
    body writes its run file) to its end; a script it left behind does not count."""
    if live_run(flow_run_id) is not None:
        return True
    return any(tag_of(p, RUN_TAG) is None for p in tagged(PREFECT_RUN_ENV, flow_run_id))
