"""The shim's own tables: every accepted event, and the 24-hour dedupe keys. Finished events
and expired keys are deleted after a while (shim/retention.py); pending events never are.

On PostgreSQL they live in their own schema (never `public`, which Prisma owns and
`prisma db push` prunes); on the embedded default, in a SQLite file. Alembic migrations in
shim/migrations create them; these definitions must match the latest migration.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

# status: pending (the dispatcher still has to act), done, duplicate, failed
inngest_event = sa.Table(
    "inngest_event",
    metadata,
    sa.Column("pk", sa.String(32), primary_key=True),  # one row per received event
    sa.Column("event_id", sa.String(26), nullable=False, index=True),  # the id returned to the client
    sa.Column("user_id", sa.Text),  # the event's own `id`, when it has one
    sa.Column("dedupe_key", sa.Text, nullable=False),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("payload", sa.JSON, nullable=False),  # the normalised event
    sa.Column("received_at", sa.DateTime, nullable=False),
    sa.Column("action", sa.String(16), nullable=False),  # run | fail_job | nothing
    sa.Column("deployment", sa.Text),
    sa.Column("parameters", sa.JSON),
    sa.Column("job_id", sa.Text),
    sa.Column("reason", sa.Text),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("next_attempt_at", sa.DateTime, nullable=False),
    sa.Column("last_error", sa.Text),
    sa.Column("flow_run_id", sa.String(36)),
    sa.Column("done_at", sa.DateTime),
    sa.Index("ix_inngest_event_pending", "status", "next_attempt_at"),
    # pending events in arrival order (the dispatcher's claims, the oldest-pending metric)
    sa.Index(
        "ix_inngest_event_pending_order",
        "received_at",
        "pk",
        postgresql_where=sa.text("status = 'pending'"),
        sqlite_where=sa.text("status = 'pending'"),
    ),
    # finished events by when they finished (the purge: shim/retention.py)
    sa.Index(
        "ix_inngest_event_finished",
        "done_at",
        postgresql_where=sa.text("status <> 'pending'"),
        sqlite_where=sa.text("status <> 'pending'"),
    ),
)

inngest_dedupe = sa.Table(
    "inngest_dedupe",
    metadata,
    sa.Column("key", sa.Text, primary_key=True),
    sa.Column("event_pk", sa.String(32), nullable=False),
    sa.Column("expires_at", sa.DateTime, nullable=False, index=True),  # the purge of expired keys
)
