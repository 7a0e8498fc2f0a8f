"""Production setup and roll-out, safe to run again:

    python -m scripts.setup            # work pool (type poligraph) + per-script concurrency
                                       #     limits (+ the shared result storage, when
                                       #     POLIGRAPH_RESULT_STORAGE is set)
    python -m scripts.setup --deploy   # ... then `prefect deploy --all`, each deployment's run
                                       #     form, and prune what the catalog no longer has

The pool is of the worker type this package registers (scripts/worker.py): a pool of another
type with that name (an earlier `process` pool) is refused with what to do, never changed.

Pruning: `prefect deploy` never removes a schedule dropped from prefect.yaml (an empty
`schedules:` does not clear them either) nor a deployment renamed away. Every
deployment tagged `poligraph` that the catalog does not name is deleted, and every schedule
whose slug the catalog does not list is removed.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from prefect.client.orchestration import PrefectClient, get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterTags
from prefect.exceptions import ObjectNotFound

from deployments.catalog import Catalog, get_catalog
from deployments.prefect_yaml import WORK_POOL, render
from deployments.settings import get_settings
from deployments.specs import BASE_TAG, deployment_specs
from scripts import result_storage
from scripts.limits import ensure_script_limits
from scripts.run_forms import apply_run_forms, flow_of, with_run_form

if TYPE_CHECKING:
    from prefect.deployments.runner import RunnerDeployment

    from deployments.specs import DeploymentSpec


class WrongPoolType(Exception):
    """A work pool of that name exists with another worker type."""


async def ensure_work_pool(client: PrefectClient, name: str = WORK_POOL) -> bool:
    """Create the work pool (this package's worker type) if missing; True when it was created."""
    from scripts.worker import WORKER_TYPE, PoligraphWorker

    try:
        pool = await client.read_work_pool(name)
    except ObjectNotFound:
        template = PoligraphWorker.get_default_base_job_template()
        await client.create_work_pool(WorkPoolCreate(name=name, type=WORKER_TYPE, base_job_template=template))
        return True
    if pool.type != WORKER_TYPE:
        raise WrongPoolType(
            f"work pool {name} is of type {pool.type!r}, this version runs a {WORKER_TYPE!r} pool: stop its "
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


async def apply_deployments(catalog: Catalog, work_pool: str = WORK_POOL) -> int:
    """Every catalog deployment created or updated in the work pool, through the API (a few
    seconds, where `prefect deploy --all` takes 15 to 20 s); returns how many."""
    specs = deployment_specs(catalog)
    async with get_client() as client:
        await ensure_work_pool(client, work_pool)
    for spec in specs:
        deployment = await runner_deployment(spec)
        await deployment.aapply(work_pool_name=work_pool)
    return len(specs)


async def prune(client: PrefectClient, catalog: Catalog) -> list[str]:
    """Delete stale deployments and schedules; return what was removed."""
    specs = {spec.full_name: spec for spec in deployment_specs(catalog)}
    flows = {flow.id: flow.name for flow in await client.read_flows()}
    removed = []
    deployments = await client.read_deployments(
        deployment_filter=DeploymentFilter(tags=DeploymentFilterTags(all_=[BASE_TAG])), limit=200
    )
    for deployment in deployments:
        full_name = f"{flows.get(deployment.flow_id, '?')}/{deployment.name}"
        spec = specs.get(full_name)
        if spec is None:
            await client.delete_deployment(deployment.id)
            removed.append(f"deployment {full_name}")
            continue
        wanted = {schedule.slug for schedule in spec.schedules}
        for schedule in deployment.schedules:
            if schedule.slug not in wanted:
                await client.delete_deployment_schedule(deployment.id, schedule.id)
                removed.append(f"schedule {schedule.slug or schedule.id} of {full_name}")
    return removed


def deploy_prefect_yaml(catalog: Catalog) -> None:
    """`prefect deploy --all` of prefect.yaml as the catalog in effect renders it (the file this
    repository commits, for the default catalog), written where `prefect deploy` runs: an
    installed package has no checkout to run it in, and needs none (no pull steps)."""
    with tempfile.TemporaryDirectory(prefix="poligraph-deploy-") as directory:
        path = Path(directory) / "prefect.yaml"
        path.write_text(render(catalog), encoding="utf-8")
        command = [
            sys.executable,
            "-m",
            "prefect",
            "--no-prompt",
            "deploy",
            "--all",
            "--prefect-file",
            str(path),
        ]
        subprocess.run(command, cwd=directory, check=True)


async def setup(deploy: bool) -> None:
    catalog = get_catalog()
    if storage := get_settings().result_storage:
        result_storage.parse(storage)  # a bad value is refused before anything changes
    async with get_client() as client:
        created = await ensure_work_pool(client)
        print(f"work pool {WORK_POOL}: {'created' if created else 'exists'}")
    limits = await ensure_script_limits(catalog)
    print(f"{len(limits)} per-script concurrency limits ready")
    if storage:
        async with get_client() as client:
            print(f"step results go to {await result_storage.configure(client, storage)}")
    if not deploy:
        return
    deploy_prefect_yaml(catalog)
    async with get_client() as client:
        print(f"{await apply_run_forms(client, catalog)} run forms applied")  # prefect deploy cannot
        for item in await prune(client, catalog):
            print(f"removed {item}")


def main() -> None:
    try:
        asyncio.run(setup(deploy="--deploy" in sys.argv[1:]))
    except result_storage.BadResultStorage as exc:
        print(f"POLIGRAPH_RESULT_STORAGE: {exc}", file=sys.stderr)
        sys.exit(2)
    except WrongPoolType as exc:
        print(f"setup: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
