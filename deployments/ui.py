"""What operators read in the Prefect UI, from the catalog: deployment descriptions, the run
form's parameter descriptions and choices, and the keys of the artifacts every run leaves.

Text and JSON only, no Prefect: `parameter_schema` takes the schema Prefect builds from a flow's
signature and returns this deployment's version of it (docs/prefect.md, "Run form").
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from typing import Any

from deployments.catalog import Catalog, Group, Script
from deployments.flags import MAX_INT, FlagSpec

PROGRESS, STEPS, SUMMARY = "progress", "steps", "summary"
_NOT_IN_KEY = re.compile(r"[^a-z0-9-]+")

JOB_ID_HELP = (
    "The SyncJob row this run keeps up to date (the admin page sends its id). "
    "Leave empty: the run creates its own row, with an id derived from the flow-run id."
)


def artifact_key(deployment: str, kind: str) -> str:
    """`<deployment>-<kind>`: the same key for every run of a deployment, so the UI's Artifacts
    page shows its latest version. Prefect accepts lowercase letters, digits and dashes only."""
    return _NOT_IN_KEY.sub("-", f"{deployment}-{kind}".lower()).strip("-")


# --- deployment descriptions (markdown: the deployment page renders it) ----------------------------


def latest_links(deployment: str, summary: bool = False) -> str:
    """Links from the deployment page (/deployments/deployment/<id>) to its latest artifacts."""
    kinds = [PROGRESS, STEPS, *([SUMMARY] if summary else [])]
    links = [f"[{kind}](../../artifacts/key/{artifact_key(deployment, kind)})" for kind in kinds]
    return "Latest run: " + " · ".join(links)


def script_description(script: Script) -> str:
    facts = []
    if script.disabled:
        facts.append(f"**Disabled**: {script.disabled}")
    if script.critical:
        facts.append("Critical: a failure for good alerts the webhook.")
    defaults = " ".join(script.default_flags)
    facts.append(f"Default flags: `{defaults}`." if defaults else "No default flags.")
    facts.append(f"Event `{script.event}`.")
    return "\n\n".join([script.title, " ".join(facts), latest_links(script.id)])


def group_description(catalog: Catalog, group: Group) -> str:
    if group.continue_on_failure:
        how = "Steps, in order; the run goes on past a failing step and fails only when a required one fails:"
    else:
        how = "Steps, in order; the run stops at the first step that fails for good:"
    steps = []
    for number, step in enumerate(group.steps, start=1):
        notes = [
            *(["required"] if step.required and group.continue_on_failure else []),
            *(["takes `limit`"] if step.takes_limit else []),
            *(["disabled: skipped"] if catalog.script(step.script).disabled else []),
        ]
        command = " ".join([step.script, *step.flags])
        steps.append(f"{number}. {step.name}: `{command}`" + (f" ({', '.join(notes)})" if notes else ""))
    events = ", ".join(f"`{e}`" for e in group.events)
    schedules = "".join(f" Cron `{s.cron}` {s.timezone}." for s in group.schedules)
    return "\n\n".join(
        [
            group.description,
            how + "\n\n" + "\n".join(steps),
            f"Events {events}.{schedules}",
            latest_links(group.name, summary=group.continue_on_failure),
        ]
    )


# --- the run form ------------------------------------------------------------------------------------


def flag_usage(name: str, spec: FlagSpec) -> str:
    if spec.kind == "bool":
        return f"--{name}"
    if spec.kind == "int":
        return f"--{name}=N"
    if spec.kind == "choice":
        return f"--{name}={'|'.join(spec.choices)}"
    return f"--{name}=TEXT"


def flag_help(name: str, spec: FlagSpec) -> str:
    usage = flag_usage(name, spec)
    notes = [
        *([spec.help] if spec.help else []),
        *([f"N from {spec.min} to {MAX_INT}"] if spec.kind == "int" else []),
    ]
    return f"{usage} ({'; '.join(notes)})" if notes else usage


def flag_items(allowed: Mapping[str, FlagSpec]) -> dict[str, Any]:
    """Items of the `flags` array: the flags to pick from, or any text.

    Any text is accepted here on purpose: the flow checks every flag against the catalog and
    refuses a bad one with the catalog's reason, which a schema error could not give.
    """
    choices = [f"--{name}" for name, spec in allowed.items() if spec.kind == "bool"]
    choices += [
        f"--{name}={choice}"
        for name, spec in allowed.items()
        if spec.kind == "choice"
        for choice in spec.choices
    ]
    valued = [flag_usage(name, spec) for name, spec in allowed.items() if spec.kind in ("int", "text")]
    typed = {
        "title": "Type a flag",
        "type": "string",
        "description": f"e.g. {', '.join(valued)}" if valued else "a flag the list does not show",
    }
    if not choices:
        return typed
    return {"anyOf": [{"title": "Pick a flag", "type": "string", "enum": choices}, typed]}


def script_flags_help(script: Script, allowed: Mapping[str, FlagSpec]) -> str:
    defaults = " ".join(script.default_flags)
    replaces = (
        f"Replaces the default flags of {script.id} ({defaults})"
        if defaults
        else f"Flags for {script.id}, which has no default flags"
    )
    listed = "; ".join(flag_help(name, spec) for name, spec in allowed.items())
    return (
        f"{replaces}. An empty list runs it with no flags; leaving this unset keeps the defaults. "
        f"Allowed: {listed}. Anything else fails the run before the script starts, with the reason."
    )


def script_limit_help(script: Script, allowed: Mapping[str, FlagSpec]) -> str:
    if "limit" not in allowed:
        return f"{script.id} takes no --limit: a value fails the run before the script starts."
    default = next((flag for flag in script.default_flags if flag.startswith("--limit=")), None)
    return "Sets --limit=N (a whole number from 1), replacing any --limit in flags or in the defaults" + (
        f" ({default})." if default else "."
    )


def group_limit_help(group: Group) -> str:
    takers = [step for step in group.steps if step.takes_limit]
    if not takers:
        return f"Group {group.name} takes no limit: a value fails the run at once."
    names = ", ".join(f"{step.name} ({step.script})" for step in takers)
    default = f"unset: {group.default_limit}" if group.default_limit else "unset: the step's own flags"
    return f"--limit=N of step {names}; {default}. The other steps keep their own flags."


def parameter_schema(base: Mapping[str, Any], catalog: Catalog, kind: str, name: str) -> dict[str, Any]:
    """`base` (the flow's schema) with this deployment's descriptions, its fixed script or group
    shown read-only, and for a script the flags it allows as choices."""
    schema = copy.deepcopy(dict(base))
    properties: dict[str, Any] = schema.setdefault("properties", {})
    if kind in properties:  # what Prefect's own `freeze` marks: shown, fixed, checked
        properties[kind].update(
            readOnly=True, enum=[name], description=f"The catalog {kind} this deployment runs (fixed)."
        )
    _describe(properties, "job_id", JOB_ID_HELP)
    if kind == "script":
        script = catalog.script(name)
        allowed = catalog.allowed_flags(name)
        _describe(properties, "flags", script_flags_help(script, allowed))
        if (array := _array_branch(properties.get("flags"))) is not None:
            array["items"] = flag_items(allowed)
        _describe(properties, "limit", script_limit_help(script, allowed))
    else:
        _describe(properties, "limit", group_limit_help(catalog.group(name)))
    return schema


def _describe(properties: dict[str, Any], name: str, text: str) -> None:
    if name in properties:
        properties[name]["description"] = text


def _array_branch(prop: dict[str, Any] | None) -> dict[str, Any] | None:
    """The array schema of an `Optional[list[str]]` property (`anyOf: [array, null]`)."""
    if prop is None:
        return None
    branches: list[dict[str, Any]] = prop.get("anyOf", [prop])
    return next((branch for branch in branches if branch.get("type") == "array"), None)
