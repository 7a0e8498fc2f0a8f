"""Operator guarantees: a cancel stops the work, no row stays RUNNING after its run died,
failures of critical scripts are announced, missed cron firings run once at most.

Runs go through a real worker (`prefect worker start --type poligraph`, its reconciler beside it).
"""

from __future__ import annotations

import json
import os
import signal
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from prefect.client.orchestration import get_client
from prefect.states import Crashed, Scheduled

from deployments.settings import reload_settings
from deployments.syncjob import CANCEL_MESSAGE, job_id_for_flow_run
from flows.recovery import Reconciler
from support.paths import STATE, STUB_ROOT
from support.polling import run_async, wait_for
from support.prefect_server import create_run, start_worker_ready, wait_final
from support.processes import process_alive, stop_process_group
from support.syncjob import insert_pending
from support.webhook import Webhook

pytestmark = pytest.mark.integration


class RunningWorker:
    def __init__(self) -> None:
        self.proc = None

    def start(self) -> None:
        self.proc = start_worker_ready({}, "worker-operator.log")

    def stop(self) -> None:
        if self.proc is not None:
            stop_process_group(self.proc)


@pytest.fixture(scope="module")
def worker(prefect_api, pg_url):
    worker = RunningWorker()
    worker.start()
    yield worker
    worker.stop()


# --- cancel ---------------------------------------------------------------------------------------
def test_admin_cancel_stops_the_script_within_seconds_and_stays(worker, syncjobs, stubs):
    # a child in its group, one in its own session, a double-forked daemon: all must die
    stubs.configure("long", sleep=120, grandchild=True, detached=True, daemon=True)
    insert_pending(syncjobs, "ccancelop0000000000000001", "long")
    run = create_run("sync-script/long", job_id="ccancelop0000000000000001")
    wait_for(lambda: len(stubs.pids("long")) == 3, timeout=60, what="the script to start")
    pids = stubs.pids("long") + [c["pid"] for c in stubs.events("long", "start")]
    assert syncjobs.cancel("ccancelop0000000000000001")  # exactly what PATCH /api/admin/syncs/<id> does
    wait_for(lambda: not [p for p in pids if process_alive(p)], timeout=20, what="the script to die")
    assert wait_final(run).is_cancelled()
    row = syncjobs.get("ccancelop0000000000000001")
    assert row["status"] == "FAILED" and row["error"] == CANCEL_MESSAGE  # not overwritten


def test_a_row_cancelled_before_its_run_starts_runs_nothing(worker, syncjobs, stubs):
    insert_pending(syncjobs, "ccancelearly0000000000001", "gamma")
    assert syncjobs.cancel("ccancelearly0000000000001")
    run = create_run("sync-script/gamma", job_id="ccancelearly0000000000001")
    assert wait_final(run).is_cancelled()
    assert stubs.events() == []
    assert syncjobs.get("ccancelearly0000000000001")["error"] == CANCEL_MESSAGE
    # no hook of the run's removes its run file on this end: the reconciler does, once it exited
    run_file = STATE / "home" / "runs" / f"{run}.json"
    wait_for(lambda: not run_file.exists(), timeout=20, what="the run file to be removed")


def test_the_admins_stale_sweep_does_not_stop_a_run(worker, syncjobs, stubs):
    stubs.configure("alpha", sleep=3)
    insert_pending(syncjobs, "csweep0000000000000000001", "alpha")
    run = create_run("sync-script/alpha", job_id="csweep0000000000000000001")
    wait_for(lambda: stubs.starts("alpha"), timeout=60, what="alpha to start")
    syncjobs.mark_failed("csweep0000000000000000001", "Timeout : job bloqué depuis plus de 30 minutes")
    assert wait_final(run).is_completed()
    assert syncjobs.get("csweep0000000000000000001")["status"] == "COMPLETED"


# --- reconciler -----------------------------------------------------------------------------------
def test_rows_of_crashed_or_vanished_runs_are_failed(worker, syncjobs, stubs):
    stubs.configure("gamma", sleep=0.1)
    run = create_run("sync-script/gamma")
    assert wait_final(run).is_completed()
    crashed_job = "creconcile000000000000001"
    syncjobs.mark_running(crashed_job, "gamma", str(run))  # a row that still says RUNNING

    async def crash():
        async with get_client() as client:
            await client.set_flow_run_state(run, Crashed(message="worker killed"), force=True)

    run_async(crash())
    syncjobs.mark_running("creconcilegone00000000001", "gamma", str(uuid.uuid4()))
    # This reconciler or the worker's own may get there first: the rows are what count.
    Reconciler(syncjobs).run_once()
    for job in (crashed_job, "creconcilegone00000000001"):
        assert syncjobs.get(job)["status"] == "FAILED"
    assert (
        "Crashed" in syncjobs.get(crashed_job)["error"]
        and "worker killed" in syncjobs.get(crashed_job)["error"]
    )
    assert "n'existe plus" in syncjobs.get("creconcilegone00000000001")["error"]


# --- alerts ---------------------------------------------------------------------------------------
@pytest.fixture
def webhook():
    with Webhook(plan=[(0, 500)]) as hook:  # the first attempt fails: retried
        os.environ["POLIGRAPH_ALERT_WEBHOOK_URL"] = hook.url
        reload_settings()
        yield hook
    os.environ.pop("POLIGRAPH_ALERT_WEBHOOK_URL")
    reload_settings()


def test_a_critical_script_failing_for_good_is_announced(syncjobs, stubs, webhook, prefect_api):
    from flows.sync_script import sync_script

    stubs.configure("vital", fail_times=9, stderr="upstream is down")
    stubs.configure("broken", fail_times=9)
    state = sync_script(script="vital", return_state=True)
    sync_script(script="broken", return_state=True)  # not critical: no alert
    assert state.is_failed()
    (body,) = wait_for(webhook.delivered, timeout=20, what="the alert")  # sent in the background
    assert body["event"] == "sync.failed" and body["script"] == "vital" and body["status"] == "FAILED"
    assert body["jobId"] == job_id_for_flow_run(str(state.state_details.flow_run_id))
    assert body["flowRunId"] == str(state.state_details.flow_run_id)
    assert "upstream is down" in body["error"] and body["timestamp"]


def test_no_webhook_configured_sends_nothing(syncjobs, stubs, prefect_api):
    from flows.alerts import alert_failure

    assert alert_failure("vital", "cjob", None, "boom") is None


# --- missed cron firings --------------------------------------------------------------------------
def late_slot(minutes_ago: int, tag: str, script: str = "gamma"):
    when = datetime.now(UTC) - timedelta(minutes=minutes_ago)
    return create_run(
        f"sync-script/{script}",
        state=Scheduled(scheduled_time=when),
        idempotency_key=f"scheduled test-{tag} {when.isoformat()}",
    )


def test_after_downtime_missed_firings_run_once_and_not_when_too_old(worker, syncjobs, stubs):
    stubs.configure("gamma", sleep=0.1)
    worker.stop()  # downtime: the firings below are missed while no worker runs the deployments
    recent = [late_slot(m, "once") for m in (50, 40, 30)]
    too_old = [late_slot(m, "old", script="flaky") for m in (180, 120)]
    worker.start()
    recent_states = [wait_final(run, timeout=180) for run in recent]
    old_states = [wait_final(run, timeout=180) for run in too_old]

    assert all(s.is_completed() for s in recent_states + old_states)
    assert stubs.starts("gamma") == 1  # once, for the newest slot
    assert not (recent_states[2].message or "").startswith("skipped")
    assert all("superseded" in (s.message or "") for s in recent_states[:2])
    assert stubs.starts("flaky") == 0  # the newest missed firing is older than the 1 h window
    assert "catch-up window" in (old_states[1].message or "")
    assert "superseded" in (old_states[0].message or "")


# --- a dead worker --------------------------------------------------------------------------------
def test_killing_the_worker_mid_run_leaves_a_failed_row_after_restart(worker, syncjobs, stubs, tsx_project):
    # the script: a child in its group, a double-forked daemon, then it becomes `npx tsx` running
    # a TypeScript script that spawns a `detached: true` child and stays
    pids_file = STUB_ROOT / "orphan.pids"
    stubs.configure(
        "orphan",
        grandchild=True,
        daemon=True,
        exec=["npx", "tsx", "detach.ts", str(pids_file), "stay"],
        cwd=str(tsx_project),
    )
    insert_pending(syncjobs, "ckilled000000000000000001", "orphan")
    create_run("sync-script/orphan", job_id="ckilled000000000000000001")
    wait_for(lambda: len(stubs.pids("orphan")) == 4, timeout=90, what="the script and its children to start")
    script_pids = stubs.pids("orphan") + [c["pid"] for c in stubs.events("orphan", "start")]
    run_files = [json.loads(p.read_text()) for p in (STATE / "home" / "runs").glob("*.json")]
    flow_pids = [f["pid"] for f in run_files if f["jobId"] == "ckilled000000000000000001"]
    for pid in [worker.proc.pid, *flow_pids]:  # the service dies: the worker and its flow process
        os.kill(pid, signal.SIGKILL)
    worker.proc.wait()
    assert syncjobs.get("ckilled000000000000000001")["status"] == "RUNNING"

    worker.start()
    row = wait_for(
        lambda: (r := syncjobs.get("ckilled000000000000000001"))["status"] == "FAILED" and r,
        timeout=60,
        what="the row to be failed after the restart",
    )
    assert "processus" in row["error"]
    wait_for(
        lambda: not [p for p in script_pids if process_alive(p)], timeout=20, what="orphan scripts killed"
    )


def test_runs_kept_waiting_for_a_slot_are_reported(prefect_api, syncjobs, caplog):
    from prefect.client.orchestration import get_client as get_sync_client
    from prefect.states import Cancelled

    from flows.sync_script import sync_script

    since = datetime.now(UTC) - timedelta(hours=2)
    with get_sync_client(sync_client=True) as client:
        run = client.create_flow_run(
            sync_script,
            parameters={"script": "gamma"},
            state=Scheduled(scheduled_time=since).model_copy(update={"name": "AwaitingConcurrencySlot"}),
        )
        try:
            with caplog.at_level("WARNING", logger="poligraph.reconcile"):
                waiting = Reconciler(syncjobs).slot_wait_pass(client)
        finally:
            client.set_flow_run_state(run.id, Cancelled(), force=True)
    assert str(run.id) in waiting
    assert f"flow run {run.id}" in caplog.text and "waits for a concurrency slot" in caplog.text


def test_cancelling_a_run_that_has_not_started_ends_it_at_once(prefect_api):
    from prefect.client.orchestration import get_client as get_sync_client

    from flows.run_states import cancel_flow_run
    from flows.sync_script import sync_script

    later = Scheduled(scheduled_time=datetime.now(UTC) + timedelta(hours=1))
    with get_sync_client(sync_client=True) as client:
        run = client.create_flow_run(sync_script, parameters={"script": "gamma"}, state=later)
        assert cancel_flow_run(client, str(run.id), "cancelled from the admin")
        assert client.read_flow_run(run.id).state.is_cancelled()  # not left Cancelling for ever


def test_a_run_whose_process_died_while_reporting_its_end_ends_as_its_row_says(prefect_api, syncjobs):
    """The run file lives until Prefect holds the final state: a process killed after its body
    wrote COMPLETED but before Prefect heard of it ends Completed, not Crashed; one killed with
    its row still RUNNING is Crashed and its row FAILED; one stopped while being cancelled ends
    Cancelled, its row "Annulé". Its file goes each time."""
    import subprocess
    import sys

    from prefect.client.orchestration import get_client as get_sync_client
    from prefect.states import Cancelling, Pending, Running

    from flows.sync_script import sync_script

    register = (
        "import sys, time; from flows.run_files import register; register(*sys.argv[1:]); time.sleep(60)"
    )
    runs_dir = STATE / "home" / "runs"
    ends = {}
    with get_sync_client(sync_client=True) as client:
        for ending in ("reported late", "mid-run", "being cancelled"):
            job_id = f"c{uuid.uuid4().hex[:24]}"
            insert_pending(syncjobs, job_id, "gamma")
            run = client.create_flow_run(sync_script, parameters={"script": "gamma", "job_id": job_id})
            client.set_flow_run_state(run.id, Pending())
            client.set_flow_run_state(run.id, Running())
            process = subprocess.Popen([sys.executable, "-c", register, str(run.id), job_id], env=os.environ)
            wait_for((runs_dir / f"{run.id}.json").exists, timeout=30, what="the run file")
            assert syncjobs.mark_running(job_id, "gamma", str(run.id))
            if ending == "reported late":
                syncjobs.mark_completed(job_id, {"flowRunId": str(run.id), "steps": []})
            if ending == "being cancelled":
                client.set_flow_run_state(run.id, Cancelling())
            process.kill()
            process.wait()
            ends[ending] = (run, job_id)
        Reconciler(syncjobs).dead_local_runs_pass(client)
        # (the worker's reconciler may have taken a file first: the outcome is the same)
        late, late_job = ends["reported late"]
        state = client.read_flow_run(late.id).state
        assert state.is_completed() and "died before it could report" in state.message
        assert syncjobs.get(late_job)["status"] == "COMPLETED"
        dead, dead_job = ends["mid-run"]
        assert client.read_flow_run(dead.id).state.is_crashed()
        row = syncjobs.get(dead_job)
        assert row["status"] == "FAILED" and "processus" in row["error"]
        stopped, stopped_job = ends["being cancelled"]
        assert client.read_flow_run(stopped.id).state.is_cancelled()
        row = syncjobs.get(stopped_job)
        assert row["status"] == "FAILED" and row["error"].startswith("Annulé")
    for run, _ in ends.values():
        assert not (runs_dir / f"{run.id}.json").exists()


# --- runs left Pending, Cancelling or Running by a process that died at the wrong moment ----------
def two_runs_of_a_one_slot_deployment(client, **parameters: str):
    """Two runs of a new deployment of sync-script that runs one at a time (the second queues)."""
    from prefect.client.schemas.objects import ConcurrencyLimitStrategy, ConcurrencyOptions

    from deployments.specs import BASE_TAG
    from flows.sync_script import sync_script

    deployment = client.create_deployment(
        client.create_flow(sync_script),
        f"stuck-{uuid.uuid4().hex[:8]}",
        tags=[BASE_TAG],
        concurrency_limit=1,
        concurrency_options=ConcurrencyOptions(collision_strategy=ConcurrencyLimitStrategy.ENQUEUE),
    )
    make = lambda: client.create_flow_run_from_deployment(  # noqa: E731
        deployment, parameters={"script": "gamma", **parameters}
    )
    return make(), make()


def propose_pending(client, run) -> str:
    from prefect.states import Pending

    return client.set_flow_run_state(run.id, Pending()).state.name


def test_runs_left_pending_or_cancelling_without_a_process_are_ended_and_free_their_slot(
    prefect_api, syncjobs
):
    """What a runner leaves when the server is down at the wrong moment: a run whose process died
    before its flow began stays Pending, one whose process it stopped stays Cancelling; each keeps
    its deployment's one slot (a lease of 5 min) and would stay unfinished for ever."""
    import subprocess

    from prefect.client.orchestration import get_client as get_sync_client
    from prefect.states import Cancelled, Cancelling, Running

    from deployments.specs import BASE_TAG
    from flows.run_files import PREFECT_RUN_ENV
    from flows.sync_script import sync_script

    reconciler = Reconciler(syncjobs)
    reconciler.settings = reconciler.settings.model_copy(update={"stuck_run_seconds": 0.0})
    job_id = f"c{uuid.uuid4().hex[:24]}"
    insert_pending(syncjobs, job_id, "gamma")
    with get_sync_client(sync_client=True) as client:
        unstarted, queued = two_runs_of_a_one_slot_deployment(client, job_id=job_id)
        cancelling, queued_too = two_runs_of_a_one_slot_deployment(client)
        alive, _ = two_runs_of_a_one_slot_deployment(client)
        assert propose_pending(client, unstarted) == "Pending" and propose_pending(client, alive) == "Pending"
        assert propose_pending(client, cancelling) == "Pending"
        client.set_flow_run_state(cancelling.id, Running())
        client.set_flow_run_state(cancelling.id, Cancelling())
        assert (
            propose_pending(client, queued)
            == propose_pending(client, queued_too)
            == "AwaitingConcurrencySlot"
        )
        # the process of `alive` still starts: found by the run id Prefect puts in its environment
        starting = subprocess.Popen(["sleep", "60"], env={**os.environ, PREFECT_RUN_ENV: str(alive.id)})
        try:
            ended = reconciler.stuck_runs_pass(client)
        finally:
            starting.kill()
            starting.wait()
        try:
            assert str(unstarted.id) in ended and str(cancelling.id) in ended
            assert str(alive.id) not in ended
            assert client.read_flow_run(unstarted.id).state.is_crashed()
            assert client.read_flow_run(cancelling.id).state.is_cancelled()
            assert client.read_flow_run(alive.id).state.is_pending()
            row = syncjobs.get(job_id)
            assert row["status"] == "FAILED" and "jamais démarré" in row["error"]
            # their slots are free: the queued runs are let through
            assert propose_pending(client, queued) == propose_pending(client, queued_too) == "Pending"
            # a run its runner could report Crashed before its flow began: the row never got its id
            crashed_job = f"c{uuid.uuid4().hex[:24]}"
            insert_pending(syncjobs, crashed_job, "gamma")
            crashed = client.create_flow_run(
                sync_script, parameters={"script": "gamma", "job_id": crashed_job}, tags=[BASE_TAG]
            )
            client.set_flow_run_state(
                crashed.id, Crashed(message="Process exited with status code: 1"), force=True
            )
            assert crashed_job in reconciler.states_pass(client)
            row = syncjobs.get(crashed_job)
            assert row["status"] == "FAILED" and "avant de démarrer : Process exited" in row["error"]
        finally:
            for run in (queued, queued_too, alive):
                client.set_flow_run_state(run.id, Cancelled(), force=True)


def test_a_run_left_running_before_its_body_began_is_crashed_on_a_second_look(prefect_api, syncjobs):
    """The service killed between Prefect's Running and the first line of the flow body: no run
    file, no process, and a run Running for ever that holds its deployment's one slot. Ended once a
    second pass still finds its row not naming it; a run whose body named it (its process on
    another machine) and one whose process is alive here are left alone."""
    import subprocess

    from prefect.client.orchestration import get_client as get_sync_client
    from prefect.states import Cancelled, Running

    from flows.run_files import PREFECT_RUN_ENV

    reconciler = Reconciler(syncjobs)
    reconciler.settings = reconciler.settings.model_copy(update={"stuck_run_seconds": 0.0})
    reconciler.unbegun_confirm_seconds = 3600.0
    jobs = {name: f"c{uuid.uuid4().hex[:24]}" for name in ("unbegun", "elsewhere", "late", "alive")}
    for job_id in jobs.values():
        insert_pending(syncjobs, job_id, "gamma")
    with get_sync_client(sync_client=True) as client:
        runs = {name: two_runs_of_a_one_slot_deployment(client, job_id=job) for name, job in jobs.items()}
        runs["no job id"] = two_runs_of_a_one_slot_deployment(client)
        for first, queued in runs.values():
            assert propose_pending(client, first) == "Pending"
            assert client.set_flow_run_state(first.id, Running()).state.is_running()
            assert propose_pending(client, queued) == "AwaitingConcurrencySlot"
        assert syncjobs.mark_running(jobs["elsewhere"], "gamma", str(runs["elsewhere"][0].id))
        alive = runs["alive"][0]
        starting = subprocess.Popen(["sleep", "60"], env={**os.environ, PREFECT_RUN_ENV: str(alive.id)})
        try:
            ours = {str(run.id) for pair in runs.values() for run in pair}
            assert not ours & set(reconciler.stuck_runs_pass(client))  # a first look decides nothing
            # the body of `late` names its run between the two looks (it waited out an outage)
            assert syncjobs.mark_running(jobs["late"], "gamma", str(runs["late"][0].id))
            reconciler.unbegun_confirm_seconds = 0.0
            ended = ours & set(reconciler.stuck_runs_pass(client))
        finally:
            starting.kill()
            starting.wait()
        try:
            assert ended == {str(runs[name][0].id) for name in ("unbegun", "no job id")}
            for name in ("unbegun", "no job id"):
                first, queued = runs[name]
                assert client.read_flow_run(first.id).state.is_crashed()
                assert propose_pending(client, queued) == "Pending"  # the slot is free
            row = syncjobs.get(jobs["unbegun"])
            assert row["status"] == "FAILED" and "jamais démarré" in row["error"]
            assert syncjobs.get(job_id_for_flow_run(str(runs["no job id"][0].id))) is None
            for name in ("elsewhere", "late", "alive"):
                assert client.read_flow_run(runs[name][0].id).state.is_running()
            assert syncjobs.get(jobs["alive"])["status"] == "PENDING"
            assert syncjobs.get(jobs["elsewhere"])["status"] == "RUNNING"
        finally:
            for first, queued in runs.values():
                for run in (first, queued):
                    client.set_flow_run_state(run.id, Cancelled(), force=True)


# --- one row never stops a pass -------------------------------------------------------------------
def test_a_row_the_database_refuses_to_write_leaves_the_others_reconciled(prefect_api, syncjobs, caplog):
    """A row the database refuses (here a trigger that raises for it, as a row holding what a
    column refuses would) is logged with its id at each pass it fails in, not every 2 s for ever,
    and every other row of the pass, and every other pass, still goes through."""
    import sqlalchemy as sa
    from prefect.client.orchestration import get_client as get_sync_client

    poisoned, good = "cpoisoned0000000000000001", "cpoisonedneighbour0000001"
    for job_id in (poisoned, good):  # both RUNNING with a flow run that no longer exists
        syncjobs.mark_running(job_id, "gamma", str(uuid.uuid4()))
    with syncjobs.engine.begin() as conn:
        conn.execute(
            sa.text(
                "CREATE OR REPLACE FUNCTION refuse_poisoned() RETURNS trigger AS $$ BEGIN "
                f"IF NEW.id = '{poisoned}' THEN RAISE EXCEPTION 'this row cannot be written'; END IF; "
                "RETURN NEW; END $$ LANGUAGE plpgsql"
            )
        )
        conn.execute(
            sa.text(
                'CREATE TRIGGER refuse_poisoned BEFORE UPDATE ON "SyncJob" '
                "FOR EACH ROW EXECUTE FUNCTION refuse_poisoned()"
            )
        )
    try:
        reconciler = Reconciler(syncjobs)
        with caplog.at_level("ERROR", logger="poligraph.reconcile"):
            with get_sync_client(sync_client=True) as client:
                reconciler.states_pass(client)
            passes = reconciler.run_once()  # the poisoned row fails again: the passes still run
        assert set(passes) == {"cancelled", "dead", "stuck", "failed", "waiting"}
        # (a worker's reconciler, if one runs in this module, may have failed it first: the row counts)
        assert syncjobs.get(good)["status"] == "FAILED" and "n'existe plus" in syncjobs.get(good)["error"]
        assert syncjobs.get(poisoned)["status"] == "RUNNING"
        said = [r.getMessage() for r in caplog.records if poisoned in r.getMessage()]
        assert said == [f"reconcile: SyncJob {poisoned} left for the next pass"]  # once, not per pass
    finally:
        with syncjobs.engine.begin() as conn:
            conn.execute(sa.text('DROP TRIGGER refuse_poisoned ON "SyncJob"'))
    # once the database takes it, the next pass ends it like the others
    with get_sync_client(sync_client=True) as client:
        reconciler.states_pass(client)
    assert syncjobs.get(poisoned)["status"] == "FAILED"
