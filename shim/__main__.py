"""Run the Event API: `python -m shim` (port 8288 by default)."""

from __future__ import annotations

import gc

import uvicorn

from shim.app import create_app
from shim.logs import configure_logging
from shim.server import server_config
from shim.settings import get_shim_settings


def main() -> None:
    configure_logging()
    settings = get_shim_settings()
    app = create_app(settings)
    # What is loaded by now (Prefect, SQLAlchemy, FastAPI: ~160k objects) lives as long as the
    # process: keep it out of the garbage collector's full passes, which otherwise hold the
    # interpreter for ~100 ms in the middle of a large request and stall /health.
    gc.collect()
    gc.freeze()
    # one worker: the dispatcher thread lives in this process
    uvicorn.Server(server_config(app, settings, log_level="info")).run()


if __name__ == "__main__":
    main()
