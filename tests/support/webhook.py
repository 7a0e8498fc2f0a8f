"""A real HTTP endpoint for failure alerts: answers each POST as planned, records everything."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Received:
    started: float  # time.time() when the request came in
    answered: float | None  # when the answer was sent (None while it is being delayed)
    status: int
    body: dict[str, Any]


class Webhook:
    """`plan` lists (delay in seconds, status) for the first requests; later ones get `status`."""

    def __init__(self, plan: list[tuple[float, int]] | None = None, status: int = 204) -> None:
        self.plan = list(plan or [])
        self.status = status
        self.received: list[Received] = []
        self._lock = threading.Lock()
        webhook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with webhook._lock:
                    delay, status = webhook.plan.pop(0) if webhook.plan else (0.0, webhook.status)
                    entry = Received(time.time(), None, status, body)
                    webhook.received.append(entry)
                time.sleep(delay)  # a slow receiver, not synchronisation
                try:
                    self.send_response(status)
                    self.end_headers()
                except OSError:  # the sender gave up waiting
                    pass
                entry.answered = time.time()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}/hook"

    def delivered(self) -> list[dict[str, Any]]:
        """Bodies the webhook accepted (answered 2xx)."""
        return [r.body for r in self.received if r.status < 300 and r.answered is not None]

    def __enter__(self) -> Webhook:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
