"""Serve every catalog deployment (with schedules) from this process, and run the reconciler.

    python -m scripts.serve

Runs execute in subprocesses of this one, forked from a server process that has Prefect and the
flows imported (scripts/forkserver.py). `limit` is explicit (None would mean unlimited) and
`pause_on_shutdown=False` keeps the crons active across restarts (docs/prefect.md, "serve").

Imports are inside the functions so that `import scripts.serve` stays cheap.
"""

from __future__ import annotations

import asyncio
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prefect.deployments.runner import RunnerDeployment

    from deployments.specs import DeploymentSpec


def runner_deployment(spec: DeploymentSpec) -> RunnerDeployment:
    """The deployment as served, with the same description and run form as `prefect deploy`'s."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
    from prefect.deployments.runner import RunnerDeployment
    from prefect.schedules import Cron

    from deployments.catalog import get_catalog
    from deployments.specs import DEPLOYMENT_CONCURRENCY
    from scripts.run_forms import flow_of, with_run_form

    one_at_a_time = ConcurrencyLimitConfig(
        limit=DEPLOYMENT_CONCURRENCY["limit"],
        collision_strategy=ConcurrencyLimitStrategy(DEPLOYMENT_CONCURRENCY["collision_strategy"]),
    )
    deployment = flow_of(spec).to_deployment(
        name=spec.name,
        description=spec.description,
        parameters=spec.parameters,
        tags=spec.tags,
        concurrency_limit=one_at_a_time,
        schedules=[Cron(s.cron, timezone=s.timezone, slug=s.slug) for s in spec.schedules],
    )
    assert isinstance(deployment, RunnerDeployment)  # called from sync code: not a coroutine
    return with_run_form(deployment, get_catalog(), spec)


def main() -> None:
    from deployments.settings import get_settings
    from scripts.prefect_settings import small_ca_bundle_over_http

    # before Prefect is imported: its settings (handed to every run) are read then
    small_ca_bundle_over_http(os.environ, get_settings().home)

    from deployments.catalog import get_catalog
    from deployments.specs import deployment_specs
    from scripts.forkserver import serve_forked
    from scripts.limits import ensure_script_limits
    from scripts.reconcile import Reconciler
    from scripts.run_forms import flow_of

    catalog = get_catalog()
    asyncio.run(ensure_script_limits(catalog))
    deployments = [(runner_deployment(spec), flow_of(spec)) for spec in deployment_specs(catalog)]
    reconciler = Reconciler()  # its first pass also catches runs left dead by a previous stop
    reconciler.start()
    try:
        settings = get_settings()
        serve_forked(deployments, limit=settings.serve_limit, poll_seconds=settings.serve_poll_seconds)
    finally:
        reconciler.stop()


if __name__ == "__main__":
    main()
