"""The Inngest Event API over HTTP (FastAPI): thin routes around `shim.intake`.

POST /e/{key}   events in; 200 {"ids":[...],"status":200} once they are committed
GET  /health    {"status":200,"message":"OK"}
GET  /dev       a JSON object (inngest-js v3 probes it in inferred dev mode)
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from deployments.catalog import Catalog, get_catalog
from shim.dispatcher import Dispatcher
from shim.intake import Intake, KeyCheck
from shim.outbox import EventOutbox, open_outbox
from shim.settings import ShimSettings, get_shim_settings
from shim.wire import SEED_HEADER, SERVER_KIND_HEADER, Reply, dev_info, health, unknown_key


def create_app(
    settings: ShimSettings | None = None,
    outbox: EventOutbox | None = None,
    run_dispatcher: bool = True,
    catalog: Catalog | None = None,
) -> FastAPI:
    settings = settings or get_shim_settings()
    settings.check()
    key_accepted = KeyCheck(settings)
    server_kind = "dev" if settings.dev_mode else "cloud"
    catalog_of: Callable[[], Catalog] = (lambda: catalog) if catalog else get_catalog

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.outbox = outbox or open_outbox(settings)
        app.state.dispatcher = Dispatcher(app.state.outbox, settings)
        app.state.intake = Intake(app.state.outbox, catalog_of, app.state.dispatcher.wake.set)
        if run_dispatcher:
            app.state.dispatcher.start()
        yield
        app.state.dispatcher.stop()

    app = FastAPI(title="poligraph-jobs Inngest shim", lifespan=lifespan, openapi_url=None)
    app.add_middleware(  # open as the Inngest server's (docs/inngest-wire.md, "Replies")
        CORSMiddleware,
        allow_origins=["*"],
        allow_methods=["GET", "POST", "PUT", "DELETE", "OPTIONS"],
        allow_headers=["*"],
        allow_credentials=False,
        max_age=3600,
    )

    def respond(reply: Reply) -> JSONResponse:
        return JSONResponse(reply.body, status_code=reply.status, headers={SERVER_KIND_HEADER: server_kind})

    @app.post("/e/{key}")
    async def receive(key: str, request: Request) -> JSONResponse:
        if not key_accepted(key):
            return respond(unknown_key())
        raw = await request.body()
        intake: Intake = request.app.state.intake
        return respond(await run_in_threadpool(intake.receive, raw, request.headers.get(SEED_HEADER)))

    @app.get("/health")
    async def health_route() -> JSONResponse:
        return respond(health())

    @app.get("/dev")
    async def dev_route() -> JSONResponse:
        return respond(dev_info(missing_event_keys=not settings.event_keys))

    return app
