"""The real `python -m shim` process's log, captured whole: the event key never appears in it
(right key, wrong key, any route), and what clients control arrives escaped and bounded."""

from __future__ import annotations

import json
import os
import uuid

import httpx
import pytest

from support.paths import STATE
from support.ports import free_port
from support.processes import stop_process_group
from support.rawhttp import RawConnection, request_head
from support.shim import start_shim_process

pytestmark = pytest.mark.integration

KEY = "sekret-event-key-7f3a9c"
WRONG = "wrong-event-key-4b1e77"


def test_the_log_never_shows_a_key_and_escapes_what_clients_send(pg_url):
    port = free_port()
    log_name = f"shim-logs-{uuid.uuid4().hex[:8]}.log"
    env = {
        **os.environ,
        "POLIGRAPH_EVENT_KEYS": f"{KEY},other-key",
        "POLIGRAPH_SHIM_SCHEMA": f"shim_{uuid.uuid4().hex[:10]}",
        "PREFECT_API_URL": f"http://127.0.0.1:{free_port()}/api",  # no Prefect: events wait
    }
    proc = start_shim_process(env, port, log_name)
    url = f"http://127.0.0.1:{port}"
    forged = "sync/press\n2026-01-01 00:00:00,000 INFO poligraph.shim FORGED\r\x1b[2J"
    try:
        sends = [
            (KEY, [{"name": "sync/press", "data": {"jobId": "clogs000000000000000000001"}}]),
            (KEY, [{"name": forged, "data": {"jobId": "clogs000000000000000000002"}}]),
            (KEY, [{"name": "x" * 1_000_000}]),
            (KEY, [{"name": "sync/sync-assemblee", "data": {"jobId": "c3", "flags": "--a\n--FORGED"}}]),
            (KEY, [{"name": ""}]),
            (WRONG, [{"name": "sync/press"}]),
        ]
        for key, body in sends:
            reply = httpx.post(f"{url}/e/{key}", content=json.dumps(body), timeout=30)
            assert reply.status_code < 500
        assert httpx.post(f"{url}/e/{KEY}", content=b"{oops").status_code == 400
        assert httpx.post(f"{url}/e/{KEY}/more", content=b"[]").status_code == 404
        assert httpx.get(f"{url}/e/{WRONG}?key={KEY}").status_code == 405
        with RawConnection(port) as conn:
            conn.send(request_head(f"/e/{KEY}", content_length=str(10**9)))
            assert conn.reply()[0] == 413
    finally:
        stop_process_group(proc)
    log = (STATE / log_name).read_text(errors="replace")
    lines = log.splitlines()
    assert "POST /e/{key} 200" in log and "POST /e/{key} 401" in log  # the access log is there
    assert KEY not in log and WRONG not in log
    assert not [line for line in lines if "FORGED" in line and not line.startswith("20")]
    assert not [line for line in lines if "\x1b" in line or "\r" in line]
    assert max(len(line) for line in lines) < 3000  # a 1 MB name writes a bounded line
