"""The catalog: every script, group, event and schedule, typed (the data is `catalog.yaml`).

`get_catalog()` is the catalog this process is configured with (POLIGRAPH_CATALOG), loaded and
checked once; `load_catalog(path)` reads any file. Loading refuses an inconsistent catalog
(unknown scripts or flags, an event with two handlers, an admin id without a handler).
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated

import yaml
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from deployments.errors import CoreError
from deployments.flags import FlagSpec, validate_flags
from deployments.settings import get_settings

Slug = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9-]*$", max_length=100)]
EVENT_RE = re.compile(r"^[a-z0-9-]+/[a-z0-9-]+$")


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AdminEntry(Model):
    """How the admin page (`SCRIPT_CATALOG`) shows the script."""

    category: str
    label: str
    description: str = ""

    @property
    def title(self) -> str:
        """What the admin shows: `Assemblée nationale — Députés, commissions, groupes`."""
        return f"{self.label} — {self.description}" if self.description else self.label


class Script(Model):
    id: Slug
    description: str = ""
    admin: AdminEntry | None = None
    flags: tuple[str, ...] = ()  # allowed beyond the catalog's standard flags
    default_flags: tuple[str, ...] = ()
    timeout_minutes: float = Field(default=10, gt=0)
    retries: int = Field(default=2, ge=0, le=10)
    critical: bool = False
    standalone: bool = True  # gets its own deployment, triggered by sync/<id>
    disabled: str | None = None  # why the script must not run; steps using it are skipped

    @property
    def event(self) -> str:
        return f"sync/{self.id}"

    @property
    def title(self) -> str:
        """The admin's label and description, else the catalog's description, else the id."""
        return self.admin.title if self.admin else self.description or self.id


class Step(Model):
    name: Slug
    script: Slug
    flags: tuple[str, ...] = ()
    timeout_minutes: float | None = Field(default=None, gt=0)
    required: bool = False  # for continue_on_failure groups: fail the run when this step fails
    takes_limit: bool = False  # the run's `limit` parameter replaces this step's --limit


class Schedule(Model):
    cron: str
    timezone: str = "UTC"
    slug: Slug


class Group(Model):
    name: Slug
    description: str
    events: tuple[str, ...]
    job_script: Slug | None = None  # SyncJob.script of the rows it creates; default: name
    steps: tuple[Step, ...] = Field(min_length=1)
    continue_on_failure: bool = False
    step_timeout_minutes: float | None = Field(default=None, gt=0)
    default_limit: int | None = Field(default=None, ge=1)
    schedules: tuple[Schedule, ...] = ()

    @property
    def row_script(self) -> str:
        return self.job_script or self.name


class Catalog(Model):
    flags: dict[str, FlagSpec]
    standard_flags: tuple[str, ...]
    scripts: tuple[Script, ...]
    groups: tuple[Group, ...]

    @model_validator(mode="after")
    def _check(self) -> Catalog:
        ids = [s.id for s in self.scripts]
        _no_duplicates("script", ids)
        _no_duplicates("group", [g.name for g in self.groups])
        for name in self.standard_flags:
            _known_flag(self, name, "standard_flags")
        for script in self.scripts:
            for name in script.flags:
                _known_flag(self, name, script.id)
            validate_flags(script.id, list(script.default_flags), self.allowed_flags(script.id))
        for group in self.groups:
            for event in group.events:
                if not EVENT_RE.match(event):
                    raise ValueError(f"group {group.name}: bad event name {event!r}")
            _no_duplicates(f"step of {group.name}", [s.name for s in group.steps])
            for step in group.steps:
                if step.script not in ids:
                    raise ValueError(f"group {group.name}: unknown script {step.script}")
                validate_flags(step.script, list(step.flags), self.allowed_flags(step.script))
        events = self.event_targets()  # raises on an event with two handlers
        for script in self.scripts:
            if script.admin and script.event not in events:
                raise ValueError(f"admin script {script.id} has no handler for {script.event}")
        _no_duplicates("deployment", [s.id for s in self.standalone_scripts] + [g.name for g in self.groups])
        return self

    # --- lookups -------------------------------------------------------------------------
    @property
    def standalone_scripts(self) -> list[Script]:
        return [s for s in self.scripts if s.standalone]

    def script(self, script_id: str) -> Script:
        for script in self.scripts:
            if script.id == script_id:
                return script
        raise UnknownTarget(f"unknown script {script_id!r}")

    def group(self, name: str) -> Group:
        for group in self.groups:
            if group.name == name:
                return group
        raise UnknownTarget(f"unknown group {name!r}")

    def allowed_flags(self, script_id: str) -> dict[str, FlagSpec]:
        script = self.script(script_id)
        names = [*self.standard_flags, *script.flags]
        return {name: self.flags[name] for name in names}

    def event_targets(self) -> dict[str, tuple[str, str]]:
        """event name -> ("script" | "group", name)."""
        targets: dict[str, tuple[str, str]] = {}
        pairs = [(s.event, ("script", s.id)) for s in self.standalone_scripts]
        pairs += [(e, ("group", g.name)) for g in self.groups for e in g.events]
        for event, target in pairs:
            if event in targets:
                raise ValueError(f"event {event} has two handlers: {targets[event]} and {target}")
            targets[event] = target
        return targets


class UnknownTarget(CoreError, KeyError):
    """A script or group name the catalog does not know."""

    def __str__(self) -> str:
        return str(self.args[0])


def _no_duplicates(what: str, names: list[str]) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ValueError(f"duplicate {what} {name!r}")
        seen.add(name)


def _known_flag(catalog: Catalog, name: str, where: str) -> None:
    if name not in catalog.flags:
        raise ValueError(f"{where}: flag {name!r} is not defined under flags:")


# libyaml's safe loader when PyYAML was built with it: the same documents, parsed ~10x faster
# (a flow run loads the catalog before its first step).
_SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_catalog(path: Path) -> Catalog:
    with path.open(encoding="utf-8") as handle:
        return Catalog.model_validate(yaml.load(handle, Loader=_SafeLoader))


@lru_cache(maxsize=4)
def _load_cached(path: Path) -> Catalog:
    return load_catalog(path)


def get_catalog() -> Catalog:
    """The catalog this process is configured with (POLIGRAPH_CATALOG), loaded once."""
    return _load_cached(get_settings().catalog)
