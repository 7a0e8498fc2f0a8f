"""The shim's log lines: one line each, bounded, and never the event key.

uvicorn's access log writes the request path, and the path is `/e/<event key>`: it is turned off
(`shim.server`) and `AccessLog` writes the route template instead (`POST /e/{key} 200 3.1ms`).
`SafeFormatter` escapes control characters and bounds the length of every message, whoever
logged it, so a newline in an event name cannot forge a line and a 1 MB name cannot write one.
"""

from __future__ import annotations

import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shim.text import printable

MAX_MESSAGE_CHARS = 2000
FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"

access_log = logging.getLogger("poligraph.shim.http")


class SafeFormatter(logging.Formatter):
    """Each message made printable and bounded; tracebacks are kept as they are."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        # `format` has just set `record.message` from msg % args (every formatter sets it anew)
        record.message = printable(record.message, MAX_MESSAGE_CHARS)
        return super().formatMessage(record)


def configure_logging(level: int = logging.INFO) -> None:
    # Fields FORMAT never shows, not collected for every record (the logging HOWTO's
    # "Optimization"): a fifth of the cost of each of the two lines a request writes.
    logging._srcfile = None  # no caller lookup (file, line, function)
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler()
    handler.setFormatter(SafeFormatter(FORMAT))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per Prefect request otherwise


class AccessLog:
    """ASGI middleware: method, route template, status and duration of every request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 0

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            # The router put the matched route in the scope; never log the path itself.
            route = getattr(scope.get("route"), "path", None) or "(no route)"
            access_log.info(
                "%s %s %s %.1fms",
                printable(scope["method"], 16),
                route,
                status or "-",  # no reply: the client went away, or an error outside the app
                (time.perf_counter() - started) * 1000,
            )
