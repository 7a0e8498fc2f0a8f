"""Turn a run request (a script or a group, plus parameters) into the exact steps to execute.

A plan is complete and checked before anything starts: unknown names and bad flags raise here.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from deployments.catalog import Catalog, Group
from deployments.flags import FlagError, validate_flags, with_limit


class PlannedStep(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    script: str
    flags: tuple[str, ...]
    timeout_seconds: float
    retries: int
    required: bool = False
    disabled: str | None = None
    critical: bool = False  # a failure for good alerts the webhook


class Plan(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str  # the script or group: its deployment's name, and the base of its artifact keys
    job_script: str  # what SyncJob.script says for rows this run creates
    steps: tuple[PlannedStep, ...]
    continue_on_failure: bool = False


def plan_script(
    catalog: Catalog, script_id: str, flags: list[str] | None = None, limit: int | None = None
) -> Plan:
    """One script alone. Given `flags` replace the catalog defaults; `limit` sets --limit."""
    script = catalog.script(script_id)
    chosen = list(script.default_flags) if flags is None else list(flags)
    checked = validate_flags(script.id, chosen, catalog.allowed_flags(script.id))
    if limit is not None:
        checked = validate_flags(script.id, with_limit(checked, limit), catalog.allowed_flags(script.id))
    step = PlannedStep(
        name=script.id,
        script=script.id,
        flags=tuple(checked),
        timeout_seconds=script.timeout_minutes * 60,
        retries=script.retries,
        disabled=script.disabled,
        required=True,
        critical=script.critical,
    )
    return Plan(name=script.id, job_script=script.id, steps=(step,))


def plan_group(catalog: Catalog, group_name: str, limit: int | None = None) -> Plan:
    group: Group = catalog.group(group_name)
    if limit is not None and not any(step.takes_limit for step in group.steps):
        raise FlagError(f"group {group.name} takes no limit")
    limit = limit if limit is not None else group.default_limit
    steps = []
    for step in group.steps:
        script = catalog.script(step.script)
        flags = list(step.flags)
        if step.takes_limit and limit is not None:
            flags = with_limit(flags, limit)
        checked = validate_flags(script.id, flags, catalog.allowed_flags(script.id))
        minutes = step.timeout_minutes or group.step_timeout_minutes or script.timeout_minutes
        steps.append(
            PlannedStep(
                name=step.name,
                script=script.id,
                flags=tuple(checked),
                timeout_seconds=minutes * 60,
                retries=script.retries,
                required=step.required or not group.continue_on_failure,
                disabled=script.disabled,
                critical=script.critical,
            )
        )
    return Plan(
        name=group.name,
        job_script=group.row_script,
        steps=tuple(steps),
        continue_on_failure=group.continue_on_failure,
    )
