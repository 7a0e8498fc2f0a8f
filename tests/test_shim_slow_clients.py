"""Slow and idle clients cannot deny service: quiet sockets are cheap and many may be open; what
costs memory and CPU is bounded instead (requests in progress, the bytes of their bodies, the
head's own deadline), and file descriptors never run out. Raw sockets and the real SDK.
"""

from __future__ import annotations

import logging
import resource
import statistics
import time
import uuid

import httpx
import inngest
import psutil
import pytest

import shim.server
from shim.settings import ShimSettings
from support.polling import wait_for
from support.rawhttp import RawConnection, SlowClients, request_head
from support.shim import attempt_statuses, key_client, running_shim, shim_metric, sqlite_outbox

pytestmark = pytest.mark.unit

KEY = "slow-clients-key-0c1d"


def busy_error() -> dict:
    return {"ids": [], "status": 503, "error": "The event API is busy; send the events again"}


def send_every(url: str, seconds: float, every: float = 0.2) -> tuple[list[float], list[int]]:
    """The SDK sends one event every `every` seconds: each send's latency, every attempt's status."""
    client = key_client(url, KEY)
    statuses = attempt_statuses(client)
    latencies = []
    next_send = time.monotonic()
    ends = next_send + seconds
    while next_send < ends:
        time.sleep(max(0.0, next_send - time.monotonic()))
        next_send += every
        started = time.perf_counter()
        client.send_sync(inngest.Event(name="sync/press", data={"jobId": f"c{uuid.uuid4().hex[:24]}"}))
        latencies.append(time.perf_counter() - started)
    return latencies, statuses


def test_a_thousand_slow_and_idle_connections_leave_the_sdk_sends_untouched(tmp_path):
    # 1,000 client sockets and the shim's 1,000 in this one process, and some to spare
    count = min(1000, (shim.server.raise_fd_limit(2300) - 300) // 2)
    assert count >= 300, "the file-descriptor limit leaves too few sockets for this test"
    outbox = sqlite_outbox(tmp_path)
    settings = ShimSettings(event_keys=[KEY], head_timeout_seconds=5)  # cut (and reopened) mid-test
    rss = psutil.Process().memory_info().rss
    with (
        running_shim(settings, outbox) as (url, _app),
        SlowClients(
            int(url.rsplit(":", 1)[1]),
            count,
            trickling=count * 45 // 100,
            body_trickling=count // 20,  # past their heads: each holds a request's ticket
            every=1.0,
            key=KEY,
        ) as slow,
    ):
        port = int(url.rsplit(":", 1)[1])
        wait_for(lambda: shim_metric(port, "poligraph_shim_requests_in_progress") >= count // 40, timeout=30)
        latencies, statuses = send_every(url, 12)
        assert slow.open >= count * 9 // 10 and slow.cut >= count // 2  # cut at the head deadline, reopened
        grown = (psutil.Process().memory_info().rss - rss) / 2**20
    assert statuses == [200] * len(latencies)  # every attempt, not only every send
    assert len(outbox.events()) == len(latencies)
    assert statistics.median(latencies) < 0.5 and max(latencies) < 5, latencies
    assert grown < 150, f"{grown:.0f} MB for {count} connections each side"


def test_requests_in_progress_past_the_bound_get_503_with_retry_after(tmp_path):
    outbox = sqlite_outbox(tmp_path)
    with running_shim(ShimSettings(max_requests=2), outbox) as (url, _app):
        port = int(url.rsplit(":", 1)[1])
        holders = [RawConnection(port) for _ in range(2)]
        try:
            for conn in holders:  # heads in, bodies never finished: two requests in progress
                conn.send(request_head("/e/k", content_length="100") + b'[{"name":')
            wait_for(lambda: shim_metric(port, "poligraph_shim_requests_in_progress") == 2, timeout=10)
            reply = httpx.post(f"{url}/e/k", json=[{"name": "sync/press"}])
            assert reply.status_code == 503 and reply.json() == busy_error()
            assert reply.headers["retry-after"] == "1" and reply.headers["connection"] == "close"
            assert httpx.get(f"{url}/health").status_code == 200  # only event requests count
        finally:
            for conn in holders:
                conn.sock.close()
        wait_for(lambda: shim_metric(port, "poligraph_shim_requests_in_progress") == 0, timeout=10)
        assert httpx.post(f"{url}/e/k", json=[{"name": "sync/press"}]).status_code == 200
        refused = shim_metric(port, "poligraph_shim_requests_refused_total", {"reason": "busy"})
    assert refused == 1
    assert len(outbox.events()) == 1


def test_the_bodies_of_all_requests_together_are_bounded(tmp_path):
    outbox = sqlite_outbox(tmp_path)
    budget = 100_000
    with running_shim(ShimSettings(max_bytes_in_flight=budget), outbox) as (url, _app):
        port = int(url.rsplit(":", 1)[1])
        with RawConnection(port) as big:
            big.send(request_head("/e/k", content_length="80000") + b"[")  # 80 kB held from its head
            wait_for(lambda: shim_metric(port, "poligraph_shim_body_bytes_in_flight") == 80000, timeout=10)
            with RawConnection(port) as declared:  # would pass the budget: refused before its body
                declared.send(request_head("/e/k", content_length="30000"))
                status, headers, body = declared.reply()
                assert (status, body) == (503, busy_error()) and headers["retry-after"] == "1"
                assert declared.closed_within(5) is not None
            with RawConnection(port) as chunked:  # no length: refused as it passes the budget
                chunked.send(request_head("/e/k", transfer_encoding="chunked"))
                chunk = b"[" + b"0," * 5000
                for _ in range(3):
                    chunked.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                status, _headers, body = chunked.reply()
                assert (status, body) == (503, busy_error())
            # a send of the usual size still fits
            assert httpx.post(f"{url}/e/k", json=[{"name": "sync/press"}]).status_code == 200
        wait_for(lambda: shim_metric(port, "poligraph_shim_body_bytes_in_flight") == 0, timeout=10)
    assert len(outbox.events()) == 1


def test_the_head_has_a_deadline_of_its_own_shorter_than_the_body(tmp_path):
    settings = ShimSettings(head_timeout_seconds=0.5, read_timeout_seconds=30)
    with running_shim(settings, sqlite_outbox(tmp_path)) as (url, _app):
        port = int(url.rsplit(":", 1)[1])
        with RawConnection(port) as conn:  # a head trickled a byte every 50 ms is cut at 0.5 s
            took = conn.trickle(b"POST /e/k HTTP/1.1\r\nHost: shim\r\nX-Slow: " + b"z" * 1000, 0.05, 10)
            assert took is not None and took < 5, took
        with RawConnection(port) as conn:  # its body may take longer than the head's deadline
            event = b'[{"name":"sync/press"}]'
            conn.send(request_head("/e/k", content_length=str(len(event))))
            for byte in event:
                time.sleep(0.06)  # about 1.4 s in all
                conn.send(bytes([byte]))
            status, _headers, body = conn.reply()
            assert status == 200 and len(body["ids"]) == 1


def test_connections_past_the_file_descriptors_are_closed_at_once(tmp_path, monkeypatch, caplog):
    """A hard limit too low for POLIGRAPH_SHIM_MAX_CONNECTIONS: the ceiling is lowered to fit (a
    warning says so), and connections past what the descriptors allow are closed as they are
    accepted, before any byte of them is read; those within are served."""
    room = 5

    def limit(_which: int) -> tuple[int, int]:  # as if the shim had `room` descriptors to spare
        soft = psutil.Process().num_fds() + shim.server.FD_RESERVE + room
        return soft, soft

    monkeypatch.setattr(resource, "getrlimit", limit)
    caplog.set_level(logging.WARNING, logger="poligraph.shim.server")
    with running_shim(ShimSettings(), sqlite_outbox(tmp_path)) as (url, _app):
        monkeypatch.undo()
        assert "does not fit the file-descriptor limit" in caplog.text
        port = int(url.rsplit(":", 1)[1])
        conns = [RawConnection(port) for _ in range(room + 10)]
        try:
            served = closed = 0
            for conn in conns:
                conn.send(b"GET /health HTTP/1.1\r\nHost: shim\r\n\r\n")
                try:
                    served += conn.status_line() == 200
                except (ConnectionError, OSError):
                    closed += 1
            assert served >= room - 2 and closed >= 10, (served, closed)
        finally:
            for conn in conns:
                conn.sock.close()
        # once they are gone, there is room again
        wait_for(lambda: httpx.get(f"{url}/health").status_code == 200, timeout=10)
