"""How each catalog entry is deployed: one `DeploymentSpec` per deployment, the single source for
`serve`, `prefect.yaml`, the shim's event routing and the CLI.

Two flows: `sync-script` (one deployment per standalone script, event `sync/<id>`) and
`sync-group` (one deployment per group). A spec knows its kind, its parameters, the tags and
concurrency it is deployed with, and which `SyncJob.script` its runs write.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from deployments.catalog import Catalog, UnknownTarget
from deployments.ui import group_description, script_description

Kind = Literal["script", "group"]
SCRIPT: Kind = "script"
GROUP: Kind = "group"
SCRIPT_FLOW = "sync-script"
GROUP_FLOW = "sync-group"
FLOW_OF: dict[Kind, str] = {SCRIPT: SCRIPT_FLOW, GROUP: GROUP_FLOW}
# Module paths, not file paths: a worker imports the flows from the installed package, wherever
# (and whether) a checkout is on its machine.
ENTRYPOINTS = {
    SCRIPT_FLOW: "flows.sync_script:sync_script",
    GROUP_FLOW: "flows.sync_group:sync_group",
}
BASE_TAG = "poligraph"  # every deployment; `setup` prunes tagged deployments the catalog dropped
# Each deployment runs one at a time; a second trigger waits its turn instead of being dropped.
DEPLOYMENT_CONCURRENCY: dict[str, Any] = {"limit": 1, "collision_strategy": "ENQUEUE"}


def script_limit_name(script: str) -> str:
    """The global concurrency limit (limit 1) that keeps one script from running twice at once."""
    return f"sync-script:{script}"


@dataclass(frozen=True)
class ScheduleSpec:
    cron: str
    timezone: str
    slug: str


@dataclass(frozen=True)
class DeploymentSpec:
    kind: Kind
    name: str
    description: str  # markdown: what the deployment page shows (deployments/ui.py)
    events: tuple[str, ...]
    row_script: str  # SyncJob.script of the rows its runs create
    critical: bool = False
    schedules: tuple[ScheduleSpec, ...] = field(default=())

    @property
    def flow(self) -> str:
        return FLOW_OF[self.kind]

    @property
    def full_name(self) -> str:
        """What `prefect deployment run` takes: flow/deployment."""
        return f"{self.flow}/{self.name}"

    @property
    def entrypoint(self) -> str:
        return ENTRYPOINTS[self.flow]

    @property
    def parameters(self) -> dict[str, Any]:
        """The deployment's fixed parameters: which script or group it runs."""
        return {self.kind: self.name}

    @property
    def tags(self) -> list[str]:
        critical = ["critical"] if self.critical else []
        return [BASE_TAG, self.kind, *critical, *(f"event:{e}" for e in self.events)]


def deployment_specs(catalog: Catalog) -> list[DeploymentSpec]:
    specs = [
        DeploymentSpec(
            kind=SCRIPT,
            name=script.id,
            description=script_description(script),
            events=(script.event,),
            row_script=script.id,
            critical=script.critical,
        )
        for script in catalog.standalone_scripts
    ]
    specs += [
        DeploymentSpec(
            kind=GROUP,
            name=group.name,
            description=group_description(catalog, group),
            events=group.events,
            row_script=group.row_script,
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


def row_script_for(catalog: Catalog, parameters: Mapping[str, Any]) -> str | None:
    """SyncJob.script for a run of either flow, from its parameters (None if neither is set)."""
    if script := parameters.get(SCRIPT):
        return str(script)
    group = parameters.get(GROUP)
    if not group:
        return None
    try:
        return catalog.group(str(group)).row_script
    except UnknownTarget:
        return str(group)


def is_critical(catalog: Catalog, script: str | None) -> bool:
    """A critical script's failure for good alerts the webhook."""
    if not script:
        return False
    try:
        return catalog.script(script).critical
    except UnknownTarget:
        return False
