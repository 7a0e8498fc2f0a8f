"""Runs survive what goes wrong around them, caused for real against one worker:

* the app's PostgreSQL stops for 20 s while runs start, report progress and finish;
* the failure webhook is slow and failing, and the flow-run process exits right after queueing;
* the Prefect server restarts (same port, same database) while a step holds its script's
  concurrency slot.

The module has its own PostgreSQL and Prefect server (both restarted by the tests), with the
server's concurrency leases on disk as production sets it (docs/prefect.md, "Concurrency limits").
"""

from __future__ import annotations

import time

import pytest
import sqlalchemy as sa
from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_URL, temporary_settings

from deployments.specs import script_limit_name
from deployments.syncjob import CANCEL_MESSAGE, SyncJobRepository
from support.paths import STATE, TESTS
from support.pg_cluster import PostgresCluster, apply_sql
from support.polling import wait_for
from support.prefect_server import (
    PrefectServer,
    create_run,
    flow_run_state,
    start_worker_ready,
    wait_final,
)
from support.processes import process_alive, stop_process_group
from support.syncjob import insert_pending
from support.webhook import Webhook

pytestmark = pytest.mark.slow

HOME = STATE / "survive-home"
LEASES_ON_DISK = {
    "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": "prefect.server.concurrency.lease_storage.filesystem"
}
OUTAGE_SECONDS = 20
# the first attempt hangs longer than the flow-run process waits at exit, the second fails
WEBHOOK_PLAN = [(8.0, 500), (0.0, 500)]


@pytest.fixture(scope="module")
def app_db():
    cluster = PostgresCluster()
    try:
        cluster.start()
        cluster.create_database()
        apply_sql(cluster.url, TESTS / "sql" / "syncjob.sql")
        yield cluster
    finally:
        cluster.remove()


@pytest.fixture(scope="module")
def prefect_server():
    server = PrefectServer(STATE / "survive-prefect", "prefect-survive.log", LEASES_ON_DISK)
    server.start()
    try:
        with temporary_settings({PREFECT_API_URL: server.api_url}):
            yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def webhook():
    with Webhook(plan=list(WEBHOOK_PLAN)) as hook:
        yield hook


@pytest.fixture(scope="module")
def worker(app_db, prefect_server, webhook):
    proc = start_worker_ready(
        {
            "DATABASE_URL": app_db.url,
            "PREFECT_API_URL": prefect_server.api_url,
            "POLIGRAPH_HOME": str(HOME),
            "POLIGRAPH_ALERT_WEBHOOK_URL": webhook.url,
            "POLIGRAPH_ALERT_RETRY_DELAYS": "1,1,1",
        },
        "worker-survive.log",
        timeout=90,
    )
    try:
        yield proc
    finally:
        stop_process_group(proc)


@pytest.fixture
def rows(app_db):
    engine = sa.create_engine(app_db.url, pool_pre_ping=True)
    yield SyncJobRepository(engine)
    engine.dispose()


def final_row(rows: SyncJobRepository, job_id: str) -> dict:
    return wait_for(
        lambda: (r := rows.get(job_id)) and r["status"] in ("COMPLETED", "FAILED") and r,
        timeout=60,
        what=f"SyncJob {job_id} to end",
    )


def test_the_failure_webhook_never_holds_a_run_and_the_alert_arrives_once(worker, rows, stubs, webhook):
    stubs.configure("vital", fail_times=9, stderr="upstream is down")
    insert_pending(rows, "calertslow000000000000001", "vital")
    run = create_run("sync-script/vital", job_id="calertslow000000000000001")
    state = wait_final(run)
    assert state.is_failed()
    (body,) = wait_for(webhook.delivered, timeout=60, what="the alert to be delivered")
    wait_for(lambda: not list((HOME / "alerts").glob("*.json")), timeout=30, what="an empty spool")
    wait_for(lambda: all(r.answered for r in webhook.received), timeout=30, what="the slow answer")

    first = webhook.received[0]
    assert first.answered is not None and state.timestamp.timestamp() < first.answered, (
        "the run waited for the webhook"
    )
    assert [r.status for r in webhook.received] == [500, 500, 204]  # retried, then delivered once
    assert body["script"] == "vital" and body["jobId"] == "calertslow000000000000001"
    assert body["flowRunId"] == str(run) and "upstream is down" in body["error"]
    assert final_row(rows, "calertslow000000000000001")["status"] == "FAILED"


def test_a_database_outage_fails_no_run(worker, app_db, rows, stubs):
    stubs.configure("alpha", sleep=10, progress=[[i, 5] for i in range(1, 6)])  # progress in the outage
    stubs.configure("broken", sleep=3, fail_times=99, stderr="upstream 503")  # fails in the outage
    stubs.configure("gamma", sleep=1)
    jobs = {script: f"coutage{script:0<18}" for script in ("alpha", "broken", "gamma")}
    for script, job in jobs.items():
        insert_pending(rows, job, script)
    runs = {
        script: create_run(f"sync-script/{script}", job_id=jobs[script]) for script in ("alpha", "broken")
    }
    wait_for(
        lambda: stubs.starts("alpha") and stubs.starts("broken"), timeout=60, what="the scripts to start"
    )

    app_db.stop("fast")  # every connection is cut, new ones are refused
    runs["gamma"] = create_run("sync-script/gamma", job_id=jobs["gamma"])  # starts during the outage
    time.sleep(OUTAGE_SECONDS)  # the outage itself, not a wait for something
    back = time.time()
    app_db.start()

    states = {script: wait_final(run, timeout=180) for script, run in runs.items()}
    assert states["alpha"].is_completed() and states["gamma"].is_completed(), states
    assert states["broken"].is_failed()
    assert stubs.events("alpha", "end")[0]["time"] < back, "alpha should have finished during the outage"
    for script in ("alpha", "gamma"):
        row = final_row(rows, jobs[script])
        assert row["status"] == "COMPLETED" and row["progress"] == 100 and row["error"] is None
    broken = final_row(rows, jobs["broken"])
    assert broken["status"] == "FAILED"
    assert "step broken (broken) failed" in broken["error"] and "upstream 503" in broken["error"]


def test_a_database_that_cannot_take_writes_for_a_while_fails_no_run(worker, app_db, rows, stubs):
    """Read-only (SQLSTATE 25006) is an outage like a lost connection: the run's SyncJob writes
    wait it out, and the row ends right once the database takes writes again."""
    stubs.configure("gamma", sleep=2)
    job = "creadonlyrun0000000000001"
    insert_pending(rows, job, "gamma")
    app_db.read_only(True)
    try:
        run = create_run("sync-script/gamma", job_id=job)
        wait_for(
            lambda: stubs.starts("gamma") or flow_run_state(run).is_running(), timeout=60, what="the run"
        )
        time.sleep(8)  # the read-only spell itself, not a wait for something
    finally:
        app_db.read_only(False)
    assert wait_final(run, timeout=180).is_completed()
    row = final_row(rows, job)
    assert row["status"] == "COMPLETED" and row["error"] is None


def test_a_prefect_server_restart_mid_step_keeps_the_run_and_frees_the_slot(
    worker, prefect_server, rows, stubs, tmp_path
):
    # `shared` holds its slot across the restart and ends after it; `alpha` ends while the
    # server is down, so its slot cannot be released then
    stubs.configure("shared", until=str(tmp_path / "shared-may-end"))
    stubs.configure("alpha", until=str(tmp_path / "alpha-may-end"))
    insert_pending(rows, "crestart00000000000000001", "shared")
    holder = create_run("sync-script/shared", job_id="crestart00000000000000001")
    during = create_run("sync-script/alpha")
    wait_for(lambda: stubs.starts("shared") and stubs.starts("alpha"), timeout=60, what="both to hold slots")

    prefect_server.stop()
    (tmp_path / "alpha-may-end").touch()
    wait_for(lambda: stubs.events("alpha", "end"), timeout=30, what="alpha to end while Prefect is down")
    prefect_server.start()  # same port, same database, same lease directory
    follower = create_run("sync-group/with-shared")  # needs the holder's slot
    (tmp_path / "shared-may-end").touch()
    assert wait_final(holder, timeout=120).is_completed()
    assert wait_final(follower, timeout=120).is_completed()
    assert wait_final(during, timeout=120).is_completed(), "a slot release that failed failed the step"
    assert stubs.starts("alpha") == 1

    (first, second) = stubs.intervals("shared")
    assert second[0] >= first[1], "the script ran twice at once"
    assert second[0] - first[1] < 60, "the next run waited longer than a lease for the slot"
    assert final_row(rows, "crestart00000000000000001")["status"] == "COMPLETED"
    assert slot_in_use(script_limit_name("shared")) == 0

    # The worker's runner stopped watching for cancellations while the server was away
    # (docs/prefect.md, "serve"): an admin cancel still stops the script, through the reconciler.
    stubs.configure("long", sleep=120, detached=True)
    insert_pending(rows, "crestartcancel00000000001", "long")
    cancelled = create_run("sync-script/long", job_id="crestartcancel00000000001")
    wait_for(lambda: stubs.pids("long"), timeout=60, what="the script to start")
    pids = stubs.pids("long") + [c["pid"] for c in stubs.events("long", "start")]
    assert rows.cancel("crestartcancel00000000001")
    wait_for(lambda: flow_run_state(cancelled).is_cancelled(), timeout=90, what="the run to be Cancelled")
    wait_for(lambda: not [p for p in pids if process_alive(p)], timeout=30, what="the script to die")
    assert rows.get("crestartcancel00000000001")["error"] == CANCEL_MESSAGE
    # alpha's unreleased slot frees itself when its lease expires (then Prefect's repossessor)
    wait_for(lambda: slot_in_use(script_limit_name("alpha")) == 0, timeout=120, what="alpha's slot to free")


def slot_in_use(name: str) -> int:
    with get_client(sync_client=True) as client:
        return client.read_global_concurrency_limit_by_name(name).active_slots
