"""What one client can make the Event API hold, and for how long: the body cap (declared and
streamed), two framings at once, slow bodies and slow headers, the connection limit, and the
replies when the shim's own database is down. Raw sockets show exactly when the shim answers.
"""

from __future__ import annotations

import json
import logging

import httpx
import inngest
import pytest
import sqlalchemy as sa
from inngest._internal.errors import SendEventsError  # the SDK does not re-export it

from shim.outbox import EventOutbox
from shim.settings import ShimSettings
from support.polling import wait_for
from support.ports import free_port
from support.rawhttp import RawConnection, request_head
from support.shim import dev_client, running_shim, sqlite_outbox

pytestmark = pytest.mark.unit

CAP = 64 * 1024
TIMEOUT = 0.5


def serve(tmp_path, read_timeout: float):
    outbox = sqlite_outbox(tmp_path)
    settings = ShimSettings(max_body_bytes=CAP, read_timeout_seconds=read_timeout, max_connections=3)
    with running_shim(settings, outbox) as (url, _app):
        yield url, int(url.rsplit(":", 1)[1]), outbox


@pytest.fixture
def shim(tmp_path):
    """Limits small enough to reach in a test; deadlines that a loaded machine cannot miss."""
    yield from serve(tmp_path, read_timeout=30)


@pytest.fixture
def impatient_shim(tmp_path):
    """The same with deadlines short enough to wait for."""
    yield from serve(tmp_path, read_timeout=TIMEOUT)


def over_cap_error() -> dict:
    return {"ids": [], "status": 413, "error": f"Request body is over the max size: Max {CAP} bytes"}


def test_a_declared_length_over_the_cap_is_refused_before_any_body_is_sent(shim):
    _url, port, outbox = shim
    with RawConnection(port) as conn:
        conn.send(request_head("/e/k", content_length=str(200 * 1024 * 1024)))
        status, headers, body = conn.reply()  # answered although not one body byte was sent
        assert (status, body) == (413, over_cap_error())
        assert headers["connection"] == "close" and conn.closed_within(5) is not None
    assert outbox.events() == []


def test_a_chunked_body_is_refused_as_soon_as_it_passes_the_cap(shim):
    _url, port, outbox = shim
    chunk = b"[" + b'{"name":"sync/press"},' * 1000  # about 22 KB, an array never closed
    with RawConnection(port) as conn:
        conn.send(request_head("/e/k", transfer_encoding="chunked"))
        for _ in range(CAP // len(chunk) + 1):  # just past the cap, and the body goes on
            conn.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        status, _headers, body = conn.reply()
        assert (status, body) == (413, over_cap_error())
        assert conn.closed_within(5) is not None
    assert outbox.events() == []


def test_a_body_just_under_the_cap_is_read_whole(shim):
    url, _port, outbox = shim
    event = {"name": "sync/press", "data": {"pad": ""}}
    event["data"]["pad"] = "x" * (CAP - len(json.dumps([event], separators=(",", ":"))))
    content = json.dumps([event], separators=(",", ":")).encode()
    assert len(content) == CAP
    assert httpx.post(f"{url}/e/k", content=content).json()["status"] == 200
    assert len(outbox.events()) == 1


def test_the_sdk_gets_the_413_text_and_does_not_retry(shim, caplog):
    url, _port, outbox = shim
    caplog.set_level(logging.INFO, logger="poligraph.shim.http")
    with pytest.raises(SendEventsError, match=f"^Request body is over the max size: Max {CAP} bytes$"):
        dev_client(url).send_sync(inngest.Event(name="sync/press", data={"blob": "x" * CAP}))
    assert outbox.events() == []

    def refusals() -> list[str]:  # access-log lines, written just after each reply went out
        return [r.getMessage() for r in caplog.records if r.getMessage().startswith("POST /e/{key} 413")]

    wait_for(refusals, timeout=10)
    assert len(refusals()) == 1  # one attempt: inngest-py retries only 5xx and network errors


def test_content_length_and_transfer_encoding_together_are_refused(shim):
    _url, port, outbox = shim
    event = b'[{"name":"sync/press"}]'
    with RawConnection(port) as conn:
        conn.send(request_head("/e/k", content_length="0", transfer_encoding="chunked"))
        conn.send(b"%x\r\n%s\r\n0\r\n\r\n" % (len(event), event))
        status, headers, body = conn.reply()
        assert status == 400
        assert body == {
            "ids": [],
            "status": 400,
            "error": "Request has both Content-Length and Transfer-Encoding",
        }
        assert headers["connection"] == "close" and conn.closed_within(5) is not None
    assert outbox.events() == []


def test_a_body_that_does_not_arrive_in_time_gets_408_and_the_connection_closes(impatient_shim):
    _url, port, outbox = impatient_shim
    with RawConnection(port) as conn:
        conn.send(request_head("/e/k", content_length="100") + b'[{"name":')
        status, _headers, body = conn.reply()
        assert status == 408
        assert body == {
            "ids": [],
            "status": 408,
            "error": f"Request body was not received within {TIMEOUT:g} seconds",
        }
        assert conn.closed_within(5) is not None
    assert outbox.events() == []


def test_a_connection_that_sends_nothing_is_closed(impatient_shim):
    _url, port, _outbox = impatient_shim
    with RawConnection(port) as conn:
        assert conn.closed_within(TIMEOUT + 5) is not None, "the connection stayed open"


def test_a_client_trickling_its_headers_is_cut_off(impatient_shim):
    _url, port, _outbox = impatient_shim
    head = b"POST /e/k HTTP/1.1\r\nHost: shim\r\nX-Slow: " + b"z" * 1000
    with RawConnection(port) as conn:  # a byte every 50 ms: never idle, never done
        assert conn.trickle(head, every=0.05, limit=TIMEOUT + 5) is not None, "still open"


def test_an_idle_keep_alive_connection_must_send_its_next_head_in_time(impatient_shim):
    _url, port, _outbox = impatient_shim
    with RawConnection(port) as conn:
        conn.send(b"GET /health HTTP/1.1\r\nHost: shim\r\n\r\n")
        assert conn.reply()[0] == 200
        conn.send(b"GET /health HTTP/1.1\r\n")  # and never the rest
        assert conn.closed_within(TIMEOUT + 5) is not None


def test_connections_over_the_limit_get_503_and_the_others_are_served(shim):
    _url, port, _outbox = shim
    conns: list[RawConnection] = []
    try:
        for _ in range(3):  # the settings allow three at once; they stay open (keep-alive)
            conns.append(RawConnection(port))
            conns[-1].send(b"GET /health HTTP/1.1\r\nHost: shim\r\n\r\n")
            assert conns[-1].reply()[0] == 200
        with RawConnection(port) as fourth:
            fourth.send(b"GET /health HTTP/1.1\r\nHost: shim\r\n\r\n")
            assert fourth.status_line() == 503  # uvicorn's own reply, plain text
        conns.pop().sock.close()  # one left: there is room again (once the shim sees it)

        def health_status() -> int:
            with RawConnection(port) as conn:
                conn.send(b"GET /health HTTP/1.1\r\nHost: shim\r\n\r\n")
                return conn.status_line()

        wait_for(lambda: health_status() == 200, timeout=10, interval=0.05, what="a free slot")
    finally:
        for conn in conns:
            conn.sock.close()


def test_unknown_routes_and_methods_answer_in_the_inngest_shape(shim):
    url, _port, _outbox = shim
    missing = httpx.post(f"{url}/e/k/extra", content=b"[]")
    assert missing.status_code == 404 and missing.json() == {"ids": [], "status": 404, "error": "Not Found"}
    wrong = httpx.get(f"{url}/e/k")
    assert wrong.status_code == 405 and wrong.json()["status"] == 405


def test_a_bug_still_answers_in_the_inngest_shape(tmp_path, monkeypatch):
    with running_shim(ShimSettings(), sqlite_outbox(tmp_path)) as (url, app):

        def broken(raw: bytes, seed: str | None) -> None:
            raise RuntimeError("a bug")

        monkeypatch.setattr(app.state.intake, "receive", broken)
        reply = httpx.post(f"{url}/e/k", json=[{"name": "sync/press"}])
    assert reply.status_code == 500
    assert reply.json() == {"ids": [], "status": 500, "error": "Internal error in the event shim"}


def test_when_the_event_store_is_down_the_client_gets_a_503_to_retry(tmp_path):
    dead = sa.create_engine(f"postgresql+psycopg://nobody@127.0.0.1:{free_port()}/none")
    with running_shim(ShimSettings(), EventOutbox(dead)) as (url, _app):
        reply = httpx.post(f"{url}/e/k", json=[{"name": "sync/press"}], timeout=30)
    assert reply.status_code == 503 and reply.headers["retry-after"] == "5"
    assert reply.json() == {
        "ids": [],
        "status": 503,
        "error": "The event store is unavailable; send the events again",
    }
