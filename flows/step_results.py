"""What a step did, and the summary of a whole run, in the shapes `SyncJob.result` stores.

step:    {"name", "script", "status": "succeeded", "exitCode", "durationSeconds", "attempts"}
         {"name", "script", "status": "failed", "error"}
         {"name", "script", "status": "skipped", "reason"}
summary: {"total", "succeeded", "failed", "failures": [step names], "skipped": [step names]}
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from deployments.safe_text import safe_text

StepStatus = Literal["succeeded", "failed", "skipped"]
ERROR_CHARS = 500  # a step's error inside `result` (safe text); the row's `error` column has the full text


@dataclass(frozen=True)
class StepResult:
    name: str
    script: str
    status: StepStatus
    exit_code: int | None = None
    duration_seconds: float | None = None
    attempts: int | None = None
    error: str | None = None  # failed
    reason: str | None = None  # skipped

    @classmethod
    def succeeded(
        cls, name: str, script: str, exit_code: int | None, duration: float, attempts: int
    ) -> StepResult:
        return cls(name, script, "succeeded", exit_code, duration, attempts)

    @classmethod
    def failed(cls, name: str, script: str, error: str) -> StepResult:
        return cls(name, script, "failed", error=safe_text(error, ERROR_CHARS))

    @classmethod
    def skipped(cls, name: str, script: str, reason: str) -> StepResult:
        return cls(name, script, "skipped", reason=reason)

    def as_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"name": self.name, "script": self.script, "status": self.status}
        if self.status == "succeeded":
            body |= {
                "exitCode": self.exit_code,
                "durationSeconds": self.duration_seconds,
                "attempts": self.attempts,
            }
        elif self.status == "failed":
            body["error"] = self.error
        else:
            body["reason"] = self.reason
        return body


def summarize(results: list[StepResult]) -> dict[str, Any]:
    """{total, succeeded, failed, failures, skipped}: what a group run returns."""
    failures = [r.name for r in results if r.status == "failed"]
    skipped = [r.name for r in results if r.status == "skipped"]
    return {
        "total": len(results),
        "succeeded": len(results) - len(failures) - len(skipped),
        "failed": len(failures),
        "failures": failures,
        "skipped": skipped,
    }
