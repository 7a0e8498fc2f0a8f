"""The event outbox: every accepted event is committed here before the client gets its 200; the
dispatcher then claims the pending ones and turns them into flow runs."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple

import psycopg
import psycopg.conninfo
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from deployments.settings import Settings, get_settings
from deployments.syncjob import sqlalchemy_url, utcnow
from shim.events import InboundEvent
from shim.jsonvalues import JSONObject
from shim.mapping import NOTHING, Action, EventAction
from shim.settings import ShimSettings
from shim.tables import inngest_dedupe, inngest_event

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


class EventStatus(StrEnum):
    """An event row's `status` (stored as its value)."""

    PENDING = "pending"  # the dispatcher still has to act
    DONE = "done"  # its run was created, or it needed none
    DUPLICATE = "duplicate"  # its dedupe key was held: no run
    FAILED = "failed"  # Prefect refused its run


PENDING, DONE, DUPLICATE, FAILED = (
    EventStatus.PENDING,
    EventStatus.DONE,
    EventStatus.DUPLICATE,
    EventStatus.FAILED,
)
MAX_PLAIN_DEDUPE_KEY = 200  # characters; a btree index entry holds at most ~2700 bytes
HEAD_REVISION = "0003"  # the latest migration (a test checks it against Alembic's head)


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
        engine = sa.create_engine(url, connect_args={"timeout": 30})
        sa.event.listen(engine, "connect", _sqlite_wal)
        return engine
    # Our tables resolve in our own schema; Prisma's `public` is never touched.
    return sa.create_engine(url, pool_pre_ping=True, connect_args={"options": f"-csearch_path={schema}"})


def _sqlite_wal(dbapi_connection: Any, _record: Any) -> None:
    # WAL: the dispatcher's and the metrics' reads never wait for intake's writes, nor block them.
    dbapi_connection.execute("PRAGMA journal_mode=WAL")


def migrate(engine: Engine, schema: str) -> None:
    """Create the schema (PostgreSQL) and bring the tables to the latest migration.

    Alembic (~12 MB, for the life of the process) is only loaded when there is something to do.
    Replicas starting together take turns (a transaction-scoped advisory lock): PostgreSQL's
    `CREATE SCHEMA IF NOT EXISTS` is not safe against a concurrent one (the second fails with a
    unique violation), and two upgrades at once would race on the tables."""
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(
                sa.text("SELECT pg_advisory_xact_lock(hashtext(:name))"), {"name": f"migrate {schema}"}
            )
            conn.execute(sa.text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
        if _revision(conn) == HEAD_REVISION:
            return
        from alembic import command
        from alembic.config import Config

        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        config.attributes["connection"] = conn
        command.upgrade(config, "head")


def _revision(conn: Connection) -> str | None:
    if not sa.inspect(conn).has_table("alembic_version"):
        return None
    return conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()


def dedupe_key_of(user_id: str) -> str:
    """The dedupe key of an event's own `id`: the id itself, or for a long id (or one with a
    NUL) a fixed-size digest, so that any id fits the primary-key index and a `text` column."""
    if len(user_id) <= MAX_PLAIN_DEDUPE_KEY and "\x00" not in user_id:
        return user_id
    return "sha256:" + hashlib.sha256(user_id.encode(errors="surrogatepass")).hexdigest()


@dataclass(frozen=True)
class Recorded:
    event_id: str
    status: EventStatus


EventBatch = list[tuple[str, InboundEvent, EventAction]]  # one request's events: (id, event, action)


class NewEvent(NamedTuple):
    """An event row as intake inserts it (the columns it decides; status and times are the
    statement's). A named tuple: one is built for every event received, in less time than a
    frozen dataclass."""

    pk: str
    event_id: str
    user_id: str | None
    dedupe_key: str
    name: str
    payload: JSONObject
    action: Action
    deployment: str | None
    parameters: JSONObject | None
    job_id: str | None
    reason: str | None

    def columns(self) -> dict[str, Any]:
        """Column -> value, for the statement (the JSON values as they are: not copied)."""
        return self._asdict()


@dataclass(frozen=True)
class ClaimedEvent:
    """A pending event as the dispatcher claims it: what it needs to act and to report."""

    pk: str
    event_id: str
    name: str
    action: Action
    deployment: str | None
    parameters: JSONObject | None
    job_id: str | None
    reason: str | None
    attempts: int
    received_at: datetime

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> ClaimedEvent:
        """From a row of the event table (a SQLAlchemy mapping, or `EventOutbox.events()`'s)."""
        return cls(
            pk=row["pk"],
            event_id=row["event_id"],
            name=row["name"],
            action=Action(row["action"]),
            deployment=row["deployment"],
            parameters=row["parameters"],
            job_id=row["job_id"],
            reason=row["reason"],
            attempts=row["attempts"],
            received_at=row["received_at"],
        )


@dataclass(frozen=True)
class Outcome:
    """What the dispatcher decided for one claimed row."""

    pk: str
    status: EventStatus = PENDING  # PENDING: postponed to `next_attempt_at`
    flow_run_id: str | None = None
    error: str | None = None
    attempts: int = 0
    next_attempt_at: datetime | None = None


class EventOutbox:
    def __init__(self, engine: Engine, dedupe_hours: float = 24) -> None:
        self.engine = engine
        self.dedupe_window = timedelta(hours=dedupe_hours)

    def record(self, events: EventBatch) -> list[Recorded]:
        """Store a request's events in one transaction (all or nothing), in order."""
        return self.record_requests([events])[0]

    def record_requests(self, requests: list[EventBatch]) -> list[list[Recorded]]:
        """Store several requests' events in one transaction and one commit (group commit), in
        order: an event id seen earlier in the group is a duplicate, as if the requests had been
        stored one after the other. All or nothing for the whole group.

        PostgreSQL: one statement (dedupe claim + insert). Elsewhere two, whatever the size (each
        sent in pages by SQLAlchemy). Per-event statements made a 5,000-event batch take seconds.
        """
        now = utcnow()
        rows, claims = _group_rows(requests)
        with self.engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                params = self._postgres_params(rows, claims, now)
                result = conn.exec_driver_sql(_POSTGRES_RECORD, params)
                status_of = {pk: status for pk, status in result}
            else:
                status_of = self._insert_generic(conn, rows, claims, now)
        return _recorded(requests, rows, status_of)

    async def record_requests_async(
        self, conn: psycopg.AsyncConnection[Any], requests: list[EventBatch]
    ) -> list[list[Recorded]]:
        """`record_requests` on PostgreSQL, on an asyncio connection in autocommit mode (the
        statement is its own transaction)."""
        now = utcnow()
        rows, claims = _group_rows(requests)
        cursor = await conn.execute(_POSTGRES_RECORD, self._postgres_params(rows, claims, now))
        status_of: dict[str, str] = dict(await cursor.fetchall())
        return _recorded(requests, rows, status_of)

    def postgres_conninfo(self) -> str:
        """A libpq connection string to this outbox's PostgreSQL database, with the search path
        of the engine's own connections (our schema)."""
        with self.engine.connect() as conn:
            search_path = conn.exec_driver_sql("SHOW search_path").scalar_one()
        url = self.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        return psycopg.conninfo.make_conninfo(url, options=f"-csearch_path={search_path}")

    def _postgres_params(self, rows: list[NewEvent], claims: set[str], now: datetime) -> dict[str, Any]:
        # The JSON values go as JSON texts (cast back in the statement): a \u0000 inside one is
        # valid JSON but not PostgreSQL text, which json_to_recordset would make of it.
        incoming = [
            {
                **row.columns(),
                "payload": json.dumps(row.payload),
                "parameters": None if row.parameters is None else json.dumps(row.parameters),
                "claims": row.pk in claims,
            }
            for row in rows
        ]
        return {"rows": json.dumps(incoming), "now": now, "expires": now + self.dedupe_window}

    def _insert_generic(
        self, conn: Connection, rows: list[NewEvent], claims: set[str], now: datetime
    ) -> dict[str, str]:
        claimed = self._claim_dedupe_keys(
            conn, {row.dedupe_key: row.pk for row in rows if row.pk in claims}, now
        )
        status_of: dict[str, str] = {}
        for row in rows:
            if row.pk not in claims or row.dedupe_key not in claimed:
                status_of[row.pk] = DUPLICATE
            elif row.action == NOTHING:
                status_of[row.pk] = DONE
            else:
                status_of[row.pk] = PENDING
        values = [
            {
                **row.columns(),
                "status": status_of[row.pk],
                "received_at": now,
                "attempts": 0,
                "next_attempt_at": now,
                "done_at": None if status_of[row.pk] == PENDING else now,
            }
            for row in rows
        ]
        conn.execute(sa.insert(inngest_event), values)
        return status_of

    def _claim_dedupe_keys(self, conn: Connection, keys: dict[str, str], now: datetime) -> set[str]:
        """The keys (key -> event pk) no live event held: they are now ours for the window.

        Sorted, so that two shims claiming overlapping keys lock them in the same order."""
        if not keys:
            return set()
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
        self,
        conn: Connection,
        limit: int,
        exclude: list[str] | None = None,
        actions: tuple[Action, ...] | None = None,
    ) -> list[ClaimedEvent]:
        """Pending events that are due, oldest first, locked for this transaction on PostgreSQL
        (SKIP LOCKED: another shim passes them by). `actions`: only rows with these actions."""
        query = (
            sa.select(inngest_event)
            .where(inngest_event.c.status == PENDING, inngest_event.c.next_attempt_at <= utcnow())
            .order_by(inngest_event.c.received_at, inngest_event.c.pk)
            .limit(limit)
        )
        if exclude:
            query = query.where(inngest_event.c.pk.not_in(exclude))
        if actions is not None:
            query = query.where(inngest_event.c.action.in_(actions))
        if conn.dialect.name == "postgresql":
            query = query.with_for_update(skip_locked=True)
        return [ClaimedEvent.from_row(row) for row in conn.execute(query).mappings()]

    def apply(self, conn: Connection, outcomes: list[Outcome]) -> None:
        """Write the dispatcher's outcomes: one statement for the finished rows, one for the
        postponed ones."""
        now = utcnow()
        finished = [o for o in outcomes if o.status != PENDING]
        postponed = [o for o in outcomes if o.status == PENDING]
        _update_each(
            conn,
            [
                {"pk": o.pk, "status": o.status, "flow_run_id": o.flow_run_id, "last_error": o.error}
                for o in finished
            ],
            done_at=now,
        )
        _update_each(
            conn,
            [
                {
                    "pk": o.pk,
                    "attempts": o.attempts,
                    "next_attempt_at": o.next_attempt_at or now,
                    "last_error": (o.error or "")[:2000],
                }
                for o in postponed
            ],
        )

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        """Every event row with all its columns, as plain dicts: for tests and for looking (the
        dispatcher's rows are `claim_due`'s `ClaimedEvent`s)."""
        query = sa.select(inngest_event).order_by(inngest_event.c.received_at, inngest_event.c.pk)
        if name:
            query = query.where(inngest_event.c.name == name)
        with self.engine.connect() as conn:
            return [dict(row) for row in conn.execute(query).mappings()]

    def pending_count(self) -> int:
        return self.pending_stats()[0]

    def pending_stats(self) -> tuple[int, datetime | None]:
        """How many events are pending, and when the oldest of them arrived (one small query)."""
        query = sa.select(sa.func.count(), sa.func.min(inngest_event.c.received_at)).where(
            inngest_event.c.status == PENDING
        )
        with self.engine.connect() as conn:
            count, oldest = conn.execute(query).one()
        return int(count), oldest


def _group_rows(requests: list[EventBatch]) -> tuple[list[NewEvent], set[str]]:
    """The rows of a group's events, in order, and the pks of the first event of the group with
    each dedupe key (the only ones that may claim it)."""
    rows = []
    claims: set[str] = set()
    first_of_key: set[str] = set()
    for request in requests:
        for event_id, event, action in request:
            key = dedupe_key_of(event.id) if event.id else event_id
            pk = uuid.uuid4().hex
            if key not in first_of_key:
                first_of_key.add(key)
                claims.add(pk)
            rows.append(_event_row(pk, key, event_id, event, action))
    return rows, claims


def _recorded(
    requests: list[EventBatch], rows: list[NewEvent], status_of: dict[str, str]
) -> list[list[Recorded]]:
    recorded: list[list[Recorded]] = []
    position = 0
    for request in requests:
        part = rows[position : position + len(request)]
        recorded.append([Recorded(row.event_id, EventStatus(status_of[row.pk])) for row in part])
        position += len(request)
    return recorded


def _event_row(pk: str, key: str, event_id: str, event: InboundEvent, action: EventAction) -> NewEvent:
    return NewEvent(
        pk=pk,
        event_id=event_id,
        user_id=event.id.replace("\x00", "\ufffd") or None,  # text holds no NUL
        dedupe_key=key,
        name=event.name,
        payload=event.as_json(),
        action=action.action,
        deployment=action.deployment,
        parameters=action.parameters,
        job_id=action.job_id,
        reason=action.reason,
    )


# One round trip for a whole group: the incoming rows as one JSON document (one json.dumps in C;
# arrays cost psycopg ~40 µs per event to quote), the dedupe keys claimed by the first event of
# the group with each key (in key order, as two shims must lock them), then every event inserted
# with its status: duplicate unless its own key claim went through. In the driver's paramstyle.
_POSTGRES_RECORD = """
WITH incoming AS (
    SELECT * FROM json_to_recordset(%(rows)s::json) AS t(pk text, event_id text, user_id text,
        dedupe_key text, name text, payload text, action text, deployment text, parameters text,
        job_id text, reason text, claims boolean)
),
claimed AS (
    INSERT INTO inngest_dedupe AS d (key, event_pk, expires_at)
    SELECT dedupe_key, pk, %(expires)s FROM incoming WHERE claims ORDER BY dedupe_key
    ON CONFLICT (key) DO UPDATE SET event_pk = excluded.event_pk, expires_at = excluded.expires_at
    WHERE d.expires_at <= %(now)s
    RETURNING d.event_pk
),
decided AS (
    SELECT i.*, CASE WHEN c.event_pk IS NULL THEN 'duplicate'
                     WHEN i.action = 'nothing' THEN 'done'
                     ELSE 'pending' END AS status
    FROM incoming i LEFT JOIN claimed c ON c.event_pk = i.pk
)
INSERT INTO inngest_event (pk, event_id, user_id, dedupe_key, name, payload, received_at, action,
                           deployment, parameters, job_id, reason, status, attempts,
                           next_attempt_at, done_at)
SELECT pk, event_id, user_id, dedupe_key, name, CAST(payload AS json), %(now)s, action, deployment,
       CAST(parameters AS json), job_id, reason, status, 0, %(now)s,
       CASE WHEN status = 'pending' THEN NULL ELSE %(now)s END
FROM decided
RETURNING pk, status
"""


def open_outbox(shim: ShimSettings, app: Settings | None = None) -> EventOutbox:
    app = app or get_settings()
    engine = _engine(shim_database_url(shim, app), shim.schema_name)
    migrate(engine, shim.schema_name)
    return EventOutbox(engine, shim.dedupe_hours)


def _update_each(conn: Connection, rows: list[dict[str, Any]], **same: Any) -> None:
    """One UPDATE of the event table run for every row (executemany): a row's `pk` picks the
    event, its other keys are the new values; `same` is set on all of them."""
    if not rows:
        return
    columns = [name for name in rows[0] if name != "pk"]
    statement = (
        sa.update(inngest_event)
        .where(inngest_event.c.pk == sa.bindparam("b_pk"))
        .values({name: sa.bindparam(f"b_{name}") for name in columns})
    )
    if same:
        statement = statement.values(**same)
    conn.execute(statement, [{f"b_{name}": value for name, value in row.items()} for row in rows])
