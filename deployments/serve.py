"""Serve every catalog deployment (with schedules) from this process.

    python -m deployments.serve

Runs execute in subprocesses of this one. `limit` is explicit (None would mean unlimited) and
`pause_on_shutdown=False` keeps the crons active across restarts (prefect-notes §1.1).
"""

from __future__ import annotations

import asyncio

from prefect import serve
from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.deployments.runner import RunnerDeployment
from prefect.schedules import Cron

from deployments.catalog import get_catalog
from deployments.concurrency import ensure_script_limits
from deployments.specs import SCRIPT_FLOW, DeploymentSpec, deployment_specs
from flows.reconcile import Reconciler
from flows.settings import get_settings
from flows.sync_group import sync_group
from flows.sync_script import sync_script

ONE_AT_A_TIME = ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE)


def runner_deployment(spec: DeploymentSpec) -> RunnerDeployment:
    flow = sync_script if spec.flow == SCRIPT_FLOW else sync_group
    return flow.to_deployment(
        name=spec.name,
        description=spec.description,
        parameters=spec.parameters,
        tags=[*spec.tags, *(f"event:{e}" for e in spec.events)],
        concurrency_limit=ONE_AT_A_TIME,
        schedules=[Cron(s.cron, timezone=s.timezone, slug=s.slug) for s in spec.schedules],
    )


def main() -> None:
    catalog = get_catalog()
    asyncio.run(ensure_script_limits(catalog))
    deployments = [runner_deployment(spec) for spec in deployment_specs(catalog)]
    reconciler = Reconciler()  # its first pass also catches runs left dead by a previous stop
    reconciler.start()
    try:
        serve(*deployments, limit=get_settings().serve_limit, pause_on_shutdown=False)
    finally:
        reconciler.stop()


if __name__ == "__main__":
    main()
