"""The work pool and the catalog's deployments, created through Prefect's API: what `setup`
does for the pool, and what the worker does at start with POLIGRAPH_WORKER_DEPLOY (a few seconds,
where `prefect deploy --all` takes 15 to 20 s).

The pool's worker type is passed in, not imported: the worker module deploys through this one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prefect.client.orchestration import PrefectClient, get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.exceptions import ObjectNotFound

from deployments.catalog import Catalog, get_catalog
from deployments.prefect_yaml import WORK_POOL
from deployments.specs import deployment_specs
from scripts.errors import OperationError
from scripts.run_forms import flow_of, with_run_form

if TYPE_CHECKING:
    from prefect.deployments.runner import RunnerDeployment
    from prefect.workers.base import BaseWorker

    from deployments.specs import DeploymentSpec


class WrongPoolType(OperationError):
    """A work pool of that name exists with another worker type."""

    exit_code = 2


async def ensure_work_pool(
    client: PrefectClient, worker: type[BaseWorker[Any, Any, Any]], name: str = WORK_POOL
) -> bool:
    """Create the work pool (of `worker`'s type) if missing; True when it was created."""
    try:
        pool = await client.read_work_pool(name)
    except ObjectNotFound:
        template = worker.get_default_base_job_template()
        await client.create_work_pool(WorkPoolCreate(name=name, type=worker.type, base_job_template=template))
        return True
    if pool.type != worker.type:
        raise WrongPoolType(
            f"work pool {name} is of type {pool.type!r}, this version runs a {worker.type!r} pool: stop its "
            f"workers, `prefect work-pool delete {name}`, then run setup again (deployments are kept)"
        )
    return False


async def runner_deployment(spec: DeploymentSpec) -> RunnerDeployment:
    """The deployment as the worker's `POLIGRAPH_WORKER_DEPLOY` creates it, with the same
    description, run form, schedules and concurrency as `prefect deploy` of prefect.yaml."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
    from prefect.schedules import Cron

    from deployments.specs import DEPLOYMENT_CONCURRENCY

    one_at_a_time = ConcurrencyLimitConfig(
        limit=DEPLOYMENT_CONCURRENCY["limit"],
        collision_strategy=ConcurrencyLimitStrategy(DEPLOYMENT_CONCURRENCY["collision_strategy"]),
    )
    deployment = await flow_of(spec).ato_deployment(
        name=spec.name,
        description=spec.description,
        parameters=spec.parameters,
        tags=spec.tags,
        concurrency_limit=one_at_a_time,
        schedules=[Cron(s.cron, timezone=s.timezone, slug=s.slug) for s in spec.schedules],
    )
    deployment.entrypoint = spec.entrypoint  # the installed module, wherever this checkout is
    return with_run_form(deployment, get_catalog(), spec)


async def apply_deployments(
    catalog: Catalog, worker: type[BaseWorker[Any, Any, Any]], work_pool: str = WORK_POOL
) -> int:
    """The work pool (of `worker`'s type) if missing, then every catalog deployment created or
    updated in it, through the API; returns how many."""
    specs = deployment_specs(catalog)
    async with get_client() as client:
        await ensure_work_pool(client, worker, work_pool)
    for spec in specs:
        deployment = await runner_deployment(spec)
        await deployment.aapply(work_pool_name=work_pool)
    return len(specs)
