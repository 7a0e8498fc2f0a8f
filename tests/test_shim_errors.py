"""The shim's exceptions have one root (`shim.errors.ShimError`), and a refused body says why:
its reply and the reason it is counted under, the reason each status was counted under before
(bad_request, too_large, too_slow, busy)."""

from __future__ import annotations

import asyncio
import importlib
import inspect
import pkgutil
from typing import Any

import pytest
from starlette.requests import Request

import shim
from shim.admission import Admission
from shim.body import BodyRefused, read_body
from shim.errors import ShimError
from shim.events import EventError, parse_body
from shim.jsonvalues import JSONValueError
from shim.prefect_api import DeploymentNotFound, PrefectBusy, PrefectDown, PrefectError

pytestmark = pytest.mark.unit


def test_every_exception_of_the_shim_is_a_shim_error():
    classes = []
    for module in pkgutil.iter_modules(shim.__path__):
        if module.name in ("__main__", "migrations"):
            continue
        loaded = importlib.import_module(f"shim.{module.name}")
        classes += [
            value
            for value in vars(loaded).values()
            if inspect.isclass(value)
            and issubclass(value, BaseException)
            and value.__module__ == loaded.__name__
        ]
    assert classes, "no exception class found: the scan is broken"
    assert [c.__name__ for c in classes if not issubclass(c, ShimError)] == []


def test_what_a_caller_reads_of_each():
    assert (EventError.status, EventError.reason, EventError.retriable) == (400, "bad_request", False)
    assert issubclass(EventError, ValueError) and issubclass(JSONValueError, ValueError)
    with pytest.raises(EventError) as refused:
        parse_body(b"[NaN]")
    assert str(refused.value) == "invalid character 'N' looking for beginning of value"
    assert (PrefectDown.retriable, PrefectDown.reason) == (True, "down")
    assert (PrefectBusy("HTTP 429", 2.0).retriable, PrefectBusy.reason) == (True, "busy")
    assert PrefectError(500, "boom").retriable and not PrefectError(422, "bad parameters").retriable
    assert str(PrefectError(500, "boom")) == "HTTP 500: boom" and PrefectError(500, "").status is None
    assert DeploymentNotFound(404, "gone").retriable and DeploymentNotFound.reason == "refused"


def request(headers: dict[str, str], chunks: list[bytes], then: str = "end") -> Request:
    """A request whose body arrives as `chunks`, then ends, stalls or is cut (`then`)."""
    pending = list(chunks)

    async def receive() -> dict[str, Any]:
        if pending:
            chunk = pending.pop(0)
            return {"type": "http.request", "body": chunk, "more_body": bool(pending) or then != "end"}
        if then == "stall":
            await asyncio.sleep(10)
        return {"type": "http.disconnect"}

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/e/key",
        "headers": [(k.encode(), v.encode()) for k, v in headers.items()],
    }
    return Request(scope, receive)


CASES = {
    "both framings": ({"content-length": "2", "transfer-encoding": "chunked"}, [b"[]"], 400, "bad_request"),
    "invalid length": ({"content-length": "2x"}, [b"[]"], 400, "bad_request"),
    "declared too large": ({"content-length": "101"}, [], 413, "too_large"),
    "streamed too large": ({}, [b"x" * 60, b"x" * 60], 413, "too_large"),
    "declared past the bytes in flight": ({"content-length": "80"}, [b"x" * 80], 503, "busy"),
    "streamed past the bytes in flight": ({}, [b"x" * 40, b"x" * 40], 503, "busy"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_refused_body_carries_its_reply_and_its_reason(case):
    headers, chunks, status, reason = CASES[case]
    # the bodies of all requests may hold 50 bytes in the busy cases, plenty in the others
    ticket = Admission(max_requests=4, max_bytes=50 if reason == "busy" else 1000).admit()
    with pytest.raises(BodyRefused) as refused:
        asyncio.run(read_body(request(headers, chunks), max_bytes=100, timeout=5, ticket=ticket))
    exc = refused.value
    assert (exc.status, exc.reply.status, exc.reason) == (status, status, reason)
    assert exc.error == exc.reply.body["error"] == str(exc)
    assert exc.retriable == (status == 503)


def test_a_body_cut_or_too_slow_is_refused_as_before():
    with pytest.raises(BodyRefused) as refused:
        asyncio.run(read_body(request({}, [b"["], then="disconnect"), max_bytes=100, timeout=5))
    assert (refused.value.status, refused.value.reason) == (400, "bad_request")
    assert refused.value.error == "Client disconnected before sending the whole body"
    with pytest.raises(BodyRefused) as refused:
        asyncio.run(read_body(request({}, [b"["], then="stall"), max_bytes=100, timeout=0.05))
    assert (refused.value.status, refused.value.reason) == (408, "too_slow")
    assert refused.value.error == "Request body was not received within 0.05 seconds"


def test_a_body_within_the_limits_is_read_whole():
    body = asyncio.run(read_body(request({"content-length": "4"}, [b"[{", b"}]"]), max_bytes=100, timeout=5))
    assert body == b"[{}]"
