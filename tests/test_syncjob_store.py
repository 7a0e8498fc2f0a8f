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
