"""Event → deployment and flow parameters, from the catalog; refused data says why.

Event data keys (what the admin and the app's CLI send, docs/app-facts.md "The events"):
    jobId   the SyncJob row the admin created (the run then owns it)
    limit   a positive whole number (--limit)
    flags   a string of flags, "--all --limit=5" (split on spaces, never given to a shell)
    <flag>  any flag the script allows, as the app's CLI sends them: {"all": true, "type": "PARTY"}
Anything else, or a value the catalog does not allow, starts no run.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from deployments.catalog import Catalog
from deployments.flags import FlagError
from deployments.plans import plan_group, plan_script
from deployments.specs import GROUP, DeploymentSpec, deployment_specs, spec_for_event
from shim.jsonvalues import JSONObject
from shim.text import printable

# A SyncJob id as the app makes them (Prisma cuid: "c" + 24 base-36 characters), with room for
# uuid- or cuid2-shaped ids; anything else is not used as a row id.
JOB_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
JOB_ID_RULE = "1 to 64 characters of A-Z a-z 0-9 _ -"
REASON_MAX_CHARS = 1000


class Action(StrEnum):
    """What an event will do; stored as its value in the outbox's `action` column."""

    RUN = "run"  # create a flow run
    FAIL_JOB = "fail_job"  # no run; mark the given SyncJob FAILED with the reason
    NOTHING = "nothing"  # no run, no row to tell


RUN, FAIL_JOB, NOTHING = Action.RUN, Action.FAIL_JOB, Action.NOTHING


class EventOutcome(StrEnum):
    """What intake reports of each stored event: the `outcome` label of
    `poligraph_shim_events_total`, and the Prefect event `inngest.event.<outcome>`."""

    ACCEPTED = "accepted"  # a run will be created
    DUPLICATE = "duplicate"  # its dedupe key was held: no run
    REFUSED = "refused"  # no run: its reason says why


@dataclass(frozen=True)
class EventAction:
    action: Action
    deployment: str | None = None  # flow/deployment
    parameters: JSONObject | None = None
    job_id: str | None = None
    reason: str | None = None


def map_event(catalog: Catalog, name: str, data: JSONObject) -> EventAction:
    return _map(PlanCheck(catalog), spec_for_event(catalog, name), name, data)


def map_events(catalog: Catalog, events: list[tuple[str, JSONObject]]) -> list[EventAction]:
    """`map_event` for each (name, data) of a request."""
    return EventRouter(catalog).map_events(events)


class EventRouter:
    """Events -> actions for one catalog, its event table built once (listing the deployments
    costs ~1.5 ms: more than the rest of a request)."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self._by_event = {
            event: spec for spec in reversed(deployment_specs(catalog)) for event in spec.events
        }
        self._plans = PlanCheck(catalog)

    def map_events(self, events: list[tuple[str, JSONObject]]) -> list[EventAction]:
        return [_map(self._plans, self._by_event.get(name), name, data) for name, data in events]


class PlanCheck:
    """Checks that a run request makes a valid plan (raises FlagError/ValueError otherwise), and
    remembers the requests that passed: the same button pressed again is a set lookup instead of
    a plan (~25 µs, a tenth of a request's work). Bounded: forgets everything past `MAX_KEPT`."""

    MAX_KEPT = 1024

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self._passed: set[tuple[str, str, tuple[str, ...] | None, int | None]] = set()

    def __call__(self, kind: str, target: str, flags: list[str] | None, limit: int | None) -> None:
        key = (kind, target, None if flags is None else tuple(flags), limit)
        if key in self._passed:
            return
        if kind == GROUP:
            plan_group(self.catalog, target, limit=limit)
        else:
            plan_script(self.catalog, target, flags=flags, limit=limit)
        if len(self._passed) >= self.MAX_KEPT:
            self._passed.clear()
        self._passed.add(key)


def _map(plans: PlanCheck, spec: DeploymentSpec | None, name: str, data: JSONObject) -> EventAction:
    raw_job = data.get("jobId")
    job_id = raw_job if isinstance(raw_job, str) and JOB_ID_RE.fullmatch(raw_job) else None
    if spec is None:
        return _refuse(job_id, f"no flow handles {name}")
    if raw_job is not None and job_id is None:
        # No row is touched for an id that cannot be one (empty, huge, odd characters).
        return _refuse(None, f"jobId must be a SyncJob id ({JOB_ID_RULE}), got {raw_job!r}")
    try:
        parameters = _parameters(plans, spec.kind, spec.name, data)
    except (FlagError, ValueError) as exc:
        return _refuse(job_id, f"{name}: {exc}")
    if job_id:
        parameters["job_id"] = job_id
    return EventAction(RUN, deployment=spec.full_name, parameters=parameters, job_id=job_id)


def _refuse(job_id: str | None, reason: str) -> EventAction:
    # The reason quotes the event (its name, a bad flag): stored and shown, so made safe.
    safe = printable(reason, REASON_MAX_CHARS)
    return EventAction(FAIL_JOB if job_id else NOTHING, job_id=job_id, reason=safe)


def _parameters(plans: PlanCheck, kind: str, target: str, data: JSONObject) -> JSONObject:
    parameters: JSONObject = {}
    limit = data.get("limit")
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"limit must be a positive whole number, got {limit!r}")
        parameters["limit"] = limit
    rest = {k: v for k, v in data.items() if k not in ("jobId", "limit", "flags")}
    if kind == GROUP:
        if data.get("flags") or rest:
            keys = sorted([*rest, *(["flags"] if data.get("flags") else [])])
            raise ValueError(f"a group takes no flags (got {', '.join(keys)})")
        plans(kind, target, None, parameters.get("limit"))
        return parameters
    script = target
    flags = _flags(plans.catalog, script, data.get("flags"), rest)
    if flags is not None:
        parameters["flags"] = flags
    plans(kind, script, flags, parameters.get("limit"))  # raises on bad flags
    return parameters


def _flags(catalog: Catalog, script: str, flags: Any, keys: JSONObject) -> list[str] | None:
    items: list[str] = []
    if flags is not None:
        if not isinstance(flags, str):
            raise ValueError(f'flags must be a string like "--all --limit=5", got {flags!r}')
        items = flags.split()
    allowed = catalog.allowed_flags(script)
    for key, value in keys.items():
        name = _kebab(key)
        if name not in allowed:
            raise ValueError(f"unknown key {key!r} (not a flag of {script})")
        if value is True:
            items.append(f"--{name}")
        elif value is False or value is None:
            continue
        elif isinstance(value, int | str) and not isinstance(value, bool):
            items.append(f"--{name}={value}")
        else:
            raise ValueError(f"{key} must be a boolean, a number or a string, got {value!r}")
    return items if (flags is not None or keys) else None


def _kebab(key: str) -> str:
    """dryRun -> dry-run; dry-run stays."""
    return "".join(f"-{c.lower()}" if c.isupper() else c for c in key)
