"""The SyncJob repository: the app's `SyncJob` table, as Prisma shapes it, and every read and
write this project makes to it (runs, the shim, the reconciler, the CLI).

Production never creates or alters the table (Prisma owns it); only the embedded SQLite default
is created here. Timestamps are naive UTC, as Prisma stores `TIMESTAMP(3)`.

State transitions (RUNNING, COMPLETED, FAILED) retry transient database errors — connection
refused or reset, the server shutting down — for POLIGRAPH_SYNCJOB_RETRY_SECONDS: a database
blip delays a row, it never fails a run. Every write is idempotent, so repeating one after a lost
reply is harmless. Progress is not retried here: runs write it in the background
(`flows/progress_writer.py`).

Text from outside (`error`, the strings of `result`: scripts' output) is written as safe text
(`deployments.safe_text`: no NUL, which PostgreSQL `text` and `jsonb` refuse, no control
characters); a write the database still refuses for its content (a character a non-UTF-8
database cannot hold: DataError from the server, UnicodeEncodeError from the driver when the
connection's encoding is the database's) is made once more with ASCII-only text: the row ends.
"""

from __future__ import annotations

import enum
import hashlib
import json
import logging
import string
import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, TypedDict, TypeVar, cast
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine
from sqlalchemy.sql.dml import ReturningInsert
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_delay, wait_exponential

from deployments.safe_text import plain_text, safe_text, safe_values
from deployments.settings import Settings, get_settings

log = logging.getLogger(__name__)
T = TypeVar("T")
Clean = Callable[[str], str]  # safe_text, or plain_text for a write the database refused
CONNECT_TIMEOUT_SECONDS = 10  # an unreachable host fails one attempt, not the whole retry window
# The database, or the driver for it, refused a text for its content (not for the connection)
CONTENT_REFUSED = (sa.exc.DataError, UnicodeEncodeError)

ERROR_MAX_CHARS = 2000
# What the admin's cancel (PATCH /api/admin/syncs/<id>) writes; `cancel` in the CLI writes it too.
CANCEL_MESSAGE = "Annulé manuellement par l'administrateur"


class SyncJobStatus(enum.StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"


class SyncJobRow(TypedDict):
    """One row of the app's `SyncJob` table, under Prisma's column names (the names the admin
    API returns): a typed record that still reads as the row it is, `row["status"]`."""

    id: str
    script: str
    status: SyncJobStatus
    progress: int
    total: int | None
    processed: int | None
    result: Any  # JSON: a run's summary ({"flowRunId": …, "steps": [...]}), or None
    error: str | None
    startedAt: datetime | None
    completedAt: datetime | None
    createdAt: datetime


def _row(mapping: sa.RowMapping) -> SyncJobRow:
    # every column of `sync_job` (below), selected whole: the keys are the TypedDict's
    return cast(SyncJobRow, dict(mapping))


# TIMESTAMP(3) without time zone, as Prisma creates DateTime columns.
Timestamp3 = sa.DateTime().with_variant(postgresql.TIMESTAMP(precision=3), "postgresql")

metadata = sa.MetaData()
sync_job = sa.Table(
    "SyncJob",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("script", sa.Text, nullable=False),
    sa.Column(
        "status",
        sa.Enum(SyncJobStatus, name="SyncJobStatus", values_callable=lambda e: [m.value for m in e]),
        nullable=False,
        server_default="PENDING",
    ),
    sa.Column("progress", sa.Integer, nullable=False, server_default="0"),
    sa.Column("total", sa.Integer),
    sa.Column("processed", sa.Integer),
    sa.Column("result", sa.JSON().with_variant(postgresql.JSONB(), "postgresql")),
    sa.Column("error", sa.Text),
    sa.Column("startedAt", Timestamp3),
    sa.Column("completedAt", Timestamp3),
    sa.Column("createdAt", Timestamp3, nullable=False, server_default=sa.func.now()),
)


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def sqlalchemy_url(database_url: str) -> str:
    """Accept the app's Prisma-style URL; use psycopg 3; drop Prisma-only query options."""
    parts = urlsplit(database_url)
    scheme = parts.scheme
    if scheme in ("postgres", "postgresql", "postgresql+psycopg2"):
        scheme = "postgresql+psycopg"
    prisma_only = {"schema", "connection_limit", "pool_timeout", "pgbouncer", "socket_timeout"}
    query = [(k, v) for k, v in parse_qsl(parts.query) if k not in prisma_only]
    return urlunsplit((scheme, parts.netloc, parts.path, urlencode(query), parts.fragment))


@lru_cache(maxsize=8)
def _engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = sa.create_engine(url)
        metadata.create_all(engine)  # the embedded default only; Prisma owns the real table
        return engine
    return sa.create_engine(
        url,
        pool_pre_ping=True,  # connections that died with a database restart are replaced
        pool_size=2,
        max_overflow=2,
        connect_args={"connect_timeout": CONNECT_TIMEOUT_SECONDS},
    )


_engine_lock = threading.Lock()  # one engine per URL, also when two threads ask at once


def engine_for(settings: Settings | None = None) -> Engine:
    settings = settings or get_settings()
    if settings.database_url:
        url = sqlalchemy_url(settings.database_url)
    else:
        settings.sqlite_path.parent.mkdir(parents=True, exist_ok=True)
        url = f"sqlite:///{settings.sqlite_path}"
    with _engine_lock:
        return _engine(url)


_BASE36 = string.digits + string.ascii_lowercase


def job_id_for_flow_run(flow_run_id: str) -> str:
    """A cuid-shaped id (25 chars, leading "c") derived from a flow-run id.

    Deterministic so that hooks, retries and the reconciler find the row a run created for
    itself without storing anything else.
    """
    number = int.from_bytes(hashlib.sha256(str(flow_run_id).encode()).digest()[:16], "big")
    digits: list[str] = []
    while len(digits) < 24:
        number, rest = divmod(number, 36)
        digits.append(_BASE36[rest])
    return "c" + "".join(digits)


def truncate_error(message: str) -> str:
    """At most ERROR_MAX_CHARS: the first line (which step, why) and the end (last stderr)."""
    if len(message) <= ERROR_MAX_CHARS:
        return message
    head = message.split("\n", 1)[0][:500]
    marker = "\n[…]\n"
    return head + marker + message[-(ERROR_MAX_CHARS - len(head) - len(marker)) :]


def not_cancelled() -> sa.ColumnElement[bool]:
    """Rows a run may still write: anything but a cancel (an admin cancel is final)."""
    c = sync_job.c
    return sa.or_(c.status != SyncJobStatus.FAILED, c.error.is_(None), c.error != CANCEL_MESSAGE)


ACTIVE = (SyncJobStatus.PENDING, SyncJobStatus.RUNNING)


# The database cannot take this write now, whatever the write: the same SQLSTATEs as the shim's
# (shim/db_errors.py). Read-only (a standby after a failover, maintenance), the server shutting
# down, crashed, starting or recovering, connection errors, out of connections or resources, and
# a transaction rolled back by a serialization failure or a deadlock (run again as it was).
OUTAGE_SQLSTATES = frozenset({"25006", "57P01", "57P02", "57P03", "40001", "40P01"})
OUTAGE_SQLSTATE_CLASSES = frozenset({"08", "53"})


def is_transient(exc: BaseException) -> bool:
    """A database error worth retrying: the connection went wrong, or the database cannot take
    writes for now (by SQLSTATE), not the statement."""
    if isinstance(exc, sa.exc.DBAPIError) and exc.connection_invalidated:
        return True
    state = getattr(getattr(exc, "orig", None), "sqlstate", None) or getattr(exc, "sqlstate", None)
    if isinstance(state, str) and (state in OUTAGE_SQLSTATES or state[:2] in OUTAGE_SQLSTATE_CLASSES):
        return True
    # OperationalError: refused, reset, "terminating connection due to administrator command",
    # SQLite's "database is locked"; TimeoutError: no pooled connection came free in time
    return isinstance(exc, sa.exc.OperationalError | sa.exc.InterfaceError | sa.exc.TimeoutError)


def _first_line(exc: BaseException | None) -> str:
    """The first line of what the driver said (the DBAPI error under SQLAlchemy's), for a log."""
    lines = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return lines[0] if lines else ""


def _log_retry(state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome else None
    log.warning(
        "SyncJob write failed (attempt %d, %s: %s); retrying in %.1fs",
        state.attempt_number,
        type(exc).__name__,
        _first_line(exc),
        state.upcoming_sleep,
    )


class SyncJobRepository:
    """The writes a run makes. Every method is one short transaction.

    None of them overwrites a cancelled row. A row failed by the admin's stale sweep is
    overwritten by the run's real final state.
    """

    def __init__(self, engine: Engine, retry_seconds: float = 0.0) -> None:
        self.engine = engine
        self.retry_seconds = retry_seconds  # how long state transitions retry transient errors

    def _transition(self, write: Callable[[], T]) -> T:
        """Run one write, retried with backoff while the database is unreachable."""
        if self.retry_seconds <= 0:
            return write()
        retrying = Retrying(
            retry=retry_if_exception(is_transient),
            stop=stop_after_delay(self.retry_seconds),
            wait=wait_exponential(multiplier=0.5, max=5),
            before_sleep=_log_retry,
            reraise=True,
        )
        return retrying(write)

    def _with_text(self, job_id: str, write: Callable[[Clean], T], retried: bool = True) -> T:
        """`write(safe_text)`, retried as a transition (unless not `retried`); when the database
        refuses the content (CONTENT_REFUSED: not the connection, so not transient), once more as
        `write(plain_text)`."""
        run: Callable[[Callable[[], T]], T] = self._transition if retried else (lambda once: once())
        try:
            return run(lambda: write(safe_text))
        except CONTENT_REFUSED as exc:
            log.warning(
                "SyncJob %s: the database refused the text (%s); writing it again as plain ASCII",
                job_id,
                _first_line(exc) or type(exc).__name__,
            )
            return run(lambda: write(plain_text))

    def _upsert(self, values: dict[str, Any], update: dict[str, Any]) -> ReturningInsert[Any]:
        dialect = postgresql if self.engine.dialect.name == "postgresql" else sqlite
        insert = dialect.insert(sync_job).values(**values)
        return insert.on_conflict_do_update(
            index_elements=["id"], set_=update, where=not_cancelled()
        ).returning(sync_job.c.id)

    def _update(self, job_id: str, values: dict[str, Any], *conditions: sa.ColumnElement[bool]) -> bool:
        stmt = (
            sa.update(sync_job).where(sync_job.c.id == job_id, not_cancelled(), *conditions).values(**values)
        )
        with self.engine.begin() as conn:
            return conn.execute(stmt).rowcount > 0

    def mark_running(self, job_id: str, script: str, flow_run_id: str | None = None) -> bool:
        """RUNNING now; creates the row when the run was started without one.

        While the run goes on, `result` holds {"flowRunId"} (the admin never shows `result`) so
        that cancels and the reconciler find the run. False when the row was cancelled.
        """
        now = utcnow()
        link = {"flowRunId": flow_run_id} if flow_run_id else None
        stmt = self._upsert(
            {
                "id": job_id,
                "script": script,
                "status": SyncJobStatus.RUNNING,
                "progress": 0,
                "startedAt": now,
                "createdAt": now,
                "result": link,
            },
            {
                "status": SyncJobStatus.RUNNING,
                "startedAt": sa.func.coalesce(sync_job.c.startedAt, now),
                "completedAt": None,
                "error": None,
                "result": link,
            },
        )
        return self._transition(lambda: self._returns_row(stmt))

    def _returns_row(self, stmt: ReturningInsert[Any]) -> bool:
        with self.engine.begin() as conn:
            return conn.execute(stmt).first() is not None

    def set_progress(
        self, job_id: str, progress: int, processed: int | None = None, total: int | None = None
    ) -> None:
        values: dict[str, Any] = {"progress": max(0, min(progress, 100))}
        if processed is not None:
            values["processed"] = processed
        if total is not None:
            values["total"] = total
        self._update(job_id, values, sync_job.c.status.in_(ACTIVE))  # a late write never reopens a row

    def mark_completed(
        self, job_id: str, result: Mapping[str, Any], processed: int | None = None, total: int | None = None
    ) -> bool:
        now = utcnow()

        def write(clean: Clean) -> bool:
            values: dict[str, Any] = {
                "status": SyncJobStatus.COMPLETED,
                "progress": 100,
                "completedAt": now,
                "result": safe_values(dict(result), clean),
                "error": None,
            }
            if processed is not None:
                values["processed"] = processed
            if total is not None:
                values["total"] = total
            return self._update(job_id, values)

        return self._with_text(job_id, write)

    def mark_failed(
        self,
        job_id: str,
        error: str,
        script: str | None = None,
        result: Mapping[str, Any] | None = None,
        only_if_active: bool = False,
    ) -> bool:
        """FAILED with the error; creates the row if it is missing and `script` is known.

        `only_if_active`: leave rows that already ended alone (the reconciler; refused events use
        `fail_pending`).
        """
        now = utcnow()

        def failed(clean: Clean) -> dict[str, Any]:
            values: dict[str, Any] = {
                "status": SyncJobStatus.FAILED,
                "completedAt": now,
                "error": truncate_error(clean(error)),
            }
            if result is not None:
                values["result"] = safe_values(dict(result), clean)
            return values

        if script is None or only_if_active:
            conditions = [sync_job.c.status.in_(ACTIVE)] if only_if_active else []
            return self._with_text(job_id, lambda clean: self._update(job_id, failed(clean), *conditions))

        def upsert(clean: Clean) -> bool:
            values = failed(clean)
            return self._returns_row(
                self._upsert({"id": job_id, "script": script, "createdAt": now, **values}, values)
            )

        return self._with_text(job_id, upsert)

    def fail_pending(self, job_id: str, error: str) -> bool:
        """FAILED with the error, only while the row is still PENDING: what intake does for an
        event it refused. A RUNNING row has a run (live, or dead and the reconciler's to fail);
        a row that ended is never rewritten. False when no PENDING row has this id."""
        now = utcnow()

        def write(clean: Clean) -> bool:
            error_text = truncate_error(clean(error))
            values = {"status": SyncJobStatus.FAILED, "completedAt": now, "error": error_text}
            return self._update(job_id, values, sync_job.c.status == SyncJobStatus.PENDING)

        # not a transition (intake answers at once): no retry, but the same plain fallback
        return self._with_text(job_id, write, retried=False)

    def create_pending(self, job_id: str, script: str) -> None:
        """What the admin's POST /api/admin/syncs inserts before sending the event."""
        with self.engine.begin() as conn:
            conn.execute(
                sa.insert(sync_job).values(
                    id=job_id,
                    script=script,
                    status=SyncJobStatus.PENDING,
                    progress=0,
                    createdAt=utcnow(),
                )
            )

    def cancel(self, job_id: str) -> bool:
        """What the admin's cancel does: an active row becomes FAILED with the cancel message."""
        stmt = (
            sa.update(sync_job)
            .where(sync_job.c.id == job_id, sync_job.c.status.in_(ACTIVE))
            .values(status=SyncJobStatus.FAILED, error=CANCEL_MESSAGE, completedAt=utcnow())
        )
        with self.engine.begin() as conn:
            return conn.execute(stmt).rowcount > 0

    def get(self, job_id: str) -> SyncJobRow | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(sync_job).where(sync_job.c.id == job_id)).mappings().first()
        return _row(row) if row else None

    def recent(self, limit: int = 20) -> list[SyncJobRow]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(sync_job).order_by(sync_job.c.createdAt.desc()).limit(limit)
            ).mappings()
            return [_row(r) for r in rows]

    def active(self) -> list[SyncJobRow]:
        """PENDING and RUNNING rows."""
        query = sa.select(sync_job).where(sync_job.c.status.in_(ACTIVE))
        with self.engine.connect() as conn:
            return [_row(r) for r in conn.execute(query).mappings()]

    def cancelled_since(self, since: datetime) -> list[SyncJobRow]:
        query = sa.select(sync_job).where(
            sync_job.c.status == SyncJobStatus.FAILED,
            sync_job.c.error == CANCEL_MESSAGE,
            sync_job.c.completedAt >= since,
        )
        with self.engine.connect() as conn:
            return [_row(r) for r in conn.execute(query).mappings()]

    def last_runs(self) -> dict[str, SyncJobRow]:
        """The newest row of each script."""
        newest = (
            sa.select(sync_job.c.script, sa.func.max(sync_job.c.createdAt).label("created"))
            .group_by(sync_job.c.script)
            .subquery()
        )
        query = sa.select(sync_job).join(
            newest,
            sa.and_(sync_job.c.script == newest.c.script, sync_job.c.createdAt == newest.c.created),
        )
        with self.engine.connect() as conn:
            return {r["script"]: _row(r) for r in conn.execute(query).mappings()}


def flow_run_of(row: Mapping[str, Any]) -> str | None:
    """The flow run a row belongs to, when the run has started."""
    result = row.get("result")
    if isinstance(result, str):  # SQLite may hand JSON back as text on raw reads
        result = json.loads(result)
    return result.get("flowRunId") if isinstance(result, dict) else None


def syncjob_repository(settings: Settings | None = None) -> SyncJobRepository:
    """The SyncJob repository on DATABASE_URL (or the embedded SQLite file); its state
    transitions retry for POLIGRAPH_SYNCJOB_RETRY_SECONDS."""
    settings = settings or get_settings()
    return SyncJobRepository(engine_for(settings), retry_seconds=settings.syncjob_retry_seconds)
