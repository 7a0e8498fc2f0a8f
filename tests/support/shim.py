"""Run the shim's ASGI app on a real port (uvicorn in a thread) for the SDK to talk to."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio.from_thread
import httpx
import inngest
import uvicorn

from deployments.catalog import Catalog, load_catalog
from deployments.settings import DEFAULT_CATALOG, Settings
from shim.app import create_app
from shim.dispatcher import Dispatcher
from shim.outbox import EventOutbox, open_outbox
from shim.server import server_config
from shim.settings import ShimSettings
from support.paths import REPO, STATE
from support.polling import wait_for
from support.ports import free_port


@contextmanager
def running_shim(
    settings: ShimSettings,
    outbox: EventOutbox,
    run_dispatcher: bool = False,
    catalog: Catalog | None = None,
) -> Iterator[tuple[str, Any]]:
    """Yield (base url, app) of a shim served on 127.0.0.1 until the block ends.

    The catalog defaults to the real one (the tests' environment points at a test catalog).
    """
    catalog = catalog or load_catalog(DEFAULT_CATALOG)
    app = create_app(settings, outbox=outbox, run_dispatcher=run_dispatcher, catalog=catalog)
    port = free_port()
    config = server_config(app, settings, host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the shim did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}", app
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@contextmanager
def running_dispatcher(dispatcher: Dispatcher) -> Iterator[Dispatcher]:
    """A dispatcher without an app: its tasks on an event loop in a thread of its own (anyio's
    blocking portal), started and stopped as the app's lifespan does."""
    with anyio.from_thread.start_blocking_portal() as portal:
        portal.call(dispatcher.start)
        try:
            yield dispatcher
        finally:
            portal.call(dispatcher.aclose)


def shim_healthy(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def shim_metric(port: int, name: str, labels: dict[str, str] | None = None) -> float:
    """One sample of the shim's /metrics (0 when absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and (labels or {}).items() <= sample.labels.items():
                return float(sample.value)
    return 0.0


def start_shim_process(env: dict[str, str], port: int, log_name: str) -> subprocess.Popen[bytes]:
    """`python -m shim` on `port` in its own session; returns once it answers /health."""
    log_path = STATE / log_name
    proc = subprocess.Popen(
        [sys.executable, "-m", "shim"],
        env={**env, "POLIGRAPH_SHIM_PORT": str(port)},
        cwd=REPO,
        stdout=log_path.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )

    def ready() -> bool:
        assert proc.poll() is None, log_path.read_text()[-2000:]
        return shim_healthy(port)

    wait_for(ready, timeout=60, what=f"the shim on port {port}")
    return proc


def sqlite_outbox(home: Path, **overrides: Any) -> EventOutbox:
    return open_outbox(ShimSettings(**overrides), Settings(database_url=None, home=home))


def postgres_outbox(database_url: str, **overrides: Any) -> EventOutbox:
    """An outbox on PostgreSQL in a schema of its own, so a test sees only its own events."""
    settings = ShimSettings(schema_name=f"shim_{uuid.uuid4().hex[:10]}", **overrides)
    return open_outbox(settings, Settings(database_url=database_url))


def dev_client(base_url: str) -> inngest.Inngest:
    """An unchanged Inngest client in dev mode: it sends the key NO_EVENT_KEY_SET."""
    return inngest.Inngest(app_id="poligraph", is_production=False, event_api_base_url=base_url)


def key_client(base_url: str, key: str) -> inngest.Inngest:
    return inngest.Inngest(
        app_id="poligraph",
        is_production=True,
        event_api_base_url=base_url,
        event_key=key,
        signing_key="signkey-prod-0123456789abcdef",
    )


def attempt_statuses(client: inngest.Inngest) -> list[int]:
    """The HTTP status of every attempt `client` makes from now on (the SDK retries a 5xx: a send
    that ends in 200 may hide one). Through the SDK's own httpx client (a private attribute)."""
    statuses: list[int] = []
    http = client._http_client._http_client_sync
    http.event_hooks["response"] = [lambda response: statuses.append(response.status_code)]
    return statuses
