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
from shim.replies import Reply, busy, refused, too_large, too_slow

_MAX_LENGTH_DIGITS = 20  # more digits than any real length (and than int() should parse)


async def read_body(
    request: Request, max_bytes: int, timeout: float, ticket: Ticket | None = None
) -> bytes | Reply:
    """The body, or the reply that refuses it (the connection should then be closed: the rest
    of the body was not read)."""
    declared = request.headers.get("content-length")
    if declared is not None and "transfer-encoding" in request.headers:
        # Two framings: servers and proxies may disagree on where the body ends (smuggling).
        return refused("Request has both Content-Length and Transfer-Encoding")
    if declared is not None:
        if not (declared.isascii() and declared.isdigit()):  # h11 already refuses these
            return refused("Request has an invalid Content-Length")
        if len(declared) > _MAX_LENGTH_DIGITS or int(declared) > max_bytes:
            return too_large(max_bytes)
        if ticket is not None and not ticket.hold(int(declared)):
            return busy()
    body = bytearray()
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.stream():
                body += chunk
                if len(body) > max_bytes:
                    return too_large(max_bytes)
                if ticket is not None and not ticket.hold(len(body)):
                    return busy()
    except TimeoutError:
        return too_slow(timeout)
    except ClientDisconnect:  # nobody is left to read the reply
        return refused("Client disconnected before sending the whole body")
    return bytes(body)
