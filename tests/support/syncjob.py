"""Rows the way the app writes them."""

from __future__ import annotations

import sqlalchemy as sa

from deployments.syncjob import SyncJobRepository


def insert_pending(repository: SyncJobRepository, job_id: str, script: str) -> None:
    """What the admin's POST /api/admin/syncs does before sending the event."""
    with repository.engine.begin() as conn:
        conn.execute(
            sa.text("INSERT INTO \"SyncJob\" (id, script, status) VALUES (:id, :script, 'PENDING')"),
            {"id": job_id, "script": script},
        )
