"""The dispatcher lives in the app's lifespan: two asyncio tasks of the app's event loop, started
with it and stopped with it, no thread of its own, its database calls never on the loop; and the
records it reads are typed, their values the strings the tables hold."""

from __future__ import annotations

import asyncio
import threading

import httpx
import pytest

from shim.dispatcher import Dispatcher
from shim.mapping import FAIL_JOB, NOTHING, RUN, Action
from shim.outbox import DONE, DUPLICATE, FAILED, PENDING, ClaimedEvent, EventOutbox, EventStatus
from shim.settings import ShimSettings
from support.polling import wait_for
from support.ports import free_port
from support.shim import running_shim, sqlite_outbox

pytestmark = pytest.mark.unit


class WatchedClaims(EventOutbox):
    """Records, for each claim, whether it ran on an event loop."""

    def __init__(self, real: EventOutbox) -> None:
        super().__init__(real.engine)
        self.on_loop: list[bool] = []

    def claim_due(self, conn, limit, exclude=None, actions=None):  # type: ignore[no-untyped-def]
        try:
            asyncio.get_running_loop()
            self.on_loop.append(True)
        except RuntimeError:
            self.on_loop.append(False)
        return super().claim_due(conn, limit, exclude, actions)


def test_the_dispatcher_runs_as_tasks_of_the_app_and_claims_off_its_loop(tmp_path):
    outbox = WatchedClaims(sqlite_outbox(tmp_path))
    settings = ShimSettings(poll_seconds=0.05, prefect_api_url=f"http://127.0.0.1:{free_port()}/api")
    with running_shim(settings, outbox, run_dispatcher=True) as (url, app):
        dispatcher = app.state.dispatcher
        tasks = list(dispatcher._tasks)
        assert [task.get_name() for task in tasks] == ["shim-dispatcher", "shim-event-feed"]
        assert all(isinstance(task, asyncio.Task) and not task.done() for task in tasks)
        assert not [t for t in threading.enumerate() if t.name == "shim-dispatcher"]
        event = {"name": "sync/nope", "data": {"jobId": "clifespan0000000000000001"}}
        assert httpx.post(f"{url}/e/k", json=[event]).status_code == 200
        wait_for(lambda: outbox.pending_count() == 0, timeout=30, what="the refused event handled")
    assert outbox.on_loop and not any(outbox.on_loop), "a claim ran on the event loop"
    assert all(task.done() for task in tasks) and dispatcher._api is None


def test_a_pass_asked_for_runs_on_the_apps_loop_or_on_one_of_its_own(tmp_path):
    outbox = sqlite_outbox(tmp_path)
    event = {"name": "sync/nope", "data": {"jobId": "clifespan0000000000000002"}}
    with running_shim(ShimSettings(), outbox) as (url, app):
        assert httpx.post(f"{url}/e/k", json=[event, event]).status_code == 200
        assert app.state.dispatcher._tasks == []  # bound, not started: passes only when asked for
        assert app.state.dispatcher.dispatch_due() == 2
    assert outbox.pending_count() == 0
    with running_shim(ShimSettings(), outbox) as (url, _app):
        assert httpx.post(f"{url}/e/k", json=[{**event, "id": "again"}]).status_code == 200
    assert Dispatcher(outbox, ShimSettings()).dispatch_due() == 1  # no app, no loop of its own left
    assert outbox.pending_count() == 0


def test_statuses_and_actions_are_the_strings_the_tables_hold(tmp_path):
    assert [PENDING, DONE, DUPLICATE, FAILED] == ["pending", "done", "duplicate", "failed"]
    assert [RUN, FAIL_JOB, NOTHING] == ["run", "fail_job", "nothing"]
    assert f"{EventStatus.PENDING} {Action.RUN}" == "pending run"
    outbox = sqlite_outbox(tmp_path)
    with running_shim(ShimSettings(), outbox) as (url, _app):
        assert httpx.post(f"{url}/e/k", json=[{"name": "sync/press"}]).status_code == 200
    (row,) = outbox.events()
    assert (type(row["status"]), row["status"], row["action"]) == (str, "pending", "run")
    claimed = ClaimedEvent.from_row(row)
    assert (claimed.action, claimed.attempts, claimed.deployment) == (Action.RUN, 0, "sync-group/press")
