"""What a run's artifacts say: the progress line, the steps table, the failures summary.

Text and rows from the plan, the step results and how the run ended, so it is tested without
Prefect. `results[i]` is the result of `plan.steps[i]` (run_steps records one per step, in
order); a run that stopped has fewer results than steps, and `stopped_at` says which step stopped
it, when a step did. Errors carry a script's output: whatever of them is shown is safe text
(`deployments.safe_text`), cut with a marker.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from deployments.plans import Plan, PlannedStep
from deployments.safe_text import safe_text
from flows.progress import ProgressReport
from flows.step_results import ERROR_CHARS, StepResult

NOT_RUN = "not run"
INTERRUPTED = "interrupted"  # cancelled or killed: not an error of the step itself
DETAIL_CHARS = 300
COLUMNS = ("step", "script", "status", "exit code", "duration (s)", "attempts", "detail")


def first_line(text: str, limit: int = DETAIL_CHARS) -> str:
    text = safe_text(text).strip()
    return safe_text(text.splitlines()[0] if text else "", limit)


def step_label(plan: Plan, index: int) -> str:
    """`sync-press-analysis` for a one-script run, else `step 3/16 legislation (sync-legislation)`."""
    step = plan.steps[min(index, len(plan.steps) - 1)]
    if len(plan.steps) == 1:
        return step.script
    return f"step {index + 1}/{len(plan.steps)} {step.name} ({step.script})"


def running(plan: Plan, index: int, report: ProgressReport | None = None) -> str:
    label = step_label(plan, index)
    if report is None:
        return label
    if report.total is not None:
        return f"{label}: {report.processed}/{report.total}"
    return f"{label}: {round(report.fraction * 100)}%"


def stopped_at(
    plan: Plan, results: list[StepResult], current: int, error: BaseException | None
) -> int | None:
    """The step that ended the run, when the run ended inside a step (it then has no result)."""
    if error is None or current >= len(plan.steps) or len(results) != current:
        return None
    return current


def step_rows(
    plan: Plan, results: list[StepResult], current: int, error: BaseException | None
) -> list[dict[str, Any]]:
    """One row per planned step; missing values are empty cells."""
    stop = stopped_at(plan, results, current, error)
    rows = []
    for index, step in enumerate(plan.steps):
        if index < len(results):
            rows.append(_result_row(step, results[index]))
        elif index == stop and error is not None:
            interrupted = not isinstance(error, Exception)
            rows.append(
                _row(
                    step,
                    INTERRUPTED if interrupted else "failed",
                    attempts="" if interrupted else step.retries + 1,  # failed: retries exhausted
                    detail=_why(error),
                )
            )
        else:
            rows.append(_row(step, NOT_RUN))
    return rows


def _result_row(step: PlannedStep, result: StepResult) -> dict[str, Any]:
    if result.status == "succeeded":
        duration = round(result.duration_seconds, 1) if result.duration_seconds is not None else ""
        return _row(step, "succeeded", result.exit_code, duration, result.attempts or "")
    if result.status == "failed":
        return _row(step, "failed", attempts=step.retries + 1, detail=first_line(result.error or ""))
    return _row(step, "skipped", detail=result.reason or "")


def _row(
    step: PlannedStep,
    status: str,
    exit_code: int | None | str = "",
    duration: float | str = "",
    attempts: int | str = "",
    detail: str = "",
) -> dict[str, Any]:
    exit_code = "" if exit_code is None else exit_code
    values = (step.name, step.script, status, exit_code, duration, attempts, detail)
    return dict(zip(COLUMNS, values, strict=True))


def counts(rows: list[dict[str, Any]]) -> str:
    """`14 succeeded, 1 failed, 1 skipped`: the statuses that occur, in a fixed order."""
    seen = Counter(row["status"] for row in rows)
    order = ["succeeded", "failed", INTERRUPTED, "skipped", NOT_RUN]
    return ", ".join(f"{seen[status]} {status}" for status in order if seen[status])


def outcome(plan: Plan, results: list[StepResult], current: int, error: BaseException | None) -> str:
    """How the run ended, in one line: the progress artifact's last description."""
    if error is None:
        if len(plan.steps) == 1:
            return f"{plan.steps[0].script}: done"
        return f"done: {len(plan.steps)} steps, {counts(step_rows(plan, results, current, None))}"
    stop = stopped_at(plan, results, current, error)
    verb = "interrupted" if not isinstance(error, Exception) else "failed"
    if stop is not None:
        return f"{step_label(plan, stop)}: {verb}"
    return f"{verb}: {_why(error)}"


def table_description(plan: Plan, rows: list[dict[str, Any]], ended: str, error: BaseException | None) -> str:
    state = "COMPLETED" if error is None else "FAILED"
    return f"{plan.name} {state}: {counts(rows)}" + ("" if error is None else f" — {ended}")


def failures_markdown(
    plan: Plan, results: list[StepResult], current: int, error: BaseException | None
) -> str:
    """A continue-on-failure run (sync-daily): the failures, the required steps, what was skipped."""
    rows = step_rows(plan, results, current, error)
    by_status: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_status.setdefault(row["status"], []).append(row)
    required = {step.name for step in plan.steps if step.required}
    verdict = "Completed: no required step failed." if error is None else f"**Failed**: {_why(error)}"
    lines = [f"## {plan.name}: {counts(rows)}", "", verdict, "", "### Failures", ""]
    failed = [(i, row) for i, row in enumerate(rows) if row["status"] in ("failed", INTERRUPTED)]
    if not failed:
        lines.append("None.")
    for index, row in failed:
        full = results[index].error if index < len(results) else _why(error, whole=True)
        lines.append(f"- **{row['step']}** (`{row['script']}`), {row['status']}:")
        lines += _fenced(full or row["detail"], indent="  ")
    lines += ["", "### Required steps (a failure fails the run)", ""]
    lines += [f"- **{r['step']}** (`{r['script']}`): {r['status']}" for r in rows if r["step"] in required]
    if skipped := by_status.get("skipped"):
        lines += ["", "### Skipped", ""]
        lines += [f"- **{r['step']}** (`{r['script']}`): {r['detail']}" for r in skipped]
    if not_run := by_status.get(NOT_RUN):
        lines += ["", "### Not run", ""]
        lines += [f"- **{r['step']}** (`{r['script']}`)" for r in not_run]
    return "\n".join(lines) + "\n"


def _why(error: BaseException | None, whole: bool = False) -> str:
    text = (str(error) or type(error).__name__) if error is not None else ""
    return safe_text(text, ERROR_CHARS) if whole else first_line(text)


def _fenced(text: str, indent: str) -> list[str]:
    """`text` as a code block that nothing inside can close (scripts' output is not trusted)."""
    text = safe_text(text)
    fence = "`" * max(3, _longest_backtick_run(text) + 1)
    body = [f"{indent}{line}" for line in text.splitlines() or [""]]
    return [f"{indent}{fence}", *body, f"{indent}{fence}"]


def _longest_backtick_run(text: str) -> int:
    longest = current = 0
    for char in text:
        current = current + 1 if char == "`" else 0
        longest = max(longest, current)
    return longest
