"""The Inngest Event API, answered exactly as the Inngest server answers (inngest-wire.md).

POST /e/{key}   events in; 200 {"ids":[...],"status":200} once they are committed
GET  /health    {"status":200,"message":"OK"}
GET  /dev       a JSON object (inngest-js v3 probes it in inferred dev mode)
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from deployments.catalog import get_catalog
from deployments.models import Catalog
from shim.dispatcher import Dispatcher
from shim.events import EventError, parse_body
from shim.ids import event_ids
from shim.mapping import map_event
from shim.settings import ShimSettings, get_shim_settings
from shim.store import EventStore, open_store

log = logging.getLogger("poligraph.shim")
SEED_HEADER = "x-inngest-event-id-seed"


def create_app(
    settings: ShimSettings | None = None,
    store: EventStore | None = None,
    run_dispatcher: bool = True,
    catalog: Catalog | None = None,
) -> FastAPI:
    settings = settings or get_shim_settings()
    settings.check()
    server_kind = "dev" if settings.dev_mode else "cloud"
    keys = [key.get_secret_value().encode() for key in settings.event_keys]

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.store = store or open_store(settings)
        app.state.dispatcher = Dispatcher(app.state.store, settings)
        if run_dispatcher:
            app.state.dispatcher.start()
        yield
        app.state.dispatcher.stop()

    app = FastAPI(title="poligraph-jobs Inngest shim", lifespan=lifespan, openapi_url=None)
    app.add_middleware(  # as the Inngest server (go-chi/cors)
        CORSMiddleware,
        allow_origins=["*"],
        allow_methods=["GET", "POST", "PUT", "DELETE", "OPTIONS"],
        allow_headers=["*"],
        allow_credentials=False,
        max_age=3600,
    )

    def reply(status: int, body: dict) -> JSONResponse:
        return JSONResponse(body, status_code=status, headers={"X-Inngest-Server-Kind": server_kind})

    def key_accepted(key: str) -> bool:
        if settings.dev_mode:
            return bool(key)
        given = key.encode()
        # compare against every key, in constant time each, so timing says nothing
        return any([hmac.compare_digest(given, known) for known in keys])

    @app.post("/e/{key}")
    async def receive(key: str, request: Request) -> JSONResponse:
        if not key_accepted(key):
            return reply(401, {"status": 401, "message": "", "error": "Event key not found"})
        raw = await request.body()
        try:
            events = parse_body(raw)
        except EventError as exc:
            return reply(400, {"ids": [], "status": 400, "error": str(exc)})
        ids = event_ids(request.headers.get(SEED_HEADER), len(events))
        mapping_catalog = catalog or get_catalog()
        batch = [
            (event_id, event, map_event(mapping_catalog, event.name, event.data))
            for event_id, event in zip(ids, events, strict=True)
        ]
        if batch:
            # committed before the 200: nothing accepted is lost
            await run_in_threadpool(app.state.store.record, batch)
            app.state.dispatcher.wake.set()
        for event_id, event, action in batch:
            log.info(
                "event %s %s -> %s %s",
                event_id,
                event.name,
                action.action,
                action.deployment or action.reason or "",
            )
        return reply(200, {"ids": ids, "status": 200})

    @app.get("/health")
    async def health() -> JSONResponse:
        return reply(200, {"status": 200, "message": "OK"})

    @app.get("/dev")
    async def dev_info() -> JSONResponse:
        return reply(
            200,
            {
                "version": "poligraph-jobs-shim",
                "isSingleNodeService": True,
                "isMissingSigningKey": True,
                "isMissingEventKeys": not settings.event_keys,
                "functions": [],
                "handlers": [],
            },
        )

    return app
