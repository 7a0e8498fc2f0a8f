"""A refused or unhandled event fails its SyncJob only while that row is still PENDING: a row a
run has taken over (RUNNING) or that has ended (COMPLETED, FAILED, cancelled) is never rewritten
by intake. On PostgreSQL, through the HTTP API and the dispatcher; refused events never reach
Prefect, so no Prefect server is needed."""

from __future__ import annotations

import inngest
import pytest
import sqlalchemy as sa

from deployments.catalog import get_catalog
from deployments.syncjob import CANCEL_MESSAGE, sync_job
from shim.dispatcher import Dispatcher
from shim.events import InboundEvent
from shim.mapping import FAIL_JOB, EventAction
from shim.settings import ShimSettings
from support.shim import dev_client, postgres_outbox, running_shim

pytestmark = pytest.mark.integration


@pytest.fixture
def rows(syncjobs):
    """One row in each state, as the app and the runs leave them."""
    ids = {
        state: f"crefusal{state.lower():0<17}"[:25]
        for state in ("PENDING", "RUNNING", "COMPLETED", "FAILED", "CANCELLED")
    }
    for job_id in ids.values():
        syncjobs.create_pending(job_id, "alpha")
    syncjobs.mark_running(ids["RUNNING"], "alpha", "run-1")
    syncjobs.mark_running(ids["COMPLETED"], "alpha", "run-2")
    syncjobs.mark_completed(ids["COMPLETED"], {"flowRunId": "run-2", "steps": []})
    syncjobs.mark_running(ids["FAILED"], "alpha", "run-3")
    syncjobs.mark_failed(ids["FAILED"], "step alpha exited with 1")
    syncjobs.cancel(ids["CANCELLED"])
    return ids


def snapshot(syncjobs) -> dict[str, dict]:
    with syncjobs.engine.connect() as conn:
        return {row["id"]: dict(row) for row in conn.execute(sa.select(sync_job)).mappings()}


@pytest.mark.parametrize(
    ("name", "data", "reason"),
    [
        ("sync/alpha", {"flags": "--rm -rf"}, "sync/alpha: --rm is not allowed for alpha"),
        ("sync/nope", {}, "no flow handles sync/nope"),
    ],
    ids=["bad-flag", "unhandled"],
)
def test_a_refused_event_fails_only_a_pending_row(pg_url, syncjobs, rows, name, data, reason):
    outbox = postgres_outbox(pg_url)
    before = snapshot(syncjobs)
    with running_shim(ShimSettings(), outbox, catalog=get_catalog()) as (url, app):
        client = dev_client(url)
        for job_id in rows.values():
            client.send_sync(inngest.Event(name=name, data={**data, "jobId": job_id}))
        dispatcher: Dispatcher = app.state.dispatcher
        assert dispatcher.dispatch_due() == len(rows)
    after = snapshot(syncjobs)
    pending = after.pop(rows["PENDING"])
    assert pending["status"] == "FAILED" and pending["error"].startswith(reason)
    assert pending["completedAt"] is not None
    before.pop(rows["PENDING"])
    assert after == before  # RUNNING, COMPLETED, FAILED and cancelled rows: not one field changed
    assert after[rows["CANCELLED"]]["error"] == CANCEL_MESSAGE
    assert [event["status"] for event in outbox.events()] == ["done"] * len(rows)


def test_a_hostile_job_id_in_the_outbox_is_only_ever_a_bound_value(pg_url, syncjobs, rows):
    """Rows written by an older shim may hold any text: the dispatcher passes it as a parameter
    and moves on."""
    outbox = postgres_outbox(pg_url)
    before = snapshot(syncjobs)
    hostile = ["x' OR '1'='1", '"; DROP TABLE "SyncJob"; --', "c" * 10_000, "%", rows["COMPLETED"] + "%"]
    outbox.record(
        [
            (
                f"01HOSTILE{i:017d}",
                InboundEvent(name="sync/alpha", data={}, ts=1),
                EventAction(FAIL_JOB, job_id=job_id, reason="refused"),
            )
            for i, job_id in enumerate(hostile)
        ]
    )
    dispatcher = Dispatcher(outbox, ShimSettings())
    assert dispatcher.dispatch_due() == len(hostile)
    assert outbox.pending_count() == 0
    assert snapshot(syncjobs) == before
