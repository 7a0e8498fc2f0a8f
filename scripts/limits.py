"""Create the per-script global concurrency limits (limit 1) before any run needs them.

Steps take them with strict=True, so a missing limit fails the step instead of running it
unprotected. `setup` and a worker that deploys (POLIGRAPH_WORKER_DEPLOY) call this; alone:

    python -m scripts.limits

It also warns when the Prefect server keeps its slot leases in memory: a server restart then
forgets the lease of every step holding a slot, the step is stopped at its next renewal and the
slot stays taken for good (docs/prefect.md, "Concurrency limits").
"""

from __future__ import annotations

import asyncio
import logging

import httpx
from prefect.client.orchestration import PrefectClient, get_client

from deployments.catalog import Catalog, get_catalog
from deployments.specs import script_limit_name

log = logging.getLogger("poligraph.limits")
MEMORY_LEASES = "prefect.server.concurrency.lease_storage.memory"
DISK_LEASES = "prefect.server.concurrency.lease_storage.filesystem"
LEASE_WARNING = (
    "the Prefect server keeps concurrency leases in memory: restarting it while a step holds a "
    f"slot strands that slot. Start it with PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE={DISK_LEASES}"
)


async def ensure_script_limits(catalog: Catalog) -> list[str]:
    names = [script_limit_name(script.id) for script in catalog.scripts]
    async with get_client() as client:
        for name in names:
            await client.upsert_global_concurrency_limit_by_name(name, limit=1)
        await warn_if_leases_in_memory(client)
    return names


async def warn_if_leases_in_memory(client: PrefectClient) -> None:
    if await server_lease_storage(client) == MEMORY_LEASES:
        log.warning(LEASE_WARNING)


async def server_lease_storage(client: PrefectClient) -> str | None:
    """Where the server keeps slot leases (its settings, read from the API); None if unknown."""
    try:
        response = await client.request("GET", "/admin/settings")
        response.raise_for_status()
        return response.json()["server"]["concurrency"]["lease_storage"]
    except (httpx.HTTPError, KeyError, TypeError, ValueError):
        return None


def main() -> None:
    names = asyncio.run(ensure_script_limits(get_catalog()))
    print(f"{len(names)} concurrency limits ready (limit 1 each): {', '.join(names)}")


if __name__ == "__main__":
    main()
