"""POLIGRAPH_RESULT_STORAGE: what `setup` accepts as the shared result storage, and what it refuses
before changing anything (the storage itself is proven in test_production.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from scripts.result_storage import BadResultStorage, parse


@pytest.mark.unit
@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("/mnt/prefect-results", Path("/mnt/prefect-results")),
        ("file:///mnt/prefect-results", Path("/mnt/prefect-results")),
        ("block:s3-bucket/results", ("s3-bucket", "results")),
    ],
)
def test_directories_and_blocks_are_accepted(value, expected):
    assert parse(value) == expected


@pytest.mark.unit
@pytest.mark.parametrize(
    "value", ["results", "./results", "file://results", "block:s3-bucket", "block:/results", ""]
)
def test_anything_else_is_refused(value):
    with pytest.raises(BadResultStorage):
        parse(value)


@pytest.mark.unit
def test_setup_refuses_a_bad_value_before_touching_prefect(monkeypatch, capsys):
    from deployments.settings import reload_settings
    from scripts import setup

    monkeypatch.setenv("POLIGRAPH_RESULT_STORAGE", "relative/dir")
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")  # nothing listens: must not be reached
    reload_settings()
    try:
        with pytest.raises(SystemExit) as exit_info:
            setup.main()
    finally:
        monkeypatch.delenv("POLIGRAPH_RESULT_STORAGE")
        reload_settings()
    assert exit_info.value.code == 2
    assert "POLIGRAPH_RESULT_STORAGE: 'relative/dir'" in capsys.readouterr().err


@pytest.mark.integration
def test_an_existing_block_becomes_the_servers_default(prefect_api, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.filesystems import LocalFileSystem

    from scripts.result_storage import configure
    from support.polling import run_async

    async def scenario():
        async with get_client() as client:
            block_id = await LocalFileSystem(basepath=str(tmp_path)).asave(
                "made-by-ops", overwrite=True, client=client
            )
            try:
                said = await configure(client, "block:local-file-system/made-by-ops")
                default = (await client.read_server_default_result_storage()).default_result_storage_block_id
            finally:
                await client.clear_server_default_result_storage()  # other tests keep local results
            return block_id, said, default

    block_id, said, default = run_async(scenario())
    assert default == block_id and said == "block local-file-system/made-by-ops"
