"""The operator CLI's pure parts, its listing formats and exit codes (the end-to-end runs are in
test_local_stack)."""

from __future__ import annotations

import io
import json
from datetime import datetime

import pytest
from rich.console import Console
from typer.testing import CliRunner

from deployments.catalog import load_catalog
from deployments.settings import DEFAULT_CATALOG
from deployments.specs import deployment_specs
from scripts.cli import app
from scripts.follow import follow
from scripts.listing import Output, listing, render
from scripts.trigger import TriggerRefused, check_request, event_name, parse_flags
from support.syncjob import insert_pending

CATALOG = load_catalog(DEFAULT_CATALOG)


@pytest.mark.unit
@pytest.mark.parametrize(
    ("raw", "event"),
    [
        ("sync:press", "sync/press"),
        ("sync/press", "sync/press"),
        ("sync:daily", "sync/daily"),
        ("discover:affairs", "sync/discover-affairs"),
        ("generate:ai", "sync/generate-ai"),
        ("index:embeddings", "sync/index-embeddings"),
        ("sync-assemblee", "sync/sync-assemblee"),
    ],
)
def test_names_are_normalised_as_the_functions_listen(raw, event):
    assert event_name(raw) == event


@pytest.mark.unit
def test_limit_is_taken_out_of_the_flags():
    assert parse_flags(["--limit=50", "--all"]) == (50, ["--all"])
    with pytest.raises(TriggerRefused, match="positive whole number"):
        parse_flags(["--limit=0"])


@pytest.mark.unit
def test_requests_are_checked_before_anything_is_sent():
    request = check_request(CATALOG, "sync-scrutins-senat", ["--limit=5"], "--all")
    assert request.event == "sync/sync-scrutins-senat" and request.data == {"limit": 5, "flags": "--all"}
    assert check_request(CATALOG, "sync:daily", [], "").spec.row_script == "sync-daily"
    with pytest.raises(TriggerRefused, match="Closest: sync/discover-affairs"):
        check_request(CATALOG, "discover:afairs", [], "")
    with pytest.raises(TriggerRefused, match="--bogus is not allowed"):
        check_request(CATALOG, "sync-assemblee", ["--bogus"], "")


LAST_RUNS = {"press": {"status": "COMPLETED", "createdAt": datetime(2026, 11, 1, 5, 0)}}


def rendered(output: Output, width: int) -> str:
    buffer = io.StringIO()
    render(listing(CATALOG, LAST_RUNS), output, Console(file=buffer, width=width, force_terminal=False))
    return buffer.getvalue()


@pytest.mark.unit
def test_plain_listing_is_one_greppable_line_per_deployment_whatever_the_width():
    lines = rendered(Output.plain, width=40).splitlines()
    assert lines[0].split("\t") == ["EVENT", "DEPLOYMENT", "SCRIPTS", "SCHEDULE", "LAST RUN"]
    (scrutins,) = [line for line in lines if line.startswith("sync/sync-scrutins-senat\t")]
    assert scrutins.split("\t")[:3] == [
        "sync/sync-scrutins-senat",
        "sync-script/sync-scrutins-senat",
        "sync-scrutins-senat",
    ]
    (daily,) = [line for line in lines if "\tsync-group/sync-daily\t" in line]
    assert daily.split("\t")[0] == "sync/daily, sync/sync-daily"
    assert daily.split("\t")[3] == "0 5,11,19 * * * UTC"
    (press,) = [line for line in lines if "\tsync-group/press\t" in line]
    assert press.endswith("COMPLETED 2026-11-01 05:00")


@pytest.mark.unit
@pytest.mark.parametrize("width", [60, 80, 120, 200])
def test_terminal_listing_never_cuts_a_name(width):
    text = rendered(Output.table, width=width)
    lines = text.splitlines()
    assert "…" not in text and all(len(line) <= width for line in lines)
    for spec in deployment_specs(CATALOG):
        assert any(spec.full_name in line for line in lines), spec.full_name
        for event in spec.events:
            assert any(event in line for line in lines), event


@pytest.mark.unit
def test_json_listing_parses():
    rows = json.loads(rendered(Output.json, width=40))
    names = {row["deployment"] for row in rows}
    assert "sync-group/sync-daily" in names and len(rows) == len(names)


@pytest.mark.integration
def test_list_command_defaults_to_plain_when_piped(syncjobs):
    result = CliRunner().invoke(app, ["list"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0].startswith("EVENT\tDEPLOYMENT")


@pytest.mark.integration
def test_follow_exits_1_on_failed_and_0_on_completed(syncjobs):
    out = Console(file=io.StringIO())

    def follow_job(job_id: str) -> int:
        return follow(syncjobs, job_id, out, out, poll_seconds=0.01)

    insert_pending(syncjobs, "cfollowfailed000000000001", "sync-press")
    syncjobs.mark_failed("cfollowfailed000000000001", "step x failed")
    assert follow_job("cfollowfailed000000000001") == 1
    insert_pending(syncjobs, "cfollowdone00000000000001", "sync-press")
    syncjobs.mark_completed("cfollowdone00000000000001", {})
    assert follow_job("cfollowdone00000000000001") == 0
    assert follow_job("cnosuchjob000000000000001") == 1
