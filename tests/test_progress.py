"""The optional PROGRESS protocol."""

from __future__ import annotations

import pytest

from flows.progress import ProgressReport, parse_progress

pytestmark = pytest.mark.unit


def test_count() -> None:
    assert parse_progress("PROGRESS 40/120") == ProgressReport(fraction=40 / 120, processed=40, total=120)


def test_count_with_spaces() -> None:
    report = parse_progress("  PROGRESS 3 / 4  ")
    assert report == ProgressReport(fraction=0.75, processed=3, total=4)


def test_percent() -> None:
    report = parse_progress("  PROGRESS 35%")
    assert report is not None
    assert report.fraction == pytest.approx(0.35)
    assert report.processed is None
    assert report.total is None


def test_decimal_percent() -> None:
    report = parse_progress("PROGRESS 12.5%")
    assert report is not None
    assert report.fraction == pytest.approx(0.125)


def test_total_zero() -> None:
    assert parse_progress("PROGRESS 0/0") == ProgressReport(fraction=0.0, processed=0, total=0)
    assert parse_progress("PROGRESS 5/0") == ProgressReport(fraction=0.0, processed=5, total=0)


def test_done() -> None:
    assert parse_progress("PROGRESS 120/120") == ProgressReport(fraction=1.0, processed=120, total=120)
    report = parse_progress("PROGRESS 100%")
    assert report is not None and report.fraction == 1.0


def test_over_100_percent_capped() -> None:
    report = parse_progress("PROGRESS 150%")
    assert report is not None and report.fraction == 1.0
    assert parse_progress("PROGRESS 130/120") == ProgressReport(fraction=1.0, processed=130, total=120)


@pytest.mark.parametrize(
    "line",
    [
        "progress 1/2",
        "Progress 1/2",
        "PROGRESS 1/2 extra",
        "PROGRESS 35% done",
        "Processed: 40",
        "step PROGRESS 1/2",
        "PROGRESS",
        "PROGRESS /2",
        "PROGRESS 1/",
        "PROGRESS -1/2",
        "PROGRESS 1234%",
        "PROGRESS1/2",
        "",
    ],
)
def test_not_progress(line: str) -> None:
    assert parse_progress(line) is None
