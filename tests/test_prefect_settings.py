"""The local stack's Prefect server settings: its own PostgreSQL database next to the app's when
DATABASE_URL is a PostgreSQL (created once), SQLite with the burst settings otherwise."""

from __future__ import annotations

import psycopg
import pytest
from sqlalchemy.engine import make_url

from scripts.prefect_settings import SQLITE_SETTINGS, server_environment

CONNECTION_URL = "PREFECT_SERVER_DATABASE_CONNECTION_URL"


def databases(pg_url: str) -> set[str]:
    admin = make_url(pg_url).set(drivername="postgresql", database="postgres")
    with psycopg.connect(admin.render_as_string(hide_password=False)) as conn:
        return {row[0] for row in conn.execute("SELECT datname FROM pg_database")}


@pytest.mark.integration
def test_a_postgresql_app_database_gives_prefect_its_own_database_next_to_it(pg_url):
    app_database = make_url(pg_url).database
    env = server_environment({"DATABASE_URL": pg_url})
    url = make_url(env[CONNECTION_URL])
    assert url.drivername == "postgresql+asyncpg"
    assert url.database == f"{app_database}_prefect" and url.port == make_url(pg_url).port
    assert f"{app_database}_prefect" in databases(pg_url)
    assert not set(SQLITE_SETTINGS) & set(env)  # PostgreSQL: no SQLite workarounds
    # a second start finds it and changes nothing
    assert server_environment({"DATABASE_URL": pg_url})[CONNECTION_URL] == env[CONNECTION_URL]


@pytest.mark.unit
@pytest.mark.parametrize(
    "env",
    [
        {"DATABASE_URL": "file:./dev.db", "POLIGRAPH_PREFECT_DATABASE_URL": ""},  # the app on SQLite
        {"DATABASE_URL": "postgresql://u@db:5432/app", "POLIGRAPH_PREFECT_DATABASE_URL": "sqlite"},
    ],
)
def test_otherwise_prefect_keeps_sqlite_with_the_burst_settings(env):
    result = server_environment(env)
    assert CONNECTION_URL not in result
    assert {k: result[k] for k in SQLITE_SETTINGS} == SQLITE_SETTINGS


@pytest.mark.unit
def test_what_the_environment_already_says_wins():
    env = {
        "POLIGRAPH_PREFECT_DATABASE_URL": "postgresql+asyncpg://u@db:5432/prefect",
        "PREFECT_SERVER_DEPLOYMENTS_CONCURRENCY_SLOT_WAIT_SECONDS": "30",
    }
    result = server_environment(env)
    assert result[CONNECTION_URL] == "postgresql+asyncpg://u@db:5432/prefect"
    assert result["PREFECT_SERVER_DEPLOYMENTS_CONCURRENCY_SLOT_WAIT_SECONDS"] == "30"
    assert "PREFECT_SERVER_SERVICES_LATE_RUNS_ENABLED" not in result
