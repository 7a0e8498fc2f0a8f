"""What the recovery passes share when something fails: one item's failure kept to itself, an
outage let through.

A pass works through many rows and runs; one that the database refuses or that Prefect answers
4xx for (or a bug that only one of them meets) must not keep the others unrepaired, so each item
runs on its own and its failure is logged with its id. An outage is different: every other item
would meet it too, so it ends the whole pass and the loop waits for the next one. An item that
keeps failing is logged again every FAILING_LOG_SECONDS, not at every pass (every 2 s).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

import httpx

from deployments.syncjob import is_transient

# Every pass logs here, whichever module it lives in: one logger for operators (and tests) to
# follow the reconciler by.
log = logging.getLogger("poligraph.reconcile")
T = TypeVar("T")
FAILING_LOG_SECONDS = 300.0  # an item failing at every pass is logged again this often


class ItemIsolation:
    """One row's, one run's or one pass's work, and the items that keep failing."""

    def __init__(self) -> None:
        # items whose own work fails: (first failure, failures, last logged), monotonic
        self._failing: dict[str, tuple[float, int, float]] = {}

    def on_its_own(self, what: str, ident: str, action: Callable[[], T]) -> T | None:
        """`action`'s result; None when it failed for a reason of its own (a row the database
        refuses, a run Prefect answers 4xx for, a bug), logged with its id while the rest goes
        on. An outage, which every other item would meet too, is raised: it ends the whole pass."""
        try:
            result = action()
        except Exception as exc:
            if is_outage(exc):
                raise
            key = f"{what} {ident}"
            first, count, logged = self._failing.get(key, (time.monotonic(), 0, 0.0))
            count += 1
            if count == 1 or time.monotonic() - logged >= FAILING_LOG_SECONDS:
                since = f" ({count} passes since {time.monotonic() - first:.0f} s)" if count > 1 else ""
                log.exception("reconcile: %s left for the next pass%s", key, since)
                logged = time.monotonic()
            self._failing[key] = (first, count, logged)
            return None
        self._failing.pop(f"{what} {ident}", None)
        return result


def is_outage(exc: BaseException) -> bool:
    """The database or the Prefect server away or unwell: nothing in this pass can succeed."""
    if is_transient(exc) or isinstance(exc, httpx.TransportError):
        return True
    return isinstance(exc, httpx.HTTPStatusError) and exc.response.status_code >= 500


def what_is_away(exc: Exception) -> str:
    return "the database" if is_transient(exc) else "the Prefect server"
