"""Pending events in arrival order: the dispatcher's claim and the metrics' oldest pending event
read only the pending rows, however many events are done.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

PENDING = sa.text("status = 'pending'")


def upgrade() -> None:
    op.create_index(
        "ix_inngest_event_pending_order",
        "inngest_event",
        ["received_at", "pk"],
        postgresql_where=PENDING,
        sqlite_where=PENDING,
    )


def downgrade() -> None:
    op.drop_index("ix_inngest_event_pending_order", table_name="inngest_event")
