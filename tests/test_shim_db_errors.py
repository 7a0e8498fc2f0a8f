"""A database that cannot take writes is an outage, not a bug: errors classified by SQLSTATE
(`shim.db_errors`), intake's 503 with Retry-After for them and its 500 for the rest, a group
written again after a serialization failure or a deadlock, and the dispatcher's one warning for
a whole outage. The same against a real read-only PostgreSQL: tests/test_shim_read_only.py.
"""

from __future__ import annotations

import logging
import time

import httpx
import psycopg.errors
import pytest
import sqlalchemy as sa

from shim import db_errors
from shim.dispatcher import Dispatcher
from shim.outbox import EventBatch, EventOutbox, Recorded
from shim.settings import ShimSettings
from support.polling import wait_for
from support.ports import free_port
from support.shim import running_dispatcher, running_shim, sqlite_outbox

pytestmark = pytest.mark.unit


def wrapped(state: str, statement: str = "INSERT INTO inngest_event ...") -> sa.exc.DBAPIError:
    """A driver error of this SQLSTATE as SQLAlchemy raises it."""
    orig = psycopg.errors.lookup(state)(f"error {state}")
    return sa.exc.DBAPIError.instance(statement, {}, orig, psycopg.Error)


@pytest.mark.parametrize(
    "state",
    ["25006", "57P01", "57P02", "57P03", "53300", "53100", "08006", "08001", "40001", "40P01"],
)
def test_outages_and_conflicts_are_unavailable_whoever_wraps_them(state):
    driver = psycopg.errors.lookup(state)("x")
    assert db_errors.sqlstate_of(driver) == state
    assert db_errors.is_unavailable(driver)
    assert db_errors.is_unavailable(wrapped(state))
    try:  # raised while handling another: found through the cause too
        raise RuntimeError("the group failed") from wrapped(state)
    except RuntimeError as exc:
        assert db_errors.sqlstate_of(exc) == state


def test_only_serialization_failures_and_deadlocks_are_conflicts():
    assert db_errors.is_conflict(wrapped("40001")) and db_errors.is_conflict(wrapped("40P01"))
    assert not db_errors.is_conflict(wrapped("25006")) and not db_errors.is_conflict(wrapped("57P01"))


@pytest.mark.parametrize("state", ["23505", "42P01", "42703", "22P02", "25P02"])
def test_a_bad_statement_is_a_bug_not_an_outage(state):
    assert not db_errors.is_unavailable(wrapped(state))
    assert not db_errors.is_unavailable(ValueError("a bug"))


def test_errors_without_a_sqlstate_are_outages_when_the_connection_went():
    lost = sa.exc.OperationalError("SELECT 1", {}, Exception("server closed the connection unexpectedly"))
    assert db_errors.is_unavailable(lost) and db_errors.sqlstate_of(lost) is None
    assert db_errors.is_unavailable(sa.exc.TimeoutError("QueuePool limit reached"))
    assert db_errors.is_unavailable(psycopg.OperationalError("connection refused"))
    assert db_errors.describe(wrapped("25006")) == "ReadOnlySqlTransaction 25006: error 25006"


def test_a_conflict_is_run_again_at_once_a_bounded_number_of_times():
    calls = []

    def conflicting(times: int) -> str:
        calls.append(time.monotonic())
        if len(calls) <= times:
            raise wrapped("40P01")
        return "stored"

    log = logging.getLogger("test")
    assert db_errors.retry_conflicts(log, conflicting, 2) == "stored"
    assert len(calls) == 3 and calls[-1] - calls[0] < 1
    calls.clear()
    with pytest.raises(sa.exc.DBAPIError):
        db_errors.retry_conflicts(log, conflicting, 10)
    assert len(calls) == db_errors.CONFLICT_ATTEMPTS
    calls.clear()
    with pytest.raises(sa.exc.DBAPIError):  # not a conflict: not run again
        db_errors.retry_conflicts(log, lambda: calls.append(1) or (_ for _ in ()).throw(wrapped("25006")))
    assert calls == [1]


class FailingOutbox(EventOutbox):
    """The real SQLite outbox, whose commits fail with `errors` first, one each."""

    def __init__(self, real: EventOutbox, errors: list[BaseException]) -> None:
        super().__init__(real.engine)
        self.errors = errors

    def record_requests(self, requests: list[EventBatch]) -> list[list[Recorded]]:
        if self.errors:
            raise self.errors.pop(0)
        return super().record_requests(requests)


def test_a_store_that_cannot_take_writes_answers_503_with_retry_after(tmp_path):
    outbox = FailingOutbox(sqlite_outbox(tmp_path), [wrapped("25006"), wrapped("57P01"), wrapped("53300")])
    with running_shim(ShimSettings(), outbox) as (url, _app):
        for _ in range(3):
            reply = httpx.post(f"{url}/e/k", json=[{"name": "sync/press"}])
            assert reply.status_code == 503 and reply.headers["retry-after"] == "5"
            assert reply.json()["error"] == "The event store is unavailable; send the events again"
        assert httpx.post(f"{url}/e/k", json=[{"name": "sync/press"}]).status_code == 200
    assert len(outbox.events()) == 1


def test_a_group_that_conflicted_is_written_again_and_acknowledged(tmp_path):
    outbox = FailingOutbox(sqlite_outbox(tmp_path), [wrapped("40001"), wrapped("40P01")])
    with running_shim(ShimSettings(), outbox) as (url, _app):
        reply = httpx.post(f"{url}/e/k", json=[{"name": "sync/press"}])
    assert reply.status_code == 200 and len(outbox.events()) == 1


def test_a_bad_statement_is_still_a_500(tmp_path):
    outbox = FailingOutbox(sqlite_outbox(tmp_path), [wrapped("42P01")])
    with running_shim(ShimSettings(), outbox) as (url, _app):
        reply = httpx.post(f"{url}/e/k", json=[{"name": "sync/press"}])
    assert reply.status_code == 500 and reply.json()["error"] == "Internal error in the event shim"


class ReadOnlyClaims(EventOutbox):
    """The dispatcher's claims fail as on a read-only database until `writable` is set."""

    def __init__(self, real: EventOutbox) -> None:
        super().__init__(real.engine)
        self.writable = False
        self.claims = 0

    def claim_due(self, conn, limit, exclude=None, actions=None):  # type: ignore[no-untyped-def]
        self.claims += 1
        if not self.writable:
            raise wrapped("25006", "SELECT ... FOR UPDATE SKIP LOCKED")
        return super().claim_due(conn, limit, exclude, actions)


def test_the_dispatcher_waits_out_an_outage_with_one_warning_and_no_traceback(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="poligraph.shim.dispatcher")
    outbox = ReadOnlyClaims(sqlite_outbox(tmp_path))
    settings = ShimSettings(poll_seconds=0.05, prefect_api_url=f"http://127.0.0.1:{free_port()}/api")
    with running_dispatcher(Dispatcher(outbox, settings)):
        wait_for(lambda: outbox.claims >= 10, timeout=30, interval=0.05, what="passes in the outage")
        outbox.writable = True
        wait_for(lambda: "available again" in caplog.text, timeout=30, what="the end of the outage")
    records = [r for r in caplog.records if r.name == "poligraph.shim.dispatcher"]
    unavailable = [r for r in records if "the outbox is unavailable" in r.getMessage()]
    assert len(unavailable) == 1 and unavailable[0].levelno == logging.WARNING
    assert "ReadOnlySqlTransaction 25006" in unavailable[0].getMessage()
    assert not [r for r in records if r.exc_info], "a traceback was logged"
