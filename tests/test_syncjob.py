"""SyncJob writes on a real PostgreSQL table shaped as Prisma creates it, and the SQLite default."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from deployments.settings import Settings
from deployments.syncjob import (
    ERROR_MAX_CHARS,
    SyncJobRepository,
    engine_for,
    job_id_for_flow_run,
    sqlalchemy_url,
)
from flows.progress_tracker import ProgressTracker
from support.syncjob import insert_pending

pytestmark = pytest.mark.integration


def raw_row(syncjobs: SyncJobRepository, job_id: str) -> dict:
    """Read with hand-written SQL: quoted camelCase columns, the enum type, jsonb."""
    query = sa.text(
        "SELECT status::text AS status, pg_typeof(status)::text AS status_type, progress, "
        'processed, total, result, error, "startedAt", "completedAt", "createdAt" '
        'FROM "SyncJob" WHERE id = :id'
    )
    with syncjobs.engine.connect() as conn:
        return dict(conn.execute(query, {"id": job_id}).mappings().one())


def test_pending_row_goes_running_then_completed(syncjobs):
    insert_pending(syncjobs, "cjobpending000000000000001", "sync-press")
    syncjobs.mark_running("cjobpending000000000000001", "sync-press")
    row = raw_row(syncjobs, "cjobpending000000000000001")
    assert row["status"] == "RUNNING"
    assert row["status_type"] == '"SyncJobStatus"'
    assert row["startedAt"] is not None and row["completedAt"] is None

    syncjobs.set_progress("cjobpending000000000000001", 40, processed=4, total=10)
    row = raw_row(syncjobs, "cjobpending000000000000001")
    assert (row["progress"], row["processed"], row["total"]) == (40, 4, 10)

    syncjobs.mark_completed("cjobpending000000000000001", {"steps": [{"exitCode": 0}]})
    row = raw_row(syncjobs, "cjobpending000000000000001")
    assert row["status"] == "COMPLETED" and row["progress"] == 100
    assert row["result"] == {"steps": [{"exitCode": 0}]}
    assert row["completedAt"] >= row["startedAt"]


def test_running_keeps_the_first_start_time_and_clears_a_previous_failure(syncjobs):
    insert_pending(syncjobs, "cjobretry00000000000000001", "sync-senat")
    syncjobs.mark_running("cjobretry00000000000000001", "sync-senat")
    first = raw_row(syncjobs, "cjobretry00000000000000001")["startedAt"]
    syncjobs.mark_failed("cjobretry00000000000000001", "boom")
    syncjobs.mark_running("cjobretry00000000000000001", "sync-senat")
    row = raw_row(syncjobs, "cjobretry00000000000000001")
    assert row["status"] == "RUNNING" and row["error"] is None and row["completedAt"] is None
    assert row["startedAt"] == first


def test_run_without_row_creates_its_own(syncjobs):
    job_id = job_id_for_flow_run("6f1c1f5e-0000-4000-8000-000000000001")
    assert len(job_id) == 25 and job_id.startswith("c") and job_id.isalnum()
    assert job_id == job_id_for_flow_run("6f1c1f5e-0000-4000-8000-000000000001")
    syncjobs.mark_running(job_id, "sync-daily")
    row = syncjobs.get(job_id)
    assert row["script"] == "sync-daily" and row["status"] == "RUNNING"
    assert row["createdAt"] is not None


def test_failure_is_truncated_and_creates_missing_rows_only_with_a_script(syncjobs):
    syncjobs.mark_failed("cmissing000000000000000001", "x" * 5000)
    assert syncjobs.get("cmissing000000000000000001") is None  # no script: update only
    syncjobs.mark_failed("cmissing000000000000000001", "y" * 5000, script="press")
    row = raw_row(syncjobs, "cmissing000000000000000001")
    assert row["status"] == "FAILED" and len(row["error"]) == ERROR_MAX_CHARS
    assert row["completedAt"] is not None


def test_progress_writes_are_throttled_to_one_per_interval(syncjobs):
    insert_pending(syncjobs, "cjobthrottle00000000000001", "alpha")
    writes: list[tuple] = []

    class CountingStore(SyncJobRepository):
        def set_progress(self, job_id, progress, processed=None, total=None):
            writes.append((progress, processed, total))
            super().set_progress(job_id, progress, processed, total)

    now = [100.0]
    tracker = ProgressTracker(
        CountingStore(syncjobs.engine), "cjobthrottle00000000000001", 0, 1, 1.0, clock=lambda: now[0]
    )
    from flows.progress import ProgressReport

    for processed in range(1, 51):  # 50 lines within 0.49 s
        tracker.report(ProgressReport(processed / 100, processed, 100))
        now[0] += 0.01
    assert writes == [(1, 1, 100)]
    now[0] += 1.0
    tracker.report(ProgressReport(0.6, 60, 100))
    tracker.flush()
    assert writes[-1] == (60, 60, 100) and len(writes) == 2
    row = raw_row(syncjobs, "cjobthrottle00000000000001")
    assert (row["progress"], row["processed"], row["total"]) == (60, 60, 100)


def test_completed_carries_the_last_progress_counts_whether_written_yet_or_not(syncjobs):
    from flows.progress_writer import RunRepository

    repository = RunRepository(syncjobs)
    for n in range(3):
        job_id = f"cjobcounts0000000000000{n:03d}"
        insert_pending(syncjobs, job_id, "alpha")
        repository.mark_running(job_id, "alpha")
        repository.set_progress(job_id, 10, 10, 100)  # written in the background, or not yet
        repository.set_progress(job_id, 40, 40 + n, 100)
        repository.set_progress(job_id, 99)  # a step's end: a percent without counts
        repository.mark_completed(job_id, {"ok": True})
        row = raw_row(syncjobs, job_id)
        assert (row["status"], row["progress"], row["processed"], row["total"]) == (
            "COMPLETED",
            100,
            40 + n,
            100,
        )


def test_group_progress_is_the_share_of_steps_and_hides_item_counts(syncjobs):
    insert_pending(syncjobs, "cjobgroup00000000000000001", "press")
    tracker = ProgressTracker(syncjobs, "cjobgroup00000000000000001", 1, 2, 0)
    from flows.progress import ProgressReport

    tracker.report(ProgressReport(0.5, 50, 100))
    row = raw_row(syncjobs, "cjobgroup00000000000000001")
    assert row["progress"] == 75 and row["processed"] is None and row["total"] is None


def test_prisma_url_is_accepted():
    url = "postgresql://u:p@db.example:5432/poligraph?schema=public&sslmode=require"
    assert sqlalchemy_url(url) == "postgresql+psycopg://u:p@db.example:5432/poligraph?sslmode=require"


def test_embedded_sqlite_default_has_the_same_table(tmp_path):
    settings = Settings(database_url=None, home=tmp_path)
    syncjobs = SyncJobRepository(engine_for(settings))
    syncjobs.mark_running("csqlite0000000000000000001", "sync-press")
    syncjobs.set_progress("csqlite0000000000000000001", 50, 5, 10)
    syncjobs.mark_completed("csqlite0000000000000000001", {"ok": True})
    row = syncjobs.get("csqlite0000000000000000001")
    assert row["status"] == "COMPLETED" and row["result"] == {"ok": True} and row["processed"] == 5
    assert (tmp_path / "syncjob.sqlite").exists()
    columns = {c["name"] for c in sa.inspect(syncjobs.engine).get_columns("SyncJob")}
    assert {"startedAt", "completedAt", "createdAt", "processed", "total"} <= columns


def test_truncation_keeps_the_first_line_and_the_last_lines():
    from deployments.syncjob import truncate_error

    message = "step x (y) failed: exit code 1\n" + "\n".join(f"line {i}" for i in range(1000))
    cut = truncate_error(message)
    assert len(cut) == ERROR_MAX_CHARS
    assert cut.startswith("step x (y) failed: exit code 1\n[…]\n") and cut.endswith("line 999")


# --- text from outside: what PostgreSQL refuses, written anyway --------------------------------
def test_an_error_with_a_nul_ends_the_row_escaped(syncjobs):
    # PostgreSQL text refuses NUL: before, DataError and a row that never ended
    assert syncjobs.mark_failed("cnul000000000000000000001", "boom \x00", script="s")
    row = raw_row(syncjobs, "cnul000000000000000000001")
    assert row["status"] == "FAILED" and row["error"] == "boom \\x00"


def test_every_byte_and_lone_surrogates_are_stored_in_error_and_result(syncjobs):
    nasty = bytes(range(256)).decode("latin-1") + " \ud800 \udcff \x1b[31mred\x1b[0m é🎉中"
    insert_pending(syncjobs, "cbytes0000000000000000001", "alpha")
    result = {"steps": [{"name": "a", "status": "failed", "error": nasty}], "k\x00": nasty}
    assert syncjobs.mark_failed("cbytes0000000000000000001", nasty, result=result)
    row = raw_row(syncjobs, "cbytes0000000000000000001")
    assert "\x00" not in row["error"] and row["error"].endswith("\\ud800 \\xff red é🎉中")
    assert row["result"]["steps"][0]["error"] == row["error"] and "k\\x00" in row["result"]
    # jsonb refuses \u0000 too: a completed run's result with output in it
    assert syncjobs.mark_completed("cbytes0000000000000000001", {"note": "\x00 done"})
    assert raw_row(syncjobs, "cbytes0000000000000000001")["result"] == {"note": "\\x00 done"}


@pytest.fixture
def latin1_syncjobs(pg_url):
    """The SyncJob table in a LATIN1 database, where PostgreSQL refuses what LATIN1 cannot hold:
    the driver, speaking the database's encoding, refuses it first (UnicodeEncodeError); with
    client_encoding=utf8 the server does (DataError)."""
    from pathlib import Path

    import psycopg
    from sqlalchemy.engine import make_url

    from support.pg_cluster import apply_sql

    url = make_url(pg_url)
    with psycopg.connect(
        host=url.host, port=url.port, user=url.username, dbname="postgres", autocommit=True
    ) as conn:
        conn.execute("DROP DATABASE IF EXISTS latin1")
        conn.execute(
            "CREATE DATABASE latin1 ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0"
        )
    latin1 = url.set(database="latin1").render_as_string(hide_password=False)
    apply_sql(latin1, Path(__file__).parent / "sql" / "syncjob.sql")
    engines = [sa.create_engine(sqlalchemy_url(latin1) + query) for query in ("", "?client_encoding=utf8")]
    yield [SyncJobRepository(engine, retry_seconds=5) for engine in engines]
    for engine in engines:
        engine.dispose()


def test_a_text_the_database_still_refuses_is_written_again_as_plain_ascii(latin1_syncjobs, caplog):
    for n, repository in enumerate(latin1_syncjobs):
        job_id = f"clatin{n:019d}"
        assert repository.mark_failed(job_id, "élu 🎉 \x00 中", script="sync-press")
        row = repository.get(job_id)
        assert row["status"] == "FAILED" and row["error"] == "\\xe9lu \\U0001f389 \\x00 \\u4e2d"
        assert repository.mark_completed(job_id, {"steps": [{"error": "🎉"}]})
        assert repository.get(job_id)["result"] == {"steps": [{"error": "\\U0001f389"}]}
        insert_pending(repository, f"cpend{n:020d}", "sync-press")
        assert repository.fail_pending(f"cpend{n:020d}", "refusé 🎉")
        assert repository.get(f"cpend{n:020d}")["error"] == "refus\\xe9 \\U0001f389"
    assert "writing it again as plain ASCII" in caplog.text
    assert "has no equivalent in encoding" in caplog.text  # the server refused, on the second


@pytest.mark.parametrize(
    "error",
    [
        "ReadOnlySqlTransaction",  # 25006: connections on a standby after a failover
        "AdminShutdown",  # 57P01
        "CrashShutdown",  # 57P02
        "CannotConnectNow",  # 57P03: starting, in recovery
        "TooManyConnections",  # 53300
        "DiskFull",  # 53100
        "SerializationFailure",  # 40001
        "DeadlockDetected",  # 40P01
    ],
)
def test_a_database_that_cannot_take_writes_now_is_waited_out_like_a_lost_connection(error):
    import psycopg.errors
    import sqlalchemy as sa

    from deployments.syncjob import is_transient

    orig = getattr(psycopg.errors, error)("refused")
    assert is_transient(sa.exc.InternalError("UPDATE", {}, orig))


def test_a_statement_the_database_refuses_for_itself_is_not_waited_out():
    import psycopg.errors
    import sqlalchemy as sa

    from deployments.syncjob import is_transient

    for orig in (psycopg.errors.UniqueViolation("dup"), psycopg.errors.RaiseException("trigger says no")):
        assert not is_transient(sa.exc.IntegrityError("UPDATE", {}, orig))
