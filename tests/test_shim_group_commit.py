"""Group commit: requests that arrive together share one transaction and one commit, each is
answered only once its own events are committed, and a commit that fails fails only the
requests in it. On the SQLite outbox (unit) and the PostgreSQL one (integration), over real HTTP.

The real outbox is wrapped so that its first commit waits until the test releases it: the
requests sent meanwhile queue up and form the next group, deterministically.
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import psutil
import psycopg
import pytest
import sqlalchemy as sa

from shim import committer
from shim.events import InboundEvent
from shim.mapping import RUN, EventAction
from shim.outbox import EventBatch, EventOutbox, Recorded
from shim.settings import ShimSettings
from support.pg_cluster import PostgresCluster
from support.polling import wait_for
from support.shim import postgres_outbox, running_shim


class HeldOutbox(EventOutbox):
    """The real outbox; remembers each commit's group size, holds the first commit until
    `release`, and fails the group after that when `fail_second` is set."""

    def __init__(self, real: EventOutbox, fail_second: bool = False) -> None:
        super().__init__(real.engine, real.dedupe_window.total_seconds() / 3600)
        self.groups: list[int] = []
        self.release = threading.Event()
        self.released_at = 0.0
        self.fail_second = fail_second

    def record_requests(self, requests: list[EventBatch]) -> list[list[Recorded]]:  # SQLite's writer thread
        self.groups.append(len(requests))
        if len(self.groups) == 1:
            assert self.release.wait(30)
        if len(self.groups) == 2 and self.fail_second:
            raise sa.exc.OperationalError("COMMIT", {}, Exception("the server closed the connection"))
        return super().record_requests(requests)

    async def record_requests_async(self, conn: Any, requests: list[EventBatch]) -> list[list[Recorded]]:
        self.groups.append(len(requests))  # PostgreSQL's writer, on the event loop
        if len(self.groups) == 1:
            assert await asyncio.to_thread(self.release.wait, 30)
        if len(self.groups) == 2 and self.fail_second:
            raise psycopg.OperationalError("the server closed the connection")
        return await super().record_requests_async(conn, requests)


def post(url: str, events: list[dict[str, Any]]) -> tuple[float, httpx.Response]:
    reply = httpx.post(f"{url}/e/NO_EVENT_KEY_SET", json=events, timeout=60)
    return time.monotonic(), reply


def queued(app: Any) -> int:
    return app.state.committer.queued()


def send_while_held(outbox: HeldOutbox, url: str, app: Any, bodies: list[list[dict[str, Any]]]) -> list[Any]:
    """One request is held in the first commit; `bodies` are sent meanwhile, then it is released."""
    with ThreadPoolExecutor(max_workers=len(bodies) + 1) as pool:
        first = pool.submit(post, url, [{"name": "sync/press"}])
        wait_for(lambda: outbox.groups == [1], timeout=30, interval=0.02, what="the first commit")
        rest = [pool.submit(post, url, body) for body in bodies]
        wait_for(lambda: queued(app) == len(bodies), timeout=30, interval=0.02, what="the queued requests")
        time.sleep(0.2)  # any reply that did not wait for its commit would arrive now
        assert not any(future.done() for future in rest), "a request was answered before its commit"
        outbox.released_at = time.monotonic()
        outbox.release.set()
        return [first.result(), *(future.result() for future in rest)]


def stored_ids(outbox: EventOutbox) -> list[str]:
    return [row["event_id"] for row in outbox.events()]


def test_requests_that_arrive_together_share_one_commit_and_wait_for_it(either_outbox):
    outbox = HeldOutbox(either_outbox)
    with running_shim(ShimSettings(), outbox) as (url, app):
        replies = send_while_held(outbox, url, app, [[{"name": "sync/press"}] for _ in range(20)])
    assert outbox.groups == [1, 20]  # twenty requests, one transaction
    assert all(reply.status_code == 200 for _, reply in replies)
    assert all(answered_at >= outbox.released_at for answered_at, _ in replies)
    acknowledged = [reply.json()["ids"][0] for _, reply in replies]
    assert sorted(stored_ids(outbox)) == sorted(acknowledged)


def test_a_failed_commit_fails_only_the_requests_it_held(either_outbox):
    outbox = HeldOutbox(either_outbox, fail_second=True)
    with running_shim(ShimSettings(), outbox) as (url, app):
        replies = send_while_held(outbox, url, app, [[{"name": "sync/press"}] for _ in range(10)])
        _, after = post(url, [{"name": "sync/press"}])
    first, *group = [reply for _, reply in replies]
    assert first.status_code == 200 and after.status_code == 200
    assert all(reply.status_code == 503 for reply in group)
    assert {reply.json()["error"] for reply in group} == {
        "The event store is unavailable; send the events again"
    }
    assert sorted(stored_ids(outbox)) == sorted([*first.json()["ids"], *after.json()["ids"]])


def test_an_id_sent_twice_in_one_group_is_stored_once(either_outbox):
    outbox = HeldOutbox(either_outbox)
    with running_shim(ShimSettings(), outbox) as (url, app):
        same = [{"name": "sync/press", "id": "weekly-press"}]
        replies = send_while_held(outbox, url, app, [same, same])
    assert outbox.groups == [1, 2]
    rows = [row for row in outbox.events() if row["user_id"] == "weekly-press"]
    assert sorted(row["status"] for row in rows) == ["duplicate", "pending"]
    assert all(reply.status_code == 200 for _, reply in replies)


def test_a_group_is_stored_in_order_as_if_its_requests_came_one_by_one(either_outbox):
    def batch(*ids: str) -> EventBatch:
        return [
            (
                f"01GROUP{i:019d}",
                InboundEvent(name="sync/press", data={}, ts=1, id=event_id),
                EventAction(RUN),
            )
            for i, event_id in enumerate(ids)
        ]

    recorded = either_outbox.record_requests([batch("x"), batch("x", "y", ""), batch("y", "y")])
    assert [[r.status for r in request] for request in recorded] == [
        ["pending"],
        ["duplicate", "pending", "pending"],  # no id: deduplicated on the event's own id
        ["duplicate", "duplicate"],
    ]
    assert len(either_outbox.events()) == 6


@pytest.mark.integration
def test_the_postgresql_writer_survives_restarts_and_refuses_only_while_its_database_is_down(monkeypatch):
    cluster = PostgresCluster()
    try:
        cluster.start()
        cluster.create_database()
        outbox = postgres_outbox(cluster.url)
        with running_shim(ShimSettings(), outbox) as (url, _app):
            _, first = post(url, [{"name": "sync/press"}])  # the writer's connection is open now
            cluster.stop()  # a restart: every client is disconnected
            cluster.start()
            monkeypatch.setattr(committer, "PING_AFTER_IDLE_SECONDS", 0.0)
            _, after_restart = post(url, [{"name": "sync/press"}])  # the dead connection is found first
            cluster.stop()
            _, while_down = post(url, [{"name": "sync/press"}])
            cluster.start()
            _, back = post(url, [{"name": "sync/press"}])
        assert [r.status_code for r in (first, after_restart, while_down, back)] == [200, 200, 503, 200]
        acknowledged = [reply.json()["ids"][0] for reply in (first, after_restart, back)]
        assert sorted(stored_ids(outbox)) == sorted(acknowledged)
    finally:
        cluster.remove()


@pytest.mark.integration
def test_a_database_that_stops_answering_gets_a_503_after_the_deadline_not_a_hang(monkeypatch):
    cluster = PostgresCluster()
    seed = {"x-inngest-event-id-seed": f"{int(time.time() * 1000)},AAECAwQFBgcICQ=="}

    def send_seeded(url: str) -> httpx.Response:  # as the SDK sends, and sends again after a 5xx
        return httpx.post(f"{url}/e/k", json=[{"name": "sync/press"}], headers=seed, timeout=60)

    try:
        cluster.start()
        cluster.create_database()
        outbox = postgres_outbox(cluster.url)
        monkeypatch.setattr(committer, "WRITE_TIMEOUT_SECONDS", 2.0)
        with running_shim(ShimSettings(), outbox) as (url, _app):
            _, first = post(url, [{"name": "sync/press"}])
            assert cluster.server is not None
            frozen = psutil.Process(cluster.server.pid).children()  # every backend, the writer's too
            for proc in frozen:
                proc.suspend()
            try:
                while_frozen = send_seeded(url)
            finally:
                for proc in frozen:
                    proc.resume()
            sent_again = send_seeded(url)
        assert [r.status_code for r in (first, while_frozen, sent_again)] == [200, 503, 200]
        # The statement may have reached the frozen database and committed once it went on: the
        # send again then finds it a duplicate. Either way the event is stored once, live.
        live = [row["event_id"] for row in outbox.events() if row["status"] != "duplicate"]
        assert sorted(live) == sorted([first.json()["ids"][0], sent_again.json()["ids"][0]])
    finally:
        cluster.remove()


@pytest.mark.integration
def test_replicas_starting_together_on_a_fresh_database_all_start(pg_url):
    """Two shims started at once (a boot, a deploy) create the schema and its tables in turn:
    `CREATE SCHEMA IF NOT EXISTS` alone is not safe against a concurrent one."""
    import threading
    import uuid

    from shim.outbox import _engine, migrate

    schema = f"shim_{uuid.uuid4().hex[:10]}"
    replicas = 6
    barrier = threading.Barrier(replicas)
    errors: list[BaseException] = []

    def start() -> None:
        barrier.wait()
        try:
            migrate(_engine(pg_url, schema), schema)
        except BaseException as exc:  # what made a replica exit at start
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(replicas)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    with _engine(pg_url, schema).connect() as conn:
        tables = set(sa.inspect(conn).get_table_names(schema=schema))
    assert {"inngest_event", "inngest_dedupe", "alembic_version"} <= tables
