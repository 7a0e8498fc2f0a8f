"""Durable steps across machines: the Prefect server's default result storage.

A flow retry skips the steps that completed only if it finds their persisted results
(docs/prefect.md, "Durable steps"). By default each worker keeps them on its own disk, so a retry
that lands on another worker runs them again. `python -m scripts.setup` with
POLIGRAPH_RESULT_STORAGE set makes a shared storage the server's default, which every flow-run
process without a storage of its own uses (Prefect reads it from the server):

    /mnt/prefect-results, file:///mnt/prefect-results   a directory every worker mounts at that
                                                         path (NFS, EFS, ...): a LocalFileSystem
                                                         block named `poligraph-results`
    block:s3-bucket/results                              a storage block created beforehand, e.g.
                                                         with prefect-aws (credentials from each
                                                         worker's environment)
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit
from uuid import UUID

from prefect.client.orchestration import PrefectClient
from prefect.filesystems import LocalFileSystem

from scripts.errors import OperationError

BLOCK_NAME = "poligraph-results"


class BadResultStorage(OperationError, ValueError):
    """POLIGRAPH_RESULT_STORAGE is neither an absolute directory nor block:<slug>/<name>."""

    exit_code = 2


def parse(value: str) -> Path | tuple[str, str]:
    """An absolute directory, or (block type slug, block name)."""
    if value.startswith("block:"):
        slug, _, name = value.removeprefix("block:").partition("/")
        if not slug or not name:
            raise BadResultStorage(f"{value!r}: expected block:<block type slug>/<block name>")
        return slug, name
    path = urlsplit(value).path if value.startswith("file://") else value
    if not Path(path).is_absolute():
        raise BadResultStorage(
            f"{value!r}: expected an absolute directory, file:///dir or block:<slug>/<name>"
        )
    return Path(path)


async def configure(client: PrefectClient, value: str) -> str:
    """Make `value` the server's default result storage; say what it is now."""
    target = parse(value)  # refuses bad input before anything changes
    if isinstance(target, Path):
        block_id: UUID = await LocalFileSystem(basepath=str(target)).asave(
            BLOCK_NAME, overwrite=True, client=client
        )
        what = f"directory {target} (block local-file-system/{BLOCK_NAME})"
    else:
        slug, name = target
        block_id = (await client.read_block_document_by_name(name, block_type_slug=slug)).id
        what = f"block {slug}/{name}"
    await client.update_server_default_result_storage(block_id)
    return what
