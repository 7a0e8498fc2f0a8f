"""What a run's artifacts say, and how they are written (no server: a recording sink)."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest

from deployments.catalog import load_catalog
from deployments.plans import plan_group, plan_script
from deployments.settings import DEFAULT_CATALOG
from flows import artifacts
from flows.artifacts import ArtifactWriter, RunArtifacts, run_artifacts
from flows.progress import ProgressReport
from flows.progress_tracker import ProgressTracker
from flows.run_summary import failures_markdown, outcome, running, step_rows
from flows.step_results import StepResult
from support.polling import wait_for

pytestmark = pytest.mark.unit

CATALOG = load_catalog(DEFAULT_CATALOG)
DAILY = plan_group(CATALOG, "sync-daily")
PRESS = plan_group(CATALOG, "press")
ANALYSIS = plan_script(CATALOG, "sync-press-analysis")


class Recorder:
    """A sink that records every call; optionally fails or blocks."""

    def __init__(self, fail: bool = False, block: threading.Event | None = None) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.fail = fail
        self.block = block

    def progress(self, key: str, percent: float, description: str) -> None:
        self._call("progress", key, percent, description)

    def create(self, kind: str, key: str, description: str, data: Any) -> None:
        self._call(kind, key, description, data)

    def close(self) -> None:
        self._call("close")

    def _call(self, *call: Any) -> None:
        if self.block is not None:
            self.block.wait()
        self.calls.append(call)
        if self.fail:
            raise RuntimeError("Prefect API down")

    def of(self, kind: str) -> list[tuple[Any, ...]]:
        return [c for c in self.calls if c[0] == kind]


def ok(step: Any) -> StepResult:
    return StepResult.succeeded(step.name, step.script, 0, 1.26, 1)


# --- texts ---------------------------------------------------------------------------------------


def test_progress_lines_say_what_runs() -> None:
    assert running(ANALYSIS, 0, ProgressReport(1 / 3, 40, 120)) == "sync-press-analysis: 40/120"
    assert running(DAILY, 2) == "step 3/16 legislation (sync-legislation)"
    assert running(DAILY, 2, ProgressReport(0.35)) == "step 3/16 legislation (sync-legislation): 35%"


def test_a_stopped_group_lists_the_failed_step_and_what_did_not_run() -> None:
    error = RuntimeError("step ai-analysis (sync-press-analysis) failed on attempt 3/3: exit code 1\nboom")
    rows = step_rows(PRESS, [ok(PRESS.steps[0])], 1, error)
    assert [(r["step"], r["status"], r["attempts"], r["exit code"]) for r in rows] == [
        ("parse-rss", "succeeded", 1, 0),
        ("ai-analysis", "failed", 3, ""),
    ]
    assert rows[0]["duration (s)"] == 1.3
    assert rows[1]["detail"] == "step ai-analysis (sync-press-analysis) failed on attempt 3/3: exit code 1"
    assert (
        outcome(PRESS, [ok(PRESS.steps[0])], 1, error) == "step 2/2 ai-analysis (sync-press-analysis): failed"
    )
    assert [r["status"] for r in step_rows(PRESS, [], 0, error)] == ["failed", "not run"]


def test_an_error_outside_a_step_blames_no_step() -> None:
    results = [ok(step) for step in PRESS.steps]
    rows = step_rows(PRESS, results, 1, ConnectionError("database down"))
    assert [r["status"] for r in rows] == ["succeeded", "succeeded"]
    assert outcome(PRESS, results, 1, ConnectionError("database down")) == "failed: database down"


def test_daily_markdown_names_failures_required_and_skipped_steps() -> None:
    hostile = "step votes-an failed: exit code 1\n```\n<script>alert(1)</script>"
    results = [
        StepResult.failed(step.name, step.script, hostile)
        if step.name == "votes-an"
        else StepResult.skipped(step.name, step.script, "off")
        if step.disabled
        else ok(step)
        for step in DAILY.steps
    ]
    error = RuntimeError("required step(s) failed: votes-an")
    text = failures_markdown(DAILY, results, 15, error)
    assert text.startswith("## sync-daily: 14 succeeded, 1 failed, 1 skipped\n")
    assert "**Failed**: required step(s) failed: votes-an" in text
    assert "- **votes-an** (`sync-scrutins-an`): failed" in text
    assert "- **press-analysis** (`sync-press-analysis`): succeeded" in text
    assert "- **judilibre** (`sync-judilibre`): off" in text
    # the script's output stays inside a fence it cannot close
    assert "  ````\n  step votes-an failed: exit code 1\n  ```\n  <script>alert(1)</script>\n  ````" in text
    assert "None." in failures_markdown(DAILY, [ok(s) for s in DAILY.steps], 15, None)


# --- writing -------------------------------------------------------------------------------------


def test_a_run_ends_with_100_a_table_and_for_daily_a_summary() -> None:
    sink = Recorder()
    with run_artifacts(DAILY, "cjob1", "00000000-0000-0000-0000-000000000001", sink) as results:
        for index, step in enumerate(DAILY.steps):
            artifacts.step_started("cjob1", index)
            results.append(ok(step))
    progress = sink.of("progress")
    assert progress[-1] == ("progress", "sync-daily-progress", 100, "done: 16 steps, 16 succeeded")
    ((_, key, description, data),) = sink.of("table")
    assert key == "sync-daily-steps" and description == "sync-daily COMPLETED: 16 succeeded"
    assert len(json.loads(data)) == 16
    assert [c[1] for c in sink.of("markdown")] == ["sync-daily-summary"]
    assert sink.calls[-1] == ("close",)
    assert "cjob1" not in artifacts._active


def test_a_failing_step_still_leaves_its_table_and_the_error_goes_on() -> None:
    sink = Recorder()
    with (
        pytest.raises(RuntimeError, match="exit code 1"),
        run_artifacts(PRESS, "cjob2", "00000000-0000-0000-0000-000000000002", sink) as results,
    ):
        artifacts.step_started("cjob2", 0)
        results.append(ok(PRESS.steps[0]))
        artifacts.step_started("cjob2", 1)
        raise RuntimeError("step ai-analysis (sync-press-analysis) failed on attempt 3/3: exit code 1")
    assert sink.of("progress")[-1] == (
        "progress",
        "press-progress",
        50,
        "step 2/2 ai-analysis (sync-press-analysis): failed",
    )
    ((_, _, description, data),) = sink.of("table")
    assert description.startswith("press FAILED: 1 succeeded, 1 failed — step 2/2")
    assert [r["status"] for r in json.loads(data)] == ["succeeded", "failed"]
    assert sink.of("markdown") == []  # press stops at a failure: no summary


def test_tracker_writes_go_to_the_artifact_with_the_rows_values() -> None:
    """Same values, same rate: the artifact is written exactly when the row is."""
    written: list[tuple[int, int | None, int | None]] = []

    class Rows:
        def set_progress(self, job_id: str, progress: int, processed: Any = None, total: Any = None) -> None:
            written.append((progress, processed, total))

    sink = Recorder(block=threading.Event())  # nothing reaches the sink until released
    now = [0.0]
    with run_artifacts(ANALYSIS, "cjob3", "00000000-0000-0000-0000-000000000003", sink):
        run = artifacts._active["cjob3"]
        mirrored: list[int] = []
        original = run.step_progress
        run.step_progress = lambda i, p, r: (mirrored.append(p), original(i, p, r))  # type: ignore[method-assign]
        tracker = ProgressTracker(Rows(), "cjob3", 0, 1, 1.0, clock=lambda: now[0])  # type: ignore[arg-type]
        for processed in range(1, 121):  # 120 lines in 1.2 s: two or three writes
            tracker.report(ProgressReport(processed / 120, processed, 120))
            now[0] += 0.01
        tracker.flush()
        assert mirrored == [progress for progress, _, _ in written] and 2 <= len(written) <= 3
        assert run.percent == 99
        sink.block.set()  # type: ignore[union-attr]
    assert sink.of("progress")[-1][2:] == (100, "sync-press-analysis: done")


def test_a_dead_api_neither_raises_nor_blocks_the_run() -> None:
    failing = Recorder(fail=True)
    with run_artifacts(ANALYSIS, "cjob4", "00000000-0000-0000-0000-000000000004", failing) as results:
        artifacts.step_progress("cjob4", 0, 40, ProgressReport(0.4, 40, 100))
        results.append(ok(ANALYSIS.steps[0]))
    assert failing.of("table")  # every call was tried, each failure swallowed

    stuck = Recorder(block=threading.Event())
    writer = ArtifactWriter(stuck)
    run = RunArtifacts(ANALYSIS, writer)
    started = time.monotonic()
    for percent in range(100):
        run.step_progress(0, percent, None)  # never waits for the stuck API
    assert writer.close(timeout=0.2) is False
    assert time.monotonic() - started < 2
    stuck.block.set()  # type: ignore[union-attr]
    # coalesced: the call that was stuck, then only the latest value
    wait_for(lambda: [c[2] for c in stuck.of("progress")][-1:] == [99], timeout=5, what="the latest value")
    assert len(stuck.of("progress")) <= 2
