"""Create the per-script global concurrency limits (limit 1) before any run needs them.

Steps take them with strict=True, so a missing limit fails the step instead of running it
unprotected. `serve` and `setup` call this; alone:

    python -m scripts.limits
"""

from __future__ import annotations

import asyncio

from prefect.client.orchestration import get_client

from deployments.catalog import Catalog, get_catalog
from deployments.specs import script_limit_name


async def ensure_script_limits(catalog: Catalog) -> list[str]:
    names = [script_limit_name(script.id) for script in catalog.scripts]
    async with get_client() as client:
        for name in names:
            await client.upsert_global_concurrency_limit_by_name(name, limit=1)
    return names


def main() -> None:
    names = asyncio.run(ensure_script_limits(get_catalog()))
    print(f"{len(names)} concurrency limits ready (limit 1 each): {', '.join(names)}")


if __name__ == "__main__":
    main()
