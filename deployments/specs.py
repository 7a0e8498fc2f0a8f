"""One deployment description per catalog entry, shared by `serve` and `prefect.yaml`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from deployments.models import Catalog

SCRIPT_FLOW = "sync-script"
GROUP_FLOW = "sync-group"
ENTRYPOINTS = {
    SCRIPT_FLOW: "flows/sync_script.py:sync_script",
    GROUP_FLOW: "flows/sync_group.py:sync_group",
}


@dataclass(frozen=True)
class ScheduleSpec:
    cron: str
    timezone: str
    slug: str


@dataclass(frozen=True)
class DeploymentSpec:
    flow: str  # SCRIPT_FLOW or GROUP_FLOW
    name: str
    description: str
    parameters: dict[str, Any]
    events: tuple[str, ...]
    tags: tuple[str, ...]
    schedules: tuple[ScheduleSpec, ...] = field(default=())

    @property
    def full_name(self) -> str:
        """What `prefect deployment run` takes: flow/deployment."""
        return f"{self.flow}/{self.name}"

    @property
    def entrypoint(self) -> str:
        return ENTRYPOINTS[self.flow]


def deployment_specs(catalog: Catalog) -> list[DeploymentSpec]:
    specs = [
        DeploymentSpec(
            flow=SCRIPT_FLOW,
            name=script.id,
            description=script.admin.label if script.admin else script.description or script.id,
            parameters={"script": script.id},
            events=(script.event,),
            tags=("poligraph", "script", *(("critical",) if script.critical else ())),
        )
        for script in catalog.standalone_scripts
    ]
    specs += [
        DeploymentSpec(
            flow=GROUP_FLOW,
            name=group.name,
            description=group.description,
            parameters={"group": group.name},
            events=group.events,
            tags=("poligraph", "group"),
            schedules=tuple(ScheduleSpec(s.cron, s.timezone, s.slug) for s in group.schedules),
        )
        for group in catalog.groups
    ]
    return specs


def spec_for_event(catalog: Catalog, event: str) -> DeploymentSpec | None:
    for spec in deployment_specs(catalog):
        if event in spec.events:
            return spec
    return None
