"""Retention: finished events older than POLIGRAPH_SHIM_RETENTION_DAYS and expired dedupe keys
leave the outbox, in bounded batches; pending events and recent ones stay. On SQLite (unit) and
PostgreSQL (integration); on PostgreSQL also two purges at once (replicas sharing the outbox):
neither waits for the other nor deadlocks.
"""

from __future__ import annotations

import threading
import time
import uuid
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from deployments.syncjob import utcnow
from shim.metrics import ShimMetrics
from shim.outbox import DONE, DUPLICATE, FAILED, PENDING, EventOutbox
from shim.retention import Purge, Purger
from shim.settings import ShimSettings
from shim.tables import inngest_dedupe, inngest_event
from support.polling import wait_for
from support.shim import postgres_outbox, running_shim, shim_metric


def event_row(status: str, done: datetime | None, received: datetime, tag: str) -> dict[str, Any]:
    pk = uuid.uuid4().hex
    return {
        "pk": pk,
        "event_id": pk[:26],
        "dedupe_key": pk,
        "name": "sync/press",
        "payload": {"name": "sync/press", "data": {"tag": tag}},
        "received_at": received,
        "action": "run",
        "status": status,
        "attempts": 0,
        "next_attempt_at": received,
        "done_at": done,
        "reason": tag,  # which kind of row it is, for the assertions
    }


def add_events(outbox: EventOutbox, rows: list[dict[str, Any]]) -> None:
    with outbox.engine.begin() as conn:
        conn.execute(sa.insert(inngest_event), rows)


def add_keys(outbox: EventOutbox, expires: list[datetime]) -> None:
    with outbox.engine.begin() as conn:
        conn.execute(
            sa.insert(inngest_dedupe),
            [{"key": uuid.uuid4().hex, "event_pk": uuid.uuid4().hex, "expires_at": at} for at in expires],
        )


def left(outbox: EventOutbox) -> tuple[list[str], int, int]:
    """The kinds of event rows left, the dedupe keys left, the expired ones among them."""
    now = utcnow()
    with outbox.engine.connect() as conn:
        kinds = sorted(conn.execute(sa.select(inngest_event.c.reason)).scalars())
        keys = conn.execute(sa.select(sa.func.count()).select_from(inngest_dedupe)).scalar_one()
        expired = conn.execute(
            sa.select(sa.func.count()).where(inngest_dedupe.c.expires_at <= now)
        ).scalar_one()
    return kinds, keys, expired


def fill(outbox: EventOutbox) -> None:
    """Of each kind: old finished events (done, duplicate, failed), recent finished ones, old
    pending ones (one even with a `done_at` long past), and expired and live dedupe keys."""
    now = utcnow()
    old, recent = now - timedelta(days=8), now - timedelta(days=6)
    rows = []
    for status in (DONE, DUPLICATE, FAILED):
        rows += [event_row(status, old, old, "old finished") for _ in range(5)]
        rows += [event_row(status, recent, recent, "recent finished") for _ in range(2)]
    rows += [event_row(PENDING, None, now - timedelta(days=30), "old pending") for _ in range(3)]
    rows.append(event_row(PENDING, now - timedelta(days=30), now - timedelta(days=30), "odd pending"))
    add_events(outbox, rows)
    add_keys(outbox, [now - timedelta(hours=1)] * 12 + [now + timedelta(hours=23)] * 4)


def test_old_finished_events_and_expired_keys_go_pending_and_recent_ones_stay(either_outbox):
    fill(either_outbox)
    metrics = ShimMetrics()
    purged = Purger(either_outbox, ShimSettings(retention_days=7, purge_batch_size=4), metrics).purge()
    assert (purged.events, purged.keys) == (15, 12)
    kinds, keys, expired = left(either_outbox)
    assert kinds == ["odd pending"] + ["old pending"] * 3 + ["recent finished"] * 6
    assert (keys, expired) == (4, 0)
    assert metrics.purged.labels("inngest_event")._value.get() == 15
    assert metrics.purged.labels("inngest_dedupe")._value.get() == 12
    # nothing more is due: a second pass deletes nothing
    assert Purger(either_outbox, ShimSettings(retention_days=7)).purge().events == 0


def test_each_batch_deletes_at_most_the_batch_size(either_outbox):
    fill(either_outbox)
    purger = Purger(either_outbox, ShimSettings(retention_days=7, purge_batch_size=4))
    assert [purger.events_batch() for _ in range(5)] == [4, 4, 4, 3, 0]  # oldest first, 15 in all
    assert [purger.keys_batch() for _ in range(4)] == [4, 4, 4, 0]
    assert len(left(either_outbox)[0]) == 10


def test_the_retention_is_a_setting(either_outbox):
    fill(either_outbox)
    assert Purger(either_outbox, ShimSettings(retention_days=5)).purge().events == 21  # the recent ones too
    assert left(either_outbox)[0] == ["odd pending"] + ["old pending"] * 3


def test_the_shim_purges_on_its_own_and_counts_it(either_outbox):
    fill(either_outbox)
    settings = ShimSettings(purge_interval_seconds=0.2, prefect_api_url="http://127.0.0.1:9/api")
    with running_shim(settings, either_outbox, run_dispatcher=True) as (url, _app):
        port = int(url.rsplit(":", 1)[1])
        wait_for(
            lambda: shim_metric(port, "poligraph_shim_purged_total", {"table": "inngest_dedupe"}) == 12, 30
        )
        assert shim_metric(port, "poligraph_shim_purged_total", {"table": "inngest_event"}) == 15
        assert httpx.get(f"{url}/health").status_code == 200
    assert left(either_outbox)[0].count("old finished") == 0


@pytest.mark.unit
def test_a_purge_that_finds_the_outbox_down_waits_with_one_warning(caplog):
    dead = EventOutbox(sa.create_engine("postgresql+psycopg://nobody@127.0.0.1:9/none"))
    purge = Purge(dead, ShimSettings())
    caplog.set_level("INFO", logger="poligraph.shim.retention")
    assert purge.pass_once() is None and purge.pass_once() is None
    warnings = [r for r in caplog.records if "the outbox is unavailable" in r.getMessage()]
    assert len(warnings) == 1 and not [r for r in caplog.records if r.exc_info]


# --- several replicas on one PostgreSQL outbox ------------------------------------------------
@pytest.mark.integration
def test_a_batch_locked_by_one_replica_is_passed_by_another_without_waiting(pg_url):
    outbox = postgres_outbox(pg_url)
    old = utcnow() - timedelta(days=8)
    add_events(outbox, [event_row(DONE, old - timedelta(seconds=i), old, "old finished") for i in range(20)])
    purger = Purger(outbox, ShimSettings(purge_batch_size=10))
    with outbox.engine.connect() as held:  # another replica's batch, in the middle of its transaction
        held.begin()
        due = (
            sa.select(inngest_event.c.pk)
            .order_by(inngest_event.c.done_at)
            .limit(10)
            .with_for_update(skip_locked=True)
        )
        locked = set(held.execute(due).scalars())
        started = time.monotonic()
        assert purger.events_batch() == 10  # the other ten, at once
        assert time.monotonic() - started < 2
        assert purger.events_batch() == 0  # the locked ones are passed by, not waited for
        held.rollback()
    with outbox.engine.connect() as conn:
        assert set(conn.execute(sa.select(inngest_event.c.pk)).scalars()) == locked


@pytest.mark.integration
def test_two_replicas_purging_at_once_share_the_work_and_never_deadlock(pg_url):
    outbox = postgres_outbox(pg_url)
    old = utcnow() - timedelta(days=8)
    add_events(outbox, [event_row(DONE, old, old, "old finished") for _ in range(6000)])
    add_keys(outbox, [utcnow() - timedelta(hours=1)] * 6000)
    add_events(outbox, [event_row(PENDING, None, old, "old pending") for _ in range(50)])
    results: list[Any] = []

    def replica() -> None:
        try:
            results.append(Purger(outbox, ShimSettings(purge_batch_size=200)).purge())
        except Exception as exc:  # noqa: BLE001 - the assertion says which
            results.append(exc)

    threads = [threading.Thread(target=replica) for _ in range(2)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    took = time.monotonic() - started
    assert all(not isinstance(r, Exception) for r in results), results
    assert sum(r.events for r in results) == 6000 and sum(r.keys for r in results) == 6000
    assert all(r.events > 0 for r in results), f"one replica did it all: {results}"
    assert left(outbox) == (["old pending"] * 50, 0, 0)
    assert took < 60
