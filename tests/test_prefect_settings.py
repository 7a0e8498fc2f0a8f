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


@pytest.mark.integration
def test_the_stack_waits_for_a_postgresql_that_is_still_starting(caplog):
    """`make up` started together with its database: the Prefect database is created once the
    app's PostgreSQL answers, not a traceback because it did not yet."""
    import threading

    from support.pg_cluster import PostgresCluster
    from support.polling import wait_for

    cluster = PostgresCluster()
    app_url = make_url(cluster.url).set(database="postgres").render_as_string(hide_password=False)
    results: list[dict[str, str] | BaseException] = []

    def start_the_stack() -> None:
        try:
            results.append(server_environment({"DATABASE_URL": app_url}, database_wait_seconds=120))
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            results.append(exc)

    stack = threading.Thread(target=start_the_stack)
    try:
        with caplog.at_level("WARNING", logger="poligraph.stack"):
            stack.start()
            wait_for(
                lambda: "waiting for PostgreSQL at 127.0.0.1" in caplog.text, timeout=30, what="the wait"
            )
            assert stack.is_alive()
            cluster.start()
            stack.join(timeout=60)
        (env,) = results
        assert isinstance(env, dict), env
        assert "postgres_prefect" in databases(cluster.url)
    finally:
        stack.join(timeout=60)
        cluster.remove()


@pytest.mark.integration
def test_a_postgresql_that_never_answers_or_refuses_the_login_fails_the_start_clearly(pg_url, caplog):
    from scripts.prefect_settings import DatabaseUnusable
    from support.ports import free_port

    nobody = f"postgresql+psycopg://app:s3cret@127.0.0.1:{free_port()}/app"
    with pytest.raises(DatabaseUnusable) as refused:
        server_environment({"DATABASE_URL": nobody}, database_wait_seconds=0.5)
    assert "did not answer in 0.5 s" in str(refused.value) and "s3cret" not in str(refused.value)
    caplog.clear()
    # the server answers but refuses this role: said at once, not waited out
    wrong_role = make_url(pg_url).set(username="nobody").render_as_string(hide_password=False)
    with caplog.at_level("WARNING", logger="poligraph.stack"), pytest.raises(DatabaseUnusable) as refused:
        server_environment({"DATABASE_URL": wrong_role}, database_wait_seconds=120)
    assert 'role "nobody" does not exist' in str(refused.value)
    assert "waiting for PostgreSQL" not in caplog.text


@pytest.mark.integration
def test_make_up_with_a_postgresql_that_never_answers_exits_1_saying_why(tmp_path):
    import os
    import subprocess
    import sys

    from support.paths import REPO
    from support.ports import free_port

    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": f"postgresql://app:s3cret@127.0.0.1:{port}/app",
        "POLIGRAPH_DATABASE_WAIT_SECONDS": "1",
        "POLIGRAPH_HOME": str(tmp_path),
    }
    env.pop("POLIGRAPH_PREFECT_DATABASE_URL", None)
    env.pop("PREFECT_SERVER_DATABASE_CONNECTION_URL", None)
    done = subprocess.run(
        [sys.executable, "-m", "scripts.local_stack"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stderr
    assert (
        f"stack: cannot start: PostgreSQL at 127.0.0.1:{port} (DATABASE_URL) did not answer in 1 s"
        in done.stderr
    )
    assert "Traceback" not in done.stderr and "s3cret" not in done.stderr


@pytest.mark.unit
def test_the_local_stack_and_production_vacuum_flow_runs_after_30_days(monkeypatch):
    """Prefect keeps every flow run for ever unless its vacuum is told otherwise: both servers
    turn it on, and Prefect reads the values as meant (a wrong vacuum type is refused at start)."""
    from datetime import timedelta

    from prefect.settings.models.server.services import ServerServicesDBVacuumSettings

    from scripts.production import step

    for env in (server_environment({"POLIGRAPH_PREFECT_DATABASE_URL": "sqlite"}), step("prefect-server").env):
        for name in (
            "PREFECT_SERVER_SERVICES_DB_VACUUM_ENABLED",
            "PREFECT_SERVER_SERVICES_DB_VACUUM_RETENTION_PERIOD",
        ):
            monkeypatch.setenv(name, env[name])
        vacuum = ServerServicesDBVacuumSettings()
        assert vacuum.enabled == {"events", "flow_runs"}
        assert vacuum.retention_period == timedelta(days=30)
