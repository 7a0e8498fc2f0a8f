"""A flow-run process's first connections, opened in the background as the process starts.

A run's first SyncJob write pays for the database connection (and SQLAlchemy's first-connect
queries), its plan for reading the catalog, its first step for the slot client: 50 to 100 ms
inside the run on two shared cores.
serve's fork server (scripts/forkserver.py) imports this module, which asks multiprocessing to
call `warm_up_in_background` in every process forked from it: the work then overlaps with
Prefect's own start of the run (about half a second before the run is Running). Best effort: a
failure here is logged at debug level and the run opens its connections itself, as without it.
"""

from __future__ import annotations

import logging
import threading
from multiprocessing.util import register_after_fork

from deployments.catalog import get_catalog
from deployments.syncjob import syncjob_repository
from flows.slots import slot_api

log = logging.getLogger(__name__)


def warm_up() -> None:
    try:
        get_catalog()  # parsed once per process: before the run's first step needs it
        with syncjob_repository().engine.connect():
            pass  # back to the pool, ready for the run's first write
        slot_api()
    except Exception:
        log.debug("warm-up failed; the run connects itself", exc_info=True)


def warm_up_in_background() -> None:
    threading.Thread(target=warm_up, name="warm-up", daemon=True).start()


register_after_fork(warm_up_in_background, lambda start: start())
