"""The outbox's PostgreSQL turns read-only while events arrive (connections that landed on a
standby after a failover, a provider's maintenance), its clients cut off as in a failover, then
it takes writes again: senders got 503 with Retry-After meanwhile and never a 500, every event
acknowledged with a 200 got exactly one flow run, and the dispatcher said so in one warning, with
no traceback per pass. A PostgreSQL cluster of the test's own (ALTER SYSTEM + reload reach every
open session), the session's Prefect server.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import Any

import httpx
import pytest
from prefect.client.orchestration import get_client

from deployments.catalog import get_catalog
from deployments.settings import get_settings
from shim.outbox import open_outbox
from shim.settings import ShimSettings
from support.pg_cluster import PostgresCluster
from support.polling import run_async, wait_for
from support.prefect_server import apply_catalog_deployments, delete_scheduled_runs
from support.shim import running_shim

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cluster():
    cluster = PostgresCluster()
    try:
        cluster.start()
        cluster.create_database()
        yield cluster
    finally:
        cluster.remove()


class Sender:
    """One event every 50 ms, each with its own seed, as long as it runs; every reply kept."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.replies: list[tuple[int, int, dict[str, str], dict[str, Any]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._send, daemon=True)

    def _send(self) -> None:
        with httpx.Client(timeout=60) as client:
            number = 0
            while not self._stop.wait(0.05):
                number += 1
                seed = f"{int(time.time() * 1000)},{uuid.uuid4().bytes[:10].hex()}"
                try:
                    reply = client.post(
                        f"{self.url}/e/k",
                        json=[{"name": "sync/alpha", "data": {"limit": number}}],
                        headers={"x-inngest-event-id-seed": seed},
                    )
                except httpx.HTTPError:
                    continue  # a connection error is not an acknowledgement either
                self.replies.append((number, reply.status_code, dict(reply.headers), reply.json()))

    def statuses(self) -> list[int]:
        return [status for _, status, _, _ in self.replies]

    def __enter__(self) -> Sender:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Kept(logging.Handler):
    """The records of one logger, kept (Prefect's logging set-up replaces the root's handlers,
    pytest's caplog among them)."""

    def __init__(self, name: str) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []
        self.logger = logging.getLogger(name)

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def __enter__(self) -> Kept:
        self.level = self.logger.level
        self.logger.setLevel(logging.INFO)
        self.logger.addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        self.logger.removeHandler(self)
        self.logger.setLevel(self.level)


def test_a_read_only_outbox_means_503s_meanwhile_and_no_acknowledged_event_lost(prefect_api, pg_url, cluster):
    apply_catalog_deployments()
    settings = ShimSettings(
        database_url=cluster.url,
        schema_name=f"shim_{uuid.uuid4().hex[:10]}",
        poll_seconds=0.2,
        max_backoff_seconds=0.05,
    )
    outbox = open_outbox(settings, get_settings())
    try:
        with (
            Kept("poligraph.shim.dispatcher") as logged,
            running_shim(settings, outbox, run_dispatcher=True, catalog=get_catalog()) as (url, _app),
            Sender(url) as sender,
        ):
            wait_for(lambda: sender.statuses().count(200) >= 10, timeout=30, what="sends before")
            cluster.read_only(True, cut_clients=True)
            before = len(sender.replies)
            wait_for(lambda: sender.statuses()[before:].count(503) >= 40, timeout=30, what="503s")
            cluster.read_only(False)
            back = len(sender.replies)
            wait_for(lambda: sender.statuses()[back:].count(200) >= 10, timeout=30, what="sends after")
            sender.stop()
            # while the shim still runs: one that stops leaves what is pending to its next start
            wait_for(lambda: outbox.pending_count() == 0, timeout=120, what="every event dispatched")
        rows = outbox.events()

        async def runs() -> dict[str, Any]:
            async with get_client() as client:
                return {row["event_id"]: await client.read_flow_run(row["flow_run_id"]) for row in rows}

        found = run_async(runs())
    finally:
        cluster.read_only(False)
        delete_scheduled_runs()  # no later test's worker may pick them up

    statuses = sender.statuses()
    assert set(statuses) <= {200, 503}, statuses  # never a 500
    unavailable = [headers for _, status, headers, _ in sender.replies if status == 503]
    assert len(unavailable) >= 10 and all(h.get("retry-after") == "5" for h in unavailable)
    acknowledged = {body["ids"][0]: number for number, status, _, body in sender.replies if status == 200}
    by_event = {row["event_id"]: row for row in rows}
    assert set(acknowledged) <= set(by_event), "an acknowledged event is not in the outbox"
    assert len(by_event) == len(rows)  # one row per event
    assert all(row["status"] == "done" and row["flow_run_id"] for row in rows)
    assert len({row["flow_run_id"] for row in rows}) == len(rows)  # one run each, none shared
    for event_id, number in acknowledged.items():
        run = found[event_id]
        assert run.parameters["limit"] == number
        assert run.idempotency_key == f"sync-script/alpha:{by_event[event_id]['pk']}"

    dispatcher = logged.records
    assert not [r for r in dispatcher if r.exc_info], "the dispatcher logged a traceback"
    outages = [r for r in dispatcher if "the outbox is unavailable" in r.getMessage()]
    assert len(outages) == 1 and outages[0].levelno == logging.WARNING
    assert [r for r in dispatcher if "available again" in r.getMessage()]
    print(
        f"\nsends: {len(statuses)}, 200: {statuses.count(200)}, 503: {statuses.count(503)}; "
        f"rows {len(rows)}, runs {len(found)}; dispatcher: {[r.getMessage() for r in outages]}"
    )
