"""`poligraph-jobs`: trigger a job and follow it, list what exists, look at or cancel a job.

    poligraph-jobs trigger sync:press --limit=50 --wait
    poligraph-jobs trigger discover:affairs
    poligraph-jobs trigger sync-assemblee --flags="--dry-run"
    poligraph-jobs list
    poligraph-jobs status <jobId>
    poligraph-jobs cancel <jobId>

`trigger` does what the admin does: it creates a PENDING SyncJob row, then sends the Inngest
event `sync/<name>` with `{jobId, ...}` to the shim (INNGEST_BASE_URL, INNGEST_EVENT_KEY; dev
mode on http://127.0.0.1:8288 when no key is set), so the run shows in the admin.
"""

from __future__ import annotations

import difflib
import os
import sys
import time
import uuid
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from deployments.catalog import get_catalog
from deployments.specs import deployment_specs, spec_for_event
from flows.syncjob import flow_run_of, get_store, job_id_for_flow_run
from shim.mapping import RUN, map_event

EXAMPLES = """
```
poligraph-jobs trigger sync:press --limit=50 --wait
poligraph-jobs trigger sync-scrutins-senat --flags="--all"
poligraph-jobs list
poligraph-jobs status <jobId>
poligraph-jobs cancel <jobId>
```
"""
app = typer.Typer(
    help="Trigger Poligraph sync jobs, follow them, list them, cancel them.",
    epilog=EXAMPLES,
    rich_markup_mode="markdown",
    no_args_is_help=True,
    add_completion=False,
)
console = Console()
err = Console(stderr=True)
DEFAULT_SHIM = "http://127.0.0.1:8288"
SEND_FAILED = "Impossible d'envoyer l'événement Inngest"  # what the admin writes


def event_name(raw: str) -> str:
    """`sync:press` → sync/press, `discover:affairs` → sync/discover-affairs, `x` → sync/x.

    Fixes the old trigger.ts, which turned `discover:affairs` into `discover/affairs`.
    """
    name = raw.strip()
    for prefix in ("sync:", "sync/"):
        if name.startswith(prefix):
            return "sync/" + name[len(prefix) :]
    return "sync/" + name.replace(":", "-").replace("/", "-")


def parse_flags(extra: list[str]) -> tuple[int | None, list[str]]:
    """`--limit=N` becomes the run's limit; every other --flag is passed on as is."""
    limit = None
    flags = []
    for item in extra:
        if item.startswith("--limit="):
            value = item.split("=", 1)[1]
            if not value.isdigit() or int(value) < 1:
                raise typer.BadParameter(f"--limit must be a positive whole number, got {value!r}")
            limit = int(value)
        else:
            flags.append(item)
    return limit, flags


def new_job_id() -> str:
    return job_id_for_flow_run(f"cli-{uuid.uuid4()}")


def inngest_client():
    import inngest

    key = os.environ.get("INNGEST_EVENT_KEY")
    base = os.environ.get("INNGEST_BASE_URL") or os.environ.get("INNGEST_EVENT_API_BASE_URL")
    dev = os.environ.get("INNGEST_DEV", "")
    if not base and "://" in dev:
        base = dev
    return inngest.Inngest(
        app_id="poligraph",
        event_key=key,
        event_api_base_url=base or DEFAULT_SHIM,
        is_production=bool(key),
        signing_key=os.environ.get("INNGEST_SIGNING_KEY") or ("unused-for-sending" if key else None),
    )


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def trigger(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="sync:press, sync:daily, discover:affairs, sync-assemblee, …"),
    wait: bool = typer.Option(False, "--wait", help="Follow the job until it ends."),
    flags: str = typer.Option("", "--flags", help='Flags as one string: --flags="--all --dry-run".'),
) -> None:
    """Create a SyncJob row and send the event, as the admin does. Extra --flags are checked first."""
    catalog = get_catalog()
    event = event_name(name)
    spec = spec_for_event(catalog, event)
    if spec is None:
        known = sorted({e for s in deployment_specs(catalog) for e in s.events})
        close = difflib.get_close_matches(event, known, n=3, cutoff=0.5)
        hint = f" Closest: {', '.join(close)}." if close else ""
        err.print(f"[red]Unknown job {name!r} (event {event}).{hint}[/red] Nothing was sent.")
        raise typer.Exit(2)
    limit, extra = parse_flags(list(ctx.args))
    all_flags = " ".join([*extra, *flags.split()])
    data: dict[str, Any] = {}
    if limit is not None:
        data["limit"] = limit
    if all_flags:
        data["flags"] = all_flags
    checked = map_event(catalog, event, data)
    if checked.action != RUN:
        err.print(f"[red]{checked.reason}[/red] Nothing was sent.")
        raise typer.Exit(2)

    store = get_store()
    job_id = new_job_id()
    script = catalog.group(spec.name).row_script if "group" in spec.parameters else spec.name
    store.create_pending(job_id, script)
    try:
        inngest_client().send_sync(_event(event, {"jobId": job_id, **data}))
    except Exception as exc:
        store.mark_failed(job_id, SEND_FAILED)
        err.print(f"[red]Could not send {event}: {exc}[/red] (SyncJob {job_id} marked FAILED)")
        raise typer.Exit(1) from None
    console.print(f"Sent [bold]{event}[/bold] → {spec.full_name}   SyncJob [bold]{job_id}[/bold]")
    if wait:
        raise typer.Exit(follow(job_id))


def _event(name: str, data: dict[str, Any]):
    import inngest

    return inngest.Event(name=name, data=data)


def follow(job_id: str, poll_seconds: float = 0.5) -> int:
    """Show the job's progress and last log lines until it ends: 0 COMPLETED, 1 FAILED, 130 Ctrl-C."""
    store = get_store()
    last_lines: list[str] = []
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
        console=console,
    )
    try:
        with progress:
            task = progress.add_task("PENDING", total=100, detail="")
            while True:
                row = store.get(job_id)
                if row is None:
                    err.print(f"[red]No SyncJob {job_id}[/red]")
                    return 1
                counts = (
                    f"{row['processed']}/{row['total']}"
                    if row["processed"] is not None and row["total"]
                    else ""
                )
                run_id = flow_run_of(row)
                if run_id:
                    last_lines = recent_log_lines(run_id) or last_lines
                detail = " ".join(x for x in (counts, last_lines[-1][:60] if last_lines else "") if x)
                progress.update(task, completed=row["progress"], description=row["status"], detail=detail)
                if row["status"] in ("COMPLETED", "FAILED"):
                    break
                time.sleep(poll_seconds)  # the admin polls every 3 s; an operator wants it faster
    except KeyboardInterrupt:
        err.print(f"\nStopped following. The job goes on; cancel it with: poligraph-jobs cancel {job_id}")
        return 130
    if row["status"] == "COMPLETED":
        console.print(f"[green]COMPLETED[/green] {job_id}")
        return 0
    err.print(f"[red]FAILED[/red] {job_id}: {row['error']}")
    return 1


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


@app.command("list")
def list_jobs() -> None:
    """Every event name with its deployment, scripts, schedule and last run."""
    catalog = get_catalog()
    last = get_store().last_runs()
    table = Table(title="poligraph-jobs")
    for column in ("event", "deployment", "scripts", "schedule", "last run"):
        table.add_column(column)
    for spec in deployment_specs(catalog):
        if "group" in spec.parameters:
            group = catalog.group(spec.name)
            scripts = ", ".join(step.script for step in group.steps)
            row = last.get(group.row_script)
        else:
            scripts = spec.name
            row = last.get(spec.name)
        schedule = ", ".join(f"{s.cron} {s.timezone}" for s in spec.schedules) or "—"
        seen = f"{row['status']} {row['createdAt']:%Y-%m-%d %H:%M}" if row else "—"
        table.add_row("\n".join(spec.events), spec.full_name, scripts, schedule, seen)
    console.print(table)


@app.command()
def status(job_id: str) -> None:
    """One SyncJob row."""
    row = get_store().get(job_id)
    if row is None:
        err.print(f"[red]No SyncJob {job_id}[/red]")
        raise typer.Exit(1)
    for key in (
        "id",
        "script",
        "status",
        "progress",
        "processed",
        "total",
        "createdAt",
        "startedAt",
        "completedAt",
        "error",
    ):
        console.print(f"[bold]{key:>11}[/bold]  {row[key] if row[key] is not None else '—'}")
    if run_id := flow_run_of(row):
        console.print(f"[bold]{'flow run':>11}[/bold]  {run_id}")


@app.command()
def cancel(job_id: str) -> None:
    """Cancel a PENDING or RUNNING job, as the admin's cancel button does; the run is stopped."""
    store = get_store()
    if not store.cancel(job_id):
        row = store.get(job_id)
        err.print(f"[red]No active SyncJob {job_id}[/red]" + (f" (it is {row['status']})" if row else ""))
        raise typer.Exit(1)
    run_id = flow_run_of(store.get(job_id))
    if run_id:
        from uuid import UUID

        from prefect.client.orchestration import get_client
        from prefect.states import Cancelling

        with get_client(sync_client=True) as client:
            client.set_flow_run_state(UUID(run_id), Cancelling(message="cancelled from the CLI"), force=True)
    console.print(f"Cancelled SyncJob {job_id}" + (f" and flow run {run_id}" if run_id else ""))


def main() -> None:
    app(prog_name="poligraph-jobs")


if __name__ == "__main__":
    sys.exit(main())
