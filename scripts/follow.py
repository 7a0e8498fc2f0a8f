"""Following a job until it ends: its SyncJob row for progress, Prefect for its last log lines."""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from deployments.syncjob import SyncJobRepository, SyncJobRow, SyncJobStatus, flow_run_of

FINAL_STATUSES = (SyncJobStatus.COMPLETED, SyncJobStatus.FAILED)


def recent_log_lines(flow_run_id: str, count: int = 5) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.client.schemas.sorting import LogSort

    try:
        with get_client(sync_client=True) as client:
            logs = client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])),
                sort=LogSort.TIMESTAMP_DESC,
                limit=count,
            )
    except Exception:  # logs are a nicety; the row is what counts
        return []
    return [entry.message for entry in reversed(logs)]


def describe(row: SyncJobRow, last_line: str) -> str:
    """`processed/total` when the row has them, and the run's last log line."""
    counts = f"{row['processed']}/{row['total']}" if row["processed"] is not None and row["total"] else ""
    return " ".join(x for x in (counts, last_line[:60]) if x)


def follow(
    repository: SyncJobRepository,
    job_id: str,
    console: Console,
    err: Console,
    poll_seconds: float = 0.5,
) -> int:
    """Show the job's progress and last log line until it ends: 0 COMPLETED, 1 FAILED, 130 Ctrl-C."""
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
        console=console,
    )
    last_lines: list[str] = []
    try:
        with progress:
            task = progress.add_task(SyncJobStatus.PENDING, total=100, detail="")
            while True:
                row = repository.get(job_id)
                if row is None:
                    err.print(f"[red]No SyncJob {job_id}[/red]")
                    return 1
                if run_id := flow_run_of(row):
                    last_lines = recent_log_lines(run_id) or last_lines
                detail = describe(row, last_lines[-1] if last_lines else "")
                progress.update(task, completed=row["progress"], description=row["status"], detail=detail)
                if row["status"] in FINAL_STATUSES:
                    break
                time.sleep(poll_seconds)  # the admin polls every 3 s; an operator wants it faster
    except KeyboardInterrupt:
        err.print(f"\nStopped following. The job goes on; cancel it with: poligraph-jobs cancel {job_id}")
        return 130
    if row["status"] == SyncJobStatus.COMPLETED:
        console.print(f"[green]COMPLETED[/green] {job_id}")
        return 0
    err.print(f"[red]FAILED[/red] {job_id}: {row['error']}")
    return 1
