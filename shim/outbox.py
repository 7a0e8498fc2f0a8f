"""The event outbox: every accepted event is committed here before the client gets its 200; the
dispatcher then claims the pending ones and turns them into flow runs."""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from deployments.settings import Settings, get_settings
from deployments.syncjob import sqlalchemy_url, utcnow
from shim.events import InboundEvent
from shim.mapping import NOTHING, EventAction
from shim.settings import ShimSettings
from shim.tables import inngest_dedupe, inngest_event

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
PENDING, DONE, DUPLICATE, FAILED = "pending", "done", "duplicate", "failed"
MAX_PLAIN_DEDUPE_KEY = 200  # characters; a btree index entry holds at most ~2700 bytes


def shim_database_url(shim: ShimSettings, app: Settings) -> str:
    if shim.database_url:
        return sqlalchemy_url(shim.database_url)
    if app.database_url:
        return sqlalchemy_url(app.database_url)
    app.home.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{app.home / 'shim.sqlite'}"


@lru_cache(maxsize=4)
def _engine(url: str, schema: str) -> Engine:
    if url.startswith("sqlite"):
        return sa.create_engine(url, connect_args={"timeout": 30})
    # Our tables resolve in our own schema; Prisma's `public` is never touched.
    return sa.create_engine(url, pool_pre_ping=True, connect_args={"options": f"-csearch_path={schema}"})


def migrate(engine: Engine, schema: str) -> None:
    """Create the schema (PostgreSQL) and bring the tables to the latest migration."""
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(sa.text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        config.attributes["connection"] = conn
        command.upgrade(config, "head")


def dedupe_key_of(user_id: str) -> str:
    """The dedupe key of an event's own `id`: the id itself, or for a long id (or one with a
    NUL) a fixed-size digest, so that any id fits the primary-key index and a `text` column."""
    if len(user_id) <= MAX_PLAIN_DEDUPE_KEY and "\x00" not in user_id:
        return user_id
    return "sha256:" + hashlib.sha256(user_id.encode(errors="surrogatepass")).hexdigest()


@dataclass(frozen=True)
class Recorded:
    event_id: str
    status: str


class EventOutbox:
    def __init__(self, engine: Engine, dedupe_hours: float = 24) -> None:
        self.engine = engine
        self.dedupe_window = timedelta(hours=dedupe_hours)

    def record(self, events: list[tuple[str, InboundEvent, EventAction]]) -> list[Recorded]:
        """Store a request's events in one transaction (all or nothing), in order.

        Two statements whatever the batch size (each sent in pages by SQLAlchemy): claim the
        dedupe keys, then insert the events. Per-event statements made a 5,000-event batch take
        seconds of interpreter time.
        """
        now = utcnow()
        keyed = [
            (uuid.uuid4().hex, dedupe_key_of(event.id) if event.id else event_id, event_id, event, action)
            for event_id, event, action in events
        ]
        first_pk: dict[str, str] = {}  # the first event of the request with each key
        for pk, key, *_ in keyed:
            first_pk.setdefault(key, pk)
        rows = []
        recorded = []
        with self.engine.begin() as conn:
            claimed = self._claim_dedupe_keys(conn, first_pk, now)
            for pk, key, event_id, event, action in keyed:
                if key not in claimed or first_pk[key] != pk:
                    status = DUPLICATE
                elif action.action == NOTHING:
                    status = DONE
                else:
                    status = PENDING
                rows.append(
                    {
                        "pk": pk,
                        "event_id": event_id,
                        "user_id": event.id.replace("\x00", "\ufffd") or None,  # text holds no NUL
                        "dedupe_key": key,
                        "name": event.name,
                        "payload": event.as_json(),
                        "received_at": now,
                        "action": action.action,
                        "deployment": action.deployment,
                        "parameters": action.parameters,
                        "job_id": action.job_id,
                        "reason": action.reason,
                        "status": status,
                        "attempts": 0,
                        "next_attempt_at": now,
                        "done_at": None if status == PENDING else now,
                    }
                )
                recorded.append(Recorded(event_id, status))
            conn.execute(sa.insert(inngest_event), rows)
        return recorded

    def _claim_dedupe_keys(self, conn: Connection, keys: dict[str, str], now: datetime) -> set[str]:
        """The keys (key -> event pk) no live event held: they are now ours for the window.

        Sorted, so that two shims claiming overlapping keys lock them in the same order."""
        insert = (postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert)(inngest_dedupe)
        stmt = insert.on_conflict_do_update(
            index_elements=["key"],
            set_={"event_pk": insert.excluded.event_pk, "expires_at": insert.excluded.expires_at},
            where=inngest_dedupe.c.expires_at <= now,
        ).returning(inngest_dedupe.c.key)
        expires = now + self.dedupe_window
        params = [{"key": key, "event_pk": keys[key], "expires_at": expires} for key in sorted(keys)]
        return {row.key for row in conn.execute(stmt, params)}

    # --- dispatcher side ------------------------------------------------------------------
    def claim_due(
        self, conn: Connection, limit: int, exclude: list[str] | None = None
    ) -> list[dict[str, Any]]:
        """Pending events that are due, locked for this transaction (SKIP LOCKED on PostgreSQL)."""
        query = (
            sa.select(inngest_event)
            .where(
                inngest_event.c.status == PENDING,
                inngest_event.c.next_attempt_at <= utcnow(),
                inngest_event.c.pk.not_in(exclude or []),
            )
            .order_by(inngest_event.c.received_at, inngest_event.c.pk)
            .limit(limit)
        )
        if conn.dialect.name == "postgresql":
            query = query.with_for_update(skip_locked=True)
        return [dict(row) for row in conn.execute(query).mappings()]

    def finish(self, conn: Connection, pk: str, status: str, **values: Any) -> None:
        conn.execute(
            sa.update(inngest_event)
            .where(inngest_event.c.pk == pk)
            .values(status=status, done_at=utcnow(), **values)
        )

    def postpone(self, conn: Connection, pk: str, attempts: int, delay: float, error: str) -> None:
        conn.execute(
            sa.update(inngest_event)
            .where(inngest_event.c.pk == pk)
            .values(
                attempts=attempts,
                next_attempt_at=utcnow() + timedelta(seconds=delay),
                last_error=error[:2000],
            )
        )

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        query = sa.select(inngest_event).order_by(inngest_event.c.received_at, inngest_event.c.pk)
        if name:
            query = query.where(inngest_event.c.name == name)
        with self.engine.connect() as conn:
            return [dict(row) for row in conn.execute(query).mappings()]

    def pending_count(self) -> int:
        with self.engine.connect() as conn:
            query = sa.select(sa.func.count()).where(inngest_event.c.status == PENDING)
            return conn.execute(query).scalar_one()


def open_outbox(shim: ShimSettings, app: Settings | None = None) -> EventOutbox:
    app = app or get_settings()
    engine = _engine(shim_database_url(shim, app), shim.schema_name)
    migrate(engine, shim.schema_name)
    return EventOutbox(engine, shim.dedupe_hours)
