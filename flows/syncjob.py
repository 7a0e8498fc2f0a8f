"""The app's `SyncJob` table, as Prisma shapes it, and the writes a run makes to it.

Production never creates or alters the table (Prisma owns it); only the embedded SQLite default
is created here. Timestamps are naive UTC, as Prisma stores `TIMESTAMP(3)`.
"""

from __future__ import annotations

import enum
import hashlib
import string
from collections.abc import Mapping
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine

from flows.settings import Settings, get_settings

ERROR_MAX_CHARS = 2000


class SyncJobStatus(enum.StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"


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
    engine = (
        sa.create_engine(url, pool_pre_ping=True, pool_size=2, max_overflow=2)
        if (not url.startswith("sqlite"))
        else sa.create_engine(url)
    )
    if url.startswith("sqlite"):
        metadata.create_all(engine)  # embedded default only
    return engine


def engine_for(settings: Settings | None = None) -> Engine:
    settings = settings or get_settings()
    if settings.database_url:
        return _engine(sqlalchemy_url(settings.database_url))
    settings.sqlite_path.parent.mkdir(parents=True, exist_ok=True)
    return _engine(f"sqlite:///{settings.sqlite_path}")


_BASE36 = string.digits + string.ascii_lowercase


def job_id_for_flow_run(flow_run_id: str) -> str:
    """A cuid-shaped id (25 chars, leading "c") derived from a flow-run id.

    Deterministic so that hooks, retries and the reconciler find the row a run created for
    itself without storing anything else.
    """
    number = int.from_bytes(hashlib.sha256(str(flow_run_id).encode()).digest()[:16], "big")
    digits = []
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


class SyncJobStore:
    """The writes a run makes. Every method is one short transaction."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def _upsert(self, values: dict[str, Any], update: dict[str, Any]):
        insert = (postgresql.insert if self.engine.dialect.name == "postgresql" else sqlite.insert)(
            sync_job
        ).values(**values)
        return insert.on_conflict_do_update(index_elements=["id"], set_=update)

    def mark_running(self, job_id: str, script: str) -> None:
        """RUNNING now; creates the row when the run was started without one."""
        now = utcnow()
        c = sync_job.c
        stmt = self._upsert(
            {
                "id": job_id,
                "script": script,
                "status": SyncJobStatus.RUNNING,
                "progress": 0,
                "startedAt": now,
                "createdAt": now,
            },
            {
                "status": SyncJobStatus.RUNNING,
                "startedAt": sa.func.coalesce(c.startedAt, now),
                "completedAt": None,
                "error": None,
            },
        )
        with self.engine.begin() as conn:
            conn.execute(stmt)

    def set_progress(
        self, job_id: str, progress: int, processed: int | None = None, total: int | None = None
    ) -> None:
        values: dict[str, Any] = {"progress": max(0, min(progress, 100))}
        if processed is not None:
            values["processed"] = processed
        if total is not None:
            values["total"] = total
        with self.engine.begin() as conn:
            conn.execute(sa.update(sync_job).where(sync_job.c.id == job_id).values(**values))

    def mark_completed(self, job_id: str, result: Mapping[str, Any]) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                sa.update(sync_job)
                .where(sync_job.c.id == job_id)
                .values(
                    status=SyncJobStatus.COMPLETED,
                    progress=100,
                    completedAt=utcnow(),
                    result=dict(result),
                    error=None,
                )
            )

    def mark_failed(
        self,
        job_id: str,
        error: str,
        script: str | None = None,
        result: Mapping[str, Any] | None = None,
    ) -> None:
        """FAILED with the error; creates the row if it is missing and `script` is known."""
        now = utcnow()
        values: dict[str, Any] = {
            "status": SyncJobStatus.FAILED,
            "completedAt": now,
            "error": truncate_error(error),
        }
        if result is not None:
            values["result"] = dict(result)
        with self.engine.begin() as conn:
            if script is None:
                conn.execute(sa.update(sync_job).where(sync_job.c.id == job_id).values(**values))
            else:
                conn.execute(
                    self._upsert({"id": job_id, "script": script, "createdAt": now, **values}, values)
                )

    def get(self, job_id: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(sync_job).where(sync_job.c.id == job_id)).mappings().first()
        return dict(row) if row else None

    def recent(self, limit: int = 20) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(sync_job).order_by(sync_job.c.createdAt.desc()).limit(limit)
            ).mappings()
            return [dict(r) for r in rows]


def get_store(settings: Settings | None = None) -> SyncJobStore:
    return SyncJobStore(engine_for(settings))
