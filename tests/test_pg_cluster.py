"""Smoke test: throwaway PostgreSQL starts, the SyncJob DDL applies, a row round-trips."""

from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from support.pg_cluster import apply_sql, temporary_postgres

pytestmark = pytest.mark.integration

SYNCJOB_SQL = Path(__file__).parent / "sql" / "syncjob.sql"
INSERT = text('INSERT INTO "SyncJob" ("id", "script", "status") VALUES (:id, :script, :status)')
SELECT = text(
    'SELECT "script", "status"::text AS "status", "progress", "createdAt" FROM "SyncJob" WHERE "id" = :id'
)


def test_cluster_applies_ddl_and_round_trips_a_row() -> None:
    with temporary_postgres() as url:
        apply_sql(url, SYNCJOB_SQL)
        engine = create_engine(url)
        try:
            with engine.begin() as conn:
                conn.execute(INSERT, {"id": "job-1", "script": "sync_members", "status": "RUNNING"})
            with engine.connect() as conn:
                row = conn.execute(SELECT, {"id": "job-1"}).one()
        finally:
            engine.dispose()
    assert row.script == "sync_members"
    assert row.status == "RUNNING"
    assert row.progress == 0
    assert row.createdAt is not None
