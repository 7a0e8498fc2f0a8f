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
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterTags

from deployments.catalog import Catalog, get_catalog
from deployments.prefect_yaml import WORK_POOL, render
from deployments.settings import get_settings
from deployments.specs import BASE_TAG, deployment_specs
from scripts import result_storage
from scripts.limits import ensure_script_limits
from scripts.pool_deployments import WrongPoolType, ensure_work_pool
from scripts.run_forms import apply_run_forms
from scripts.worker import PoligraphWorker

if TYPE_CHECKING:
    pass


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
        created = await ensure_work_pool(client, PoligraphWorker)
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
        sys.exit(exc.exit_code)
    except WrongPoolType as exc:
        print(f"setup: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
