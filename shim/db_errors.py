"""The shim's database errors by what to do about them, in one place (intake, the group committer,
the dispatcher and the purge all ask here).

* **Unavailable**: the database is down, unreachable, or cannot take writes for now. The client
  gets a 503 with Retry-After and sends again; the dispatcher and the purge wait and try again,
  with one warning line (`OutageLog`), not a traceback per pass. By SQLSTATE: class 08
  (connection exceptions), 25006 (read-only transaction: connections that landed on a standby
  after a failover, a database set read-only for maintenance), 57P01 / 57P02 / 57P03 (the server
  shutting down, crashed, starting or in recovery), class 53 (insufficient resources: too many
  connections 53300, disk full, out of memory); and without a SQLSTATE, a connection lost,
  refused or timed out (the driver's OperationalError / InterfaceError, SQLAlchemy's pool
  timeout, SQLite's "database is locked").
* **Conflict**: 40001 (serialization failure) and 40P01 (deadlock detected): the transaction was
  rolled back whole and can be run again at once (`retry_conflicts`, a bounded number of times);
  one that keeps conflicting is then treated as unavailable.

Anything else is a bug: a 500 with its traceback. The SQLSTATEs are the core's
(`deployments.syncjob.OUTAGE_SQLSTATES`, which its `is_transient` retries the SyncJob writes on):
one list for both sides.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

import psycopg
import tenacity
from sqlalchemy import exc as sa_exc

from deployments.syncjob import OUTAGE_SQLSTATE_CLASSES, OUTAGE_SQLSTATES

P = ParamSpec("P")
T = TypeVar("T")

# Two of the core's outage SQLSTATEs: the transaction is run again at once, not waited out.
CONFLICT_SQLSTATES = frozenset({"40001", "40P01"})
CONFLICT_ATTEMPTS = 3  # a conflicting transaction is run at most this many times in a row
# No SQLSTATE, no answer: refused, reset, timed out, SQLite locked or read-only.
_LOST = (
    sa_exc.OperationalError,
    sa_exc.InterfaceError,
    sa_exc.TimeoutError,
    psycopg.OperationalError,  # the PostgreSQL group committer's own connection (shim.committer)
    psycopg.InterfaceError,
)


def sqlstate_of(exc: BaseException | None) -> str | None:
    """The SQLSTATE of a database error: psycopg's `sqlstate`, through SQLAlchemy's `orig` and
    the exception's causes."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        state = getattr(exc, "sqlstate", None)
        if isinstance(state, str):
            return state
        orig = getattr(exc, "orig", None)  # SQLAlchemy's DBAPIError wraps the driver's error
        exc = orig if isinstance(orig, BaseException) else (exc.__cause__ or exc.__context__)
    return None


def is_conflict(exc: BaseException) -> bool:
    """A serialization failure or a deadlock: run the transaction again, at once."""
    return sqlstate_of(exc) in CONFLICT_SQLSTATES


def is_unavailable(exc: BaseException) -> bool:
    """The database is down, unreachable or cannot take writes now (or conflicts again and
    again): not a bug; the client is told to send again, the dispatcher waits."""
    state = sqlstate_of(exc)
    if state is not None and (state in OUTAGE_SQLSTATES or state[:2] in OUTAGE_SQLSTATE_CLASSES):
        return True
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, _LOST)


def describe(exc: BaseException) -> str:
    """One line: the error's class, its SQLSTATE and the first line of its message."""
    orig = getattr(exc, "orig", None)
    shown = orig if isinstance(orig, BaseException) else exc
    state = sqlstate_of(exc)
    lines = str(shown).strip().splitlines()
    return f"{type(shown).__name__}{f' {state}' if state else ''}: {lines[0] if lines else ''}"


def _conflict_retrying(log: logging.Logger) -> dict[str, object]:
    def logged(state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        log.info("transaction conflicted (%s), run again at once", describe(exc) if exc else "")

    return {
        "retry": tenacity.retry_if_exception(is_conflict),
        "stop": tenacity.stop_after_attempt(CONFLICT_ATTEMPTS),
        "wait": tenacity.wait_random(0, 0.02),  # "at once", not both again in the same instant
        "reraise": True,
        "before_sleep": logged,
    }


def retry_conflicts(log: logging.Logger, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """`fn(*args)`, run again at once after a serialization failure or a deadlock."""
    return tenacity.Retrying(**_conflict_retrying(log))(fn, *args, **kwargs)  # type: ignore[arg-type]


async def retry_conflicts_async(
    log: logging.Logger, fn: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs
) -> T:
    """`await fn(*args)`, run again at once after a serialization failure or a deadlock."""
    retrying = tenacity.AsyncRetrying(**_conflict_retrying(log))  # type: ignore[arg-type]
    return await retrying(fn, *args, **kwargs)


class OutageLog:
    """One warning when the database becomes unavailable and one line when it is back, not a
    line (nor a traceback) per attempt in between."""

    def __init__(self, log: logging.Logger, what: str) -> None:
        self.log = log
        self.what = what  # what waits: "dispatch", "the purge"
        self.since: float | None = None

    def failed(self, exc: BaseException) -> None:
        if self.since is None:
            self.since = time.monotonic()
            self.log.warning("the outbox is unavailable, %s waits and retries: %s", self.what, describe(exc))

    def ok(self) -> None:
        if self.since is not None:
            self.log.info(
                "the outbox is available again after %.0f s, %s goes on",
                time.monotonic() - self.since,
                self.what,
            )
            self.since = None
