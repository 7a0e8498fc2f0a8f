"""Run the Event API: `python -m shim` (port 8288 by default)."""

from __future__ import annotations

import logging

import uvicorn

from shim.app import create_app
from shim.settings import get_shim_settings


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    settings = get_shim_settings()
    app = create_app(settings)
    # one worker: the dispatcher thread lives in this process
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="info")


if __name__ == "__main__":
    main()
