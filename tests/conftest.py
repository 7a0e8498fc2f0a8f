"""Fixtures: a real Prefect server, a real PostgreSQL, stub scripts. Helpers are in support/.

The environment is set at import time, before any test module imports Prefect, so that every
Prefect client in this process and in its subprocesses talks to the test server.

Markers: `unit` (no server: runs in `make test-fast`), `integration` (a real PostgreSQL and/or
Prefect server), `slow` (whole stacks: the local stack, production, outages).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from support.paths import STATE, STUB_ROOT, TESTS
from support.ports import free_port

PREFECT_PORT = free_port()
os.environ.update(
    {
        "PREFECT_HOME": str(STATE / "prefect"),
        "PREFECT_API_URL": f"http://127.0.0.1:{PREFECT_PORT}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_RUNNER_POLL_FREQUENCY": "1",
        "PREFECT_SERVER_DEPLOYMENTS_CONCURRENCY_SLOT_WAIT_SECONDS": "5",
        "PREFECT_LOGGING_TO_API_BATCH_INTERVAL": "0.5",
        "POLIGRAPH_HOME": str(STATE / "home"),
        "POLIGRAPH_CATALOG": str(TESTS / "catalog.yaml"),
        "POLIGRAPH_SCRIPT_COMMAND": f"{{python}} {TESTS / 'stubs' / 'stub_script.py'} {{script}}",
        "POLIGRAPH_RETRY_DELAYS": "0",
        "POLIGRAPH_KILL_GRACE_SECONDS": "2",
        "POLIGRAPH_RECONCILE_INTERVAL_SECONDS": "1",
        "POLIGRAPH_ALERT_RETRY_DELAYS": "0,0",
        "STUB_DIR": str(STUB_ROOT),
    }
)
for name in ("DATABASE_URL", "POLIGRAPH_APP_DIR", "POLIGRAPH_DEMO_FAIL"):
    os.environ.pop(name, None)
STUB_ROOT.mkdir(parents=True)

from support.pg_cluster import apply_sql, temporary_postgres  # noqa: E402
from support.polling import run_async  # noqa: E402
from support.prefect_server import start_prefect_server  # noqa: E402
from support.processes import stop_process_group  # noqa: E402
from support.stubs import Stubs  # noqa: E402

if TYPE_CHECKING:
    from deployments.syncjob import SyncJobRepository
    from shim.outbox import EventOutbox


# --- PostgreSQL -------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    with temporary_postgres() as url:
        apply_sql(url, TESTS / "sql" / "syncjob.sql")
        os.environ["DATABASE_URL"] = url
        from deployments.settings import reload_settings

        reload_settings()
        yield url
        os.environ.pop("DATABASE_URL", None)
        reload_settings()


@pytest.fixture(
    params=[
        pytest.param("sqlite", marks=pytest.mark.unit),
        pytest.param("postgresql", marks=pytest.mark.integration),
    ]
)
def either_outbox(request: pytest.FixtureRequest, tmp_path: Path) -> EventOutbox:
    """The shim's outbox on SQLite (a unit test) and on PostgreSQL (an integration test): a test
    taking it runs on both."""
    from support.shim import postgres_outbox, sqlite_outbox

    if request.param == "postgresql":
        return postgres_outbox(request.getfixturevalue("pg_url"))
    return sqlite_outbox(tmp_path)


@pytest.fixture
def syncjobs(pg_url: str) -> SyncJobRepository:
    """The SyncJob repository on the test PostgreSQL, emptied before each test."""
    import sqlalchemy as sa

    from deployments.syncjob import syncjob_repository

    repository = syncjob_repository()
    with repository.engine.begin() as conn:
        conn.execute(sa.text('DELETE FROM "SyncJob"'))
    return repository


# --- stub scripts -----------------------------------------------------------------------------
@pytest.fixture
def stubs() -> Stubs:
    helper = Stubs(STUB_ROOT)
    helper.reset()
    return helper


@pytest.fixture(autouse=True)
def _clean_stub_dir_between_tests() -> Iterator[None]:
    yield
    shutil.rmtree(STUB_ROOT, ignore_errors=True)
    STUB_ROOT.mkdir(parents=True, exist_ok=True)


# --- Prefect ----------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def prefect_api() -> Iterator[str]:
    server = start_prefect_server(PREFECT_PORT, Path(os.environ["PREFECT_HOME"]), "prefect-server.log")
    try:
        from deployments.catalog import get_catalog
        from scripts.limits import ensure_script_limits

        run_async(ensure_script_limits(get_catalog()))
        yield os.environ["PREFECT_API_URL"]
    finally:
        # Logs and events this process queued go while the server still answers: drained at exit
        # instead, they wait out their retries against a server that is gone (about a minute).
        from prefect.events.worker import EventsWorker
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all(timeout=15)
        EventsWorker.drain_all(timeout=15)
        stop_process_group(server)


# --- Node ------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def tsx_project() -> Path:
    """A directory where `npx tsx detach.ts` runs a real TypeScript script (tsx from npm)."""
    from support.node import tsx_project as install

    try:
        return install()
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        pytest.fail(f"cannot set up the Node fixture: {exc}", pytrace=False)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Each test has exactly one of the markers, so `-m unit` never starts a server."""
    for item in items:
        kinds = {m.name for m in item.iter_markers()} & {"unit", "integration", "slow"}
        if len(kinds) != 1:
            raise pytest.UsageError(
                f"{item.nodeid}: mark it with one of unit / integration / slow, not {kinds}"
            )
