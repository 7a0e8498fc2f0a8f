"""What `poligraph-jobs list` shows: one line per deployment, readable in any terminal or pipe.

table   a rich table (on a terminal); long names wrap, they are never cut
plain   tab-separated, one deployment per line, a header first (the default when piped)
json    a list of objects
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from enum import StrEnum

from rich.console import Console
from rich.table import Table

from deployments.catalog import Catalog
from deployments.specs import GROUP, deployment_specs
from deployments.syncjob import SyncJobRow

COLUMNS = ("event", "deployment", "scripts", "schedule", "last run")


class Output(StrEnum):
    table = "table"
    plain = "plain"
    json = "json"


@dataclass(frozen=True)
class Listed:
    events: list[str]
    deployment: str
    scripts: list[str]
    schedules: list[str]
    last_run: str | None

    def cells(self) -> list[str]:
        return [
            ", ".join(self.events),
            self.deployment,
            ", ".join(self.scripts),
            ", ".join(self.schedules) or "—",
            self.last_run or "—",
        ]


def listing(catalog: Catalog, last_runs: dict[str, SyncJobRow]) -> list[Listed]:
    rows = []
    for spec in deployment_specs(catalog):
        scripts = [s.script for s in catalog.group(spec.name).steps] if spec.kind == GROUP else [spec.name]
        last = last_runs.get(spec.row_script)
        rows.append(
            Listed(
                events=list(spec.events),
                deployment=spec.full_name,
                scripts=scripts,
                schedules=[f"{s.cron} {s.timezone}" for s in spec.schedules],
                last_run=f"{last['status']} {last['createdAt']:%Y-%m-%d %H:%M}" if last else None,
            )
        )
    return rows


def render(rows: list[Listed], output: Output, console: Console) -> None:
    if output is Output.json:
        console.file.write(json.dumps([asdict(r) for r in rows], ensure_ascii=False, indent=2) + "\n")
    elif output is Output.plain:  # written as is: rich would expand the tabs
        for cells in [[c.upper() for c in COLUMNS], *(r.cells() for r in rows)]:
            console.file.write("\t".join(cells) + "\n")
    elif console.width >= table_width(rows):
        console.print(as_table(rows))
    else:
        for row in rows:
            console.print(as_block(row), highlight=False)


def table_width(rows: list[Listed]) -> int:
    """Least width at which event and deployment names fit whole (the other columns wrap)."""
    names = max((len(r.deployment) + max(map(len, r.events)) for r in rows), default=0)
    return names + 60


def as_table(rows: list[Listed]) -> Table:
    table = Table(title="poligraph-jobs")
    for column in COLUMNS:
        whole = column in ("event", "deployment")
        table.add_column(column, no_wrap=whole, overflow="fold")
    for row in rows:
        table.add_row(row.cells()[0].replace(", ", "\n"), *row.cells()[1:])
    return table


def as_block(row: Listed) -> str:
    labels = dict(zip(COLUMNS, row.cells(), strict=True))
    del labels["deployment"]
    lines = [f"[bold]{row.deployment}[/bold]"] + [f"  {k:<9} {v}" for k, v in labels.items()]
    return "\n".join(lines)
