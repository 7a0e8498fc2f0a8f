"""The Prefect settings of the local stack (`make up`), in one place.

    server_environment(env)   the Prefect server process's environment
    worker_environment(env)   the worker's (and every flow run's) environment
    small_ca_bundle_over_http(env, dir)   what the worker sets for its runs over a plain-http API

Why each setting is there is measured in docs/prefect.md ("Server under bursts", "Flow start");
the benchmarks (`make bench`) run the server and the worker with exactly these.
"""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from pathlib import Path

import certifi
import psycopg
from psycopg import pq
from sqlalchemy.engine import make_url
from tenacity import RetryCallState, Retrying, retry_if_result, stop_after_delay, wait_exponential

from deployments.settings import get_settings
from deployments.syncjob import sqlalchemy_url
from scripts.errors import OperationError

log = logging.getLogger("poligraph.stack")
DATABASE_WAIT_SECONDS = 120.0  # a PostgreSQL started with the stack has that long to answer


class DatabaseUnusable(OperationError, RuntimeError):
    """The app's PostgreSQL did not answer in time, or refused the stack's connection."""


# Server settings for SQLite (the default) and PostgreSQL alike.
SERVER_SETTINGS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    # A queued run of a busy deployment re-checks its slot every 5 s, not 30 s.
    "PREFECT_SERVER_DEPLOYMENTS_CONCURRENCY_SLOT_WAIT_SECONDS": "5",
    # Flow runs (with their logs, task runs and artifacts) are deleted 30 days after they ended,
    # once an hour, 200 per transaction; Prefect keeps them for ever otherwise. Events go after
    # 7 days either way. A run's idempotency key goes with it: the shim's outbox forgets finished
    # events well before (POLIGRAPH_SHIM_RETENTION_DAYS), so no event is dispatched again.
    "PREFECT_SERVER_SERVICES_DB_VACUUM_ENABLED": "events,flow_runs",
    "PREFECT_SERVER_SERVICES_DB_VACUUM_RETENTION_PERIOD": str(30 * 24 * 3600),
}
# SQLite only: one writer at a time, and a transaction that read before writing fails at once
# ("database is locked", 503) when another wrote in between, whatever the busy timeout. The
# late-runs service writes one transaction per unstarted run, ten at a time, every 5 s: under a
# burst it is most of the writers. Without it a run that has not started shows "Scheduled" with
# its time in the past instead of "Late"; nothing else changes (runners take both).
SQLITE_SETTINGS = {
    "PREFECT_SERVER_SERVICES_LATE_RUNS_ENABLED": "false",
    # Events (each run's state changes, the shim's event feed) are written 20 at a time by
    # default: one more writer every 20 events. 500 at a time, within the same 5 s flush.
    "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_BATCH_SIZE": "500",
}


def prefect_database_url(env: dict[str, str], wait_seconds: float = DATABASE_WAIT_SECONDS) -> str | None:
    """The local stack's Prefect database on PostgreSQL, or None for SQLite under PREFECT_HOME.

    POLIGRAPH_PREFECT_DATABASE_URL wins ("sqlite" forces SQLite). Otherwise, when the app's
    DATABASE_URL is a PostgreSQL, the server gets a database of its own next to it:
    `<app database>_prefect`, created when missing (once that PostgreSQL answers: `wait_seconds`)."""
    explicit = env.get("POLIGRAPH_PREFECT_DATABASE_URL")
    if explicit:
        return None if explicit == "sqlite" else explicit
    app_database_url = env.get("DATABASE_URL") or get_settings().database_url  # or from .env
    if not app_database_url or not sqlalchemy_url(app_database_url).startswith("postgresql"):
        return None
    url = make_url(sqlalchemy_url(app_database_url))
    name = f"{url.database}_prefect"
    ensure_database(
        url.set(drivername="postgresql").render_as_string(hide_password=False), name, wait_seconds
    )
    return url.set(drivername="postgresql+asyncpg", database=name, query={}).render_as_string(
        hide_password=False
    )


def ensure_database(
    admin_url: str, name: str, wait_seconds: float = DATABASE_WAIT_SECONDS, source: str = "DATABASE_URL"
) -> None:
    """Create database `name` on the server of `admin_url` when missing (`source`: the setting
    the URL came from, for the messages)."""
    wait_for_postgres(admin_url, wait_seconds, source)
    try:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{name}"'.encode())
    except psycopg.OperationalError as exc:  # libpq's message names host, port and role, never the password
        reason = str(exc).strip().splitlines()[-1]
        raise DatabaseUnusable(f"PostgreSQL ({source}) refused the connection: {reason}") from exc


def wait_for_postgres(url: str, wait_seconds: float, source: str = "DATABASE_URL") -> None:
    """Return once the PostgreSQL at `url` accepts connections: a stack started with its database
    (or while it restarts) waits instead of failing. libpq's ping is what `pg_isready` asks: no
    answer, or "starting up / shutting down", is waited out; it says nothing of the password or
    the database name, which the connection after it checks (and refuses at once)."""
    parsed = make_url(url)
    where = f"{parsed.host or 'localhost'}:{parsed.port or 5432}"
    # a host that drops packets must not hold one ping for libpq's default (no timeout)
    conninfo = parsed.update_query_dict({"connect_timeout": "5"}).render_as_string(hide_password=False)

    def say(state: RetryCallState) -> None:
        left = max(0.0, wait_seconds - (state.seconds_since_start or 0.0))
        log.warning("waiting for PostgreSQL at %s (%s) to answer: %.0f s left", where, source, left)

    retrying = Retrying(
        retry=retry_if_result(lambda ping: ping in (pq.Ping.REJECT, pq.Ping.NO_RESPONSE)),
        wait=wait_exponential(multiplier=0.25, max=5),
        stop=stop_after_delay(wait_seconds),
        before_sleep=say,
        retry_error_callback=lambda _: pq.Ping.NO_RESPONSE,
    )
    ping = retrying(pq.PGconn.ping, conninfo.encode())
    if ping == pq.Ping.NO_ATTEMPT:
        raise DatabaseUnusable(f"{source} is not a PostgreSQL address libpq can use ({where})")
    if ping != pq.Ping.OK:
        raise DatabaseUnusable(f"PostgreSQL at {where} ({source}) did not answer in {wait_seconds:g} s")


# The worker starts runs on Prefect's events (scripts/run_wakeups.py); its own poll is the
# fallback while the events stream is down: every 5 s on one machine instead of Prefect's 10.
WORKER_SETTINGS = {
    "PREFECT_WORKER_QUERY_SECONDS": "5",
}


def worker_environment(env: dict[str, str]) -> dict[str, str]:
    """`env` with the local stack's worker settings (anything already set wins)."""
    env = dict(env)
    for name, value in WORKER_SETTINGS.items():
        env.setdefault(name, value)
    return env


def small_ca_bundle_over_http(env: MutableMapping[str, str], directory: Path) -> None:
    """Over a plain-http PREFECT_API_URL, point PREFECT_API_SSL_CERT_FILE at a one-certificate
    bundle (unless set). Prefect's client loads that file into a new SSL context for every client
    it makes, whether or not the URL uses TLS: 35 to 80 ms of CPU each, and a flow run makes
    five or six (measured). Over http no certificate is ever checked, so which bundle it loads
    changes nothing else."""
    url = env.get("PREFECT_API_URL", "")
    if not url.startswith("http://") or env.get("PREFECT_API_SSL_CERT_FILE"):
        return
    bundle = Path(certifi.where()).read_text()
    first = bundle[bundle.index("-----BEGIN CERTIFICATE-----") :]
    first = first[: first.index("-----END CERTIFICATE-----") + len("-----END CERTIFICATE-----")]
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "plain-http-ca.pem"
    path.write_text(first + "\n")
    env["PREFECT_API_SSL_CERT_FILE"] = str(path)


def server_environment(
    env: dict[str, str], database_wait_seconds: float = DATABASE_WAIT_SECONDS
) -> dict[str, str]:
    """`env` with the local stack's Prefect server settings (anything already set wins)."""
    env = dict(env)
    for name, value in SERVER_SETTINGS.items():
        env.setdefault(name, value)
    if "PREFECT_SERVER_DATABASE_CONNECTION_URL" not in env:
        database_url = prefect_database_url(env, database_wait_seconds)
        if database_url:
            env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = database_url
    if not env.get("PREFECT_SERVER_DATABASE_CONNECTION_URL", "").startswith("postgresql"):
        for name, value in SQLITE_SETTINGS.items():
            env.setdefault(name, value)
    return env
