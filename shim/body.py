"""A request body read within the shim's limits, as it streams in.

The declared Content-Length is checked before anything is read, a chunked body is counted chunk
by chunk, and the whole body must arrive within a deadline: a client can make the shim hold at
most `max_bytes` for at most `timeout` seconds. Starlette's `Request.body()` has no such bound.
The bytes are also held on the request's admission ticket (`shim.admission`), which bounds the
bodies of all requests together: the declared length at once, a chunked body as it grows.
"""

from __future__ import annotations

import asyncio

from starlette.requests import ClientDisconnect, Request

from shim.admission import Ticket
from shim.errors import ShimError
from shim.replies import Reply, busy, refused, too_large, too_slow

_MAX_LENGTH_DIGITS = 20  # more digits than any real length (and than int() should parse)


class BodyRefused(ShimError):
    """The body is refused with `reply` (its status, its `error` text) and counted under
    `reason`; the connection should then be closed: the rest of the body was not read."""

    def __init__(self, reply: Reply, reason: str) -> None:
        super().__init__(reply.body["error"])
        self.reply = reply
        self.status = reply.status
        self.reason = reason
        self.retriable = reply.status >= 500  # busy: the same body, sent again, may be read

    @property
    def error(self) -> str:
        return str(self.reply.body["error"])


async def read_body(request: Request, max_bytes: int, timeout: float, ticket: Ticket | None = None) -> bytes:
    """The body, or `BodyRefused`."""
    declared = request.headers.get("content-length")
    if declared is not None and "transfer-encoding" in request.headers:
        # Two framings: servers and proxies may disagree on where the body ends (smuggling).
        raise BodyRefused(refused("Request has both Content-Length and Transfer-Encoding"), "bad_request")
    if declared is not None:
        if not (declared.isascii() and declared.isdigit()):  # h11 already refuses these
            raise BodyRefused(refused("Request has an invalid Content-Length"), "bad_request")
        if len(declared) > _MAX_LENGTH_DIGITS or int(declared) > max_bytes:
            raise BodyRefused(too_large(max_bytes), "too_large")
        if ticket is not None and not ticket.hold(int(declared)):
            raise BodyRefused(busy(), "busy")
    body = bytearray()
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.stream():
                body += chunk
                if len(body) > max_bytes:
                    raise BodyRefused(too_large(max_bytes), "too_large")
                if ticket is not None and not ticket.hold(len(body)):
                    raise BodyRefused(busy(), "busy")
    except TimeoutError:
        raise BodyRefused(too_slow(timeout), "too_slow") from None
    except ClientDisconnect:  # nobody is left to read the reply
        gone = refused("Client disconnected before sending the whole body")
        raise BodyRefused(gone, "bad_request") from None
    return bytes(body)
