"""P1's baseline: a bare FastAPI endpoint answering the same send as the shim, nothing stored.

    python -m bench.bare_app <port>

Same route and reply shape (one id per event), served by uvicorn with the shim's own server
configuration (h11, connection limit, no access log), so that the ratio measures what the shim
does on top of receiving a request: validate, map, store durably, log.
"""

from __future__ import annotations

import json
import sys

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ulid import ULID

from shim.server import server_config
from shim.settings import ShimSettings

app = FastAPI(openapi_url=None)


@app.post("/e/{key}")
async def receive(key: str, request: Request) -> JSONResponse:
    events = json.loads(await request.body())
    count = len(events) if isinstance(events, list) else 1
    return JSONResponse({"ids": [str(ULID()) for _ in range(count)], "status": 200})


@app.get("/health")
async def health() -> JSONResponse:
    return JSONResponse({"status": 200, "message": "OK"})


if __name__ == "__main__":
    settings = ShimSettings(port=int(sys.argv[1]))
    uvicorn.Server(server_config(app, settings, log_level="warning")).run()
