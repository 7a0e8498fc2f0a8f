"""Event outbox and dedupe keys.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "inngest_event",
        sa.Column("pk", sa.String(32), primary_key=True),
        sa.Column("event_id", sa.String(26), nullable=False),
        sa.Column("user_id", sa.Text),
        sa.Column("dedupe_key", sa.Text, nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("payload", sa.JSON, nullable=False),
        sa.Column("received_at", sa.DateTime, nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
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
    )
    op.create_index("ix_inngest_event_event_id", "inngest_event", ["event_id"])
    op.create_index("ix_inngest_event_pending", "inngest_event", ["status", "next_attempt_at"])
    op.create_table(
        "inngest_dedupe",
        sa.Column("key", sa.Text, primary_key=True),
        sa.Column("event_pk", sa.String(32), nullable=False),
        sa.Column("expires_at", sa.DateTime, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("inngest_dedupe")
    op.drop_table("inngest_event")
