"""Retention: the purge finds finished events by when they finished, and expired dedupe keys by
when they expire, through an index each, however large the tables (shim/retention.py).

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

FINISHED = sa.text("status <> 'pending'")


def upgrade() -> None:
    op.create_index(
        "ix_inngest_event_finished",
        "inngest_event",
        ["done_at"],
        postgresql_where=FINISHED,
        sqlite_where=FINISHED,
    )
    op.create_index("ix_inngest_dedupe_expires_at", "inngest_dedupe", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_inngest_dedupe_expires_at", table_name="inngest_dedupe")
    op.drop_index("ix_inngest_event_finished", table_name="inngest_event")
