"""The Inngest Event API over HTTP (FastAPI): thin routes around `shim.intake`.

POST /e/{key}   events in; 200 {"ids":[...],"status":200} once they are committed
GET  /health    {"status":200,"message":"OK"}
GET  /dev       a JSON object (inngest-js v3 probes it in inferred dev mode)
GET  /metrics   Prometheus metrics (shim.metrics); no key needed, nothing secret in them

Every reply, errors included, is in the Inngest shape (a JSON `status`, an `error` text), since
that is what the SDKs read. Only an outage of the shim's own database gets a 5xx.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException

from deployments.catalog import Catalog, get_catalog
from shim.admission import Admission
from shim.body import BodyRefused, read_body
from shim.committer import committer_for
from shim.dispatcher import Dispatcher
from shim.event_feed import EventFeed
from shim.intake import Intake, KeyCheck
from shim.logs import AccessLog
from shim.mapping import FAIL_JOB
from shim.metrics import ShimMetrics
from shim.outbox import PENDING, EventBatch, EventOutbox, Recorded, open_outbox
from shim.replies import (
    SEED_HEADER,
    SERVER_KIND_HEADER,
    Reply,
    busy,
    dev_info,
    health,
    refused,
    unknown_key,
)
from shim.retention import Purge
from shim.settings import ShimSettings, get_shim_settings


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
    admission = Admission(settings.max_requests, settings.max_bytes_in_flight)
    max_bytes = settings.max_body_bytes

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.outbox = outbox or open_outbox(settings)
        metrics = app.state.metrics = ShimMetrics()
        metrics.watch_outbox(app.state.outbox.pending_stats)
        metrics.watch_admission(admission)
        event_feed = EventFeed(enabled=settings.prefect_events)
        dispatcher = app.state.dispatcher = Dispatcher(app.state.outbox, settings, metrics, event_feed)

        def wake_dispatcher(requests: list[EventBatch], stored: list[list[Recorded]]) -> None:
            # only events that need work (a run, or a SyncJob to fail) wake the dispatcher
            actions = {
                action.action
                for events, fates in zip(requests, stored, strict=True)
                for (_, _, action), fate in zip(events, fates, strict=True)
                if fate.status == PENDING
            }
            if actions:
                dispatcher.notify(needs_prefect=FAIL_JOB not in actions)

        app.state.committer = committer_for(app.state.outbox, wake_dispatcher)
        app.state.intake = Intake(
            app.state.committer, catalog_of, metrics, event_feed, settings.intake_threads
        )
        # finished events and expired keys leave the outbox (shim.retention), beside the dispatcher;
        # a thread, not a task: its statements block, and it owes the dispatcher nothing
        purge = app.state.purge = Purge(app.state.outbox, settings, metrics)
        if run_dispatcher:
            await dispatcher.start()  # tasks of this event loop
            purge.start()
        else:
            dispatcher.bind()  # passes only when asked for (`dispatch_due`, tests)
        yield
        await app.state.committer.aclose()
        await asyncio.to_thread(purge.stop)
        await dispatcher.aclose()

    app = FastAPI(title="poligraph-jobs Inngest shim", lifespan=lifespan, openapi_url=None)
    app.add_middleware(  # open as the Inngest server's (docs/event-api-protocol.md, "Replies")
        CORSMiddleware,
        allow_origins=["*"],
        allow_methods=["GET", "POST", "PUT", "DELETE", "OPTIONS"],
        allow_headers=["*"],
        allow_credentials=False,
        max_age=3600,
    )
    app.add_middleware(AccessLog)

    def respond(reply: Reply, close: bool = False) -> JSONResponse:
        headers = {SERVER_KIND_HEADER: server_kind}
        if reply.retry_after is not None:
            headers["Retry-After"] = str(reply.retry_after)
        if close:  # the request body was not (all) read: don't read the rest of it
            headers["Connection"] = "close"
        return JSONResponse(reply.body, status_code=reply.status, headers=headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:  # 404, 405
        return respond(refused(str(exc.detail), exc.status_code))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        # A bug, logged by the server with its traceback; the client still gets the shape.
        return respond(refused("Internal error in the event shim", 500), close=True)

    @app.post("/e/{key}")
    async def receive(request: Request) -> JSONResponse:
        # The key read from the path here, not as a parameter: FastAPI's parameter validation
        # would cost ~30 µs of every send.
        intake: Intake = request.app.state.intake
        key: str = request.path_params["key"]
        if not key_accepted(key):
            intake.refused("unknown_key", "Event key not found", 401)
            return respond(unknown_key(), close=True)
        ticket = admission.admit()
        if ticket is None:  # as many requests in progress as allowed: this one is not read
            reply = busy()
            intake.refused("busy", reply.body["error"], reply.status)
            return respond(reply, close=True)
        with ticket:  # its body's bytes are held until it is answered
            try:
                body = await read_body(request, max_bytes, settings.read_timeout_seconds, ticket)
            except BodyRefused as refusal:
                intake.refused(refusal.reason, refusal.error, refusal.reply.status)
                return respond(refusal.reply, close=True)
            return respond(await intake.receive(body, request.headers.get(SEED_HEADER)))

    @app.get("/health")
    async def health_route() -> JSONResponse:
        return respond(health())

    @app.get("/dev")
    async def dev_route() -> JSONResponse:
        return respond(dev_info(missing_event_keys=not settings.event_keys))

    @app.get("/metrics")
    def metrics_route(request: Request) -> Response:  # sync: FastAPI runs it in a thread (one query)
        return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
