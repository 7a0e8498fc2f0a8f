"""`poligraph-jobs`: trigger a job and follow it, list what exists, look at or cancel a job.

poligraph-jobs trigger sync:press --limit=50 --wait
poligraph-jobs trigger discover:affairs
poligraph-jobs trigger sync-assemblee --flags="--dry-run"
poligraph-jobs list [--output table|plain|json]
poligraph-jobs status <jobId>
poligraph-jobs cancel <jobId>
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

from deployments.catalog import get_catalog
from deployments.syncjob import flow_run_of, syncjob_repository
from scripts.cancel import cancel_job
from scripts.follow import follow
from scripts.listing import Output, listing, render
from scripts.trigger import SendFailed, TriggerRefused, check_request, send_job

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
STATUS_FIELDS = (
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
)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def trigger(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="sync:press, sync:daily, discover:affairs, sync-assemblee, …"),
    wait: bool = typer.Option(False, "--wait", help="Follow the job until it ends."),
    flags: str = typer.Option("", "--flags", help='Flags as one string: --flags="--all --dry-run".'),
) -> None:
    """Create a SyncJob row and send the event, as the admin does. Extra --flags are checked first."""
    try:
        request = check_request(get_catalog(), name, list(ctx.args), flags)
    except TriggerRefused as exc:
        err.print(f"[red]{exc}[/red] Nothing was sent.")
        raise typer.Exit(exc.exit_code) from None
    repository = syncjob_repository()
    try:
        job_id = send_job(repository, request)
    except SendFailed as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(exc.exit_code) from None
    console.print(
        f"Sent [bold]{request.event}[/bold] → {request.spec.full_name}   SyncJob [bold]{job_id}[/bold]"
    )
    if wait:
        raise typer.Exit(follow(repository, job_id, console, err))


@app.command("list")
def list_jobs(
    output: Annotated[
        Output | None,
        typer.Option("--output", "-o", help="table (terminal default), plain (piped default), json."),
    ] = None,
) -> None:
    """Every event name with its deployment, scripts, schedule and last run."""
    chosen = output or (Output.table if console.is_terminal else Output.plain)
    render(listing(get_catalog(), syncjob_repository().last_runs()), chosen, console)


@app.command()
def status(job_id: str) -> None:
    """One SyncJob row."""
    row = syncjob_repository().get(job_id)
    if row is None:
        err.print(f"[red]No SyncJob {job_id}[/red]")
        raise typer.Exit(1)
    for key in STATUS_FIELDS:
        value = row.get(key)  # the columns STATUS_FIELDS names, in their order
        console.print(f"[bold]{key:>11}[/bold]  {value if value is not None else '—'}")
    if run_id := flow_run_of(row):
        console.print(f"[bold]{'flow run':>11}[/bold]  {run_id}")


@app.command()
def cancel(job_id: str) -> None:
    """Cancel a PENDING or RUNNING job, as the admin's cancel button does; the run is stopped."""
    repository = syncjob_repository()
    cancelled, run_id = cancel_job(repository, job_id, "cancelled from the CLI")
    if not cancelled:
        row = repository.get(job_id)
        err.print(f"[red]No active SyncJob {job_id}[/red]" + (f" (it is {row['status']})" if row else ""))
        raise typer.Exit(1)
    console.print(f"Cancelled SyncJob {job_id}" + (f" and flow run {run_id}" if run_id else ""))


def main() -> None:
    app(prog_name="poligraph-jobs")


if __name__ == "__main__":
    main()
