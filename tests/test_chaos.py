"""Chaos: a stream of events and scheduled runs while, at random moments (fixed seed), a shim, the
worker and the Prefect server are killed (-9) and the app's PostgreSQL is stopped; each
comes back shortly after (the processes run under scripts/supervisor.py, as with `make up`).

Production's shape on one machine, small: a Prefect server on its own PostgreSQL (concurrency
leases on disk, as production sets it), one worker of the poligraph pool running the runs, two shims sharing
one outbox in the app's PostgreSQL, which also holds SyncJob; stub scripts, one of which leaves a
child behind; a group scheduled every 15 s. After a bounded quiet period: every acknowledged
event has exactly one flow run, every SyncJob row ended (COMPLETED, or FAILED with a reason), no
script process is alive, no concurrency slot is held. The timeline of what was killed when is
printed (and kept in the test state directory).
"""

from __future__ import annotations

import os
import random
import signal
import sys
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from deployments.catalog import load_catalog
from deployments.settings import Settings
from deployments.specs import deployment_specs, script_limit_name
from deployments.syncjob import SyncJobRepository
from scripts.readiness import StackProbe, answers
from scripts.supervisor import Backoff, ChildSpec, Supervisor
from shim.outbox import open_outbox
from shim.settings import ShimSettings
from support.chaos import EventStream, Kill, Sent, Supervision, Timeline, plan_kills
from support.paths import REPO, STATE, TESTS
from support.pg_cluster import PostgresCluster, apply_sql
from support.polling import wait_for
from support.ports import free_port
from support.prefect_server import worker_command
from support.processes import process_alive
from support.stubs import Stubs
from support.syncjob import insert_pending

pytestmark = pytest.mark.slow

SEED = 20261129
CATALOG = TESTS / "chaos_catalog.yaml"
TARGETS = ["shim-a", "worker", "prefect", "app-db"]
CHAOS_WORKER = "chaos"
STREAM_SECONDS = 38.0
KILL_WINDOW = 26.0  # every kill within this many seconds of the stream's start
DB_DOWN = (6.0, 12.0)  # seconds the app's database stays stopped
EVENT_GAP = (3.0, 6.0)  # seconds between two sends of one stream
# Bound on the quiet period: a run left Pending is ended after 30 s (one left Running before its
# body began, after 30 s and a second look 12 s later), then the backlog drains
# (measured 54-57 s at a load average of 4-8 on 2 cores, 110 s at 7-10, more at 14).
SETTLE_SECONDS = 150.0
EVENTS = [
    ("sync/quick-a", "quick-a"),
    ("sync/quick-b", "quick-b"),
    ("sync/counted", "counted"),
    ("sync/spawner", "spawner"),
    ("sync/pair", "pair"),
]
STUBS = {
    "quick-a": {"sleep": 0.5},
    "quick-b": {"sleep": 1.0, "progress": [[1, 3], [2, 3], [3, 3]]},
    "counted": {"sleep": 2.0, "progress": [[1, 4], [2, 4], [3, 4], [4, 4]]},
    "spawner": {"sleep": 0.5, "grandchild": True},
    "tick-one": {"sleep": 0.3},
    "tick-two": {"sleep": 0.3},
}
FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def prefect_client(api: str) -> Any:
    from prefect.client.orchestration import SyncPrefectClient

    return SyncPrefectClient(api, httpx_settings={"timeout": 15})


class ChaosStack:
    """The processes, the databases and what the test needs to reach them."""

    def __init__(self, stubs: Stubs) -> None:
        self.stubs = stubs
        self.timeline = Timeline()
        self.tag = uuid.uuid4().hex
        self.home = STATE / f"chaos-{self.tag[:6]}"
        self.schema = f"chaos_{self.tag[:8]}"
        self.prefect_port, self.shim_ports = free_port(), {"shim-a": free_port(), "shim-b": free_port()}
        self.api = f"http://127.0.0.1:{self.prefect_port}/api"
        self.catalog = load_catalog(CATALOG)
        self.app_db = PostgresCluster()
        self.prefect_db = PostgresCluster()
        self.supervision: Supervision | None = None
        self.log = (STATE / "chaos-stack.log").open("a", buffering=1)

    def shim_url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.shim_ports[name]}"

    def start(self) -> None:
        for cluster in (self.app_db, self.prefect_db):
            cluster.start()
            cluster.create_database()
        apply_sql(self.app_db.url, TESTS / "sql" / "syncjob.sql")
        self.syncjobs = SyncJobRepository(sa.create_engine(self.app_db.url, pool_pre_ping=True))
        # the shims' tables exist before two shims start (each would migrate them at once)
        self.outbox = open_outbox(
            ShimSettings(schema_name=self.schema), Settings(database_url=self.app_db.url)
        )
        env = {
            **os.environ,
            "DATABASE_URL": self.app_db.url,
            "PREFECT_API_URL": self.api,
            "POLIGRAPH_CATALOG": str(CATALOG),
            "POLIGRAPH_HOME": str(self.home),
            "POLIGRAPH_SHIM_SCHEMA": self.schema,
            "POLIGRAPH_SHIM_MAX_BACKOFF_SECONDS": "2",
            "POLIGRAPH_SHIM_PREFECT_TIMEOUT_SECONDS": "3",
            "POLIGRAPH_CHAOS_TAG": self.tag,
            # as `make up` sets it (one machine): a run the server's death left Pending is ended
            # after 30 s, and the runs of its deployment queued behind it go on
            "POLIGRAPH_STUCK_RUN_SECONDS": "30",
            "PYTHONUNBUFFERED": "1",
        }
        prefect_db = self.prefect_db.url.replace("postgresql+psycopg://", "postgresql+asyncpg://")
        server_env = {
            **env,
            "PREFECT_HOME": str(self.home / "prefect"),
            "PREFECT_SERVER_DATABASE_CONNECTION_URL": prefect_db,
            "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": "prefect.server.concurrency.lease_storage.filesystem",
            # a run queued behind its deployment's one-at-a-time slot re-checks every 2 s
            "PREFECT_SERVER_DEPLOYMENTS_CONCURRENCY_SLOT_WAIT_SECONDS": "2",
        }
        python = sys.executable
        server = [python, "-m", "prefect", "server", "start", "--host", "127.0.0.1"]
        specs = [
            ChildSpec(
                "prefect", [*server, "--port", str(self.prefect_port), "--no-ui"], server_env, cwd=REPO
            ),
            ChildSpec(
                "worker",
                worker_command(CHAOS_WORKER),
                {**env, "POLIGRAPH_WORKER_DEPLOY": "true"},
                cwd=REPO,
                ready_to_start=lambda: answers(f"{self.api}/health"),
            ),
            *(
                ChildSpec(name, [python, "-m", "shim"], {**env, "POLIGRAPH_SHIM_PORT": str(port)}, cwd=REPO)
                for name, port in self.shim_ports.items()
            ),
        ]
        supervisor = Supervisor(
            specs,
            backoff=Backoff(first_seconds=1, max_seconds=4, stable_seconds=20),
            stop_grace_seconds=15,
            output=self.log,
        )
        self.supervision = Supervision(supervisor)
        self.supervision.start()
        names = [spec.full_name for spec in deployment_specs(self.catalog)]
        probe = StackProbe(
            self.api,
            self.shim_url("shim-a"),
            names,
            worker=("poligraph", CHAOS_WORKER),
            heartbeat_stale_seconds=90,
        )

        def ready() -> bool:
            started = supervisor.started_wall("worker") if supervisor.running("worker") else None
            since = datetime.fromtimestamp(started, UTC) if started else None
            return probe.check(since).ready and answers(f"{self.shim_url('shim-b')}/health")

        wait_for(ready, timeout=180, interval=0.5, what="the chaos stack to be ready")
        self.timeline.note("stack ready")

    @property
    def supervisor(self) -> Supervisor:
        assert self.supervision is not None
        return self.supervision.supervisor

    def act(self, kill: Kill) -> None:
        if kill.target == "app-db":
            # fast: every client is cut off at once, and what was committed stays committed (the
            # test cluster runs with synchronous_commit=off: an immediate stop would lose the
            # last commits, which a production server does not)
            self.app_db.stop("fast")
            self.timeline.note(f"app PostgreSQL stopped for {kill.down_for} s")
            return
        pid = self.supervisor.pid(kill.target)
        if pid is None:
            self.timeline.note(f"{kill.target} not running at its kill time (restarting): skipped")
            return
        os.kill(pid, signal.SIGKILL)
        self.timeline.note(f"kill -9 {kill.target} (pid {pid})")

    def restart_app_db(self) -> None:
        self.app_db.start()
        self.timeline.note("app PostgreSQL started again")

    def stop(self) -> None:
        if self.supervision is not None:
            self.supervision.stop()
        for cluster in (self.app_db, self.prefect_db):
            cluster.remove()
        self.log.close()


@pytest.fixture
def chaos(stubs):
    for script, spec in STUBS.items():
        stubs.configure(script, **spec)
    stack = ChaosStack(stubs)
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()
        (STATE / "chaos-timeline.txt").write_text(stack.timeline.render() + "\n")
        print("\n--- chaos timeline ---\n" + stack.timeline.render())


def run_chaos(stack: ChaosStack) -> list[Sent]:
    rng = random.Random(SEED)
    kills = plan_kills(rng, TARGETS, KILL_WINDOW, DB_DOWN)
    actions: list[tuple[float, str, Kill]] = []
    for kill in kills:
        actions.append((kill.at, "kill", kill))
        if kill.target == "app-db":
            actions.append((kill.at + kill.down_for, "restart", kill))
    stack.timeline.note(f"seed {SEED}; plan: " + ", ".join(f"{k.target}@{k.at}s" for k in kills))

    def insert(job_id: str, script: str) -> None:
        insert_pending(stack.syncjobs, job_id, script)

    streams = [
        EventStream(
            name,
            stack.shim_url(name),
            EVENTS,
            insert,
            random.Random(rng.random()),
            STREAM_SECONDS,
            EVENT_GAP,
            stack.timeline,
        )
        for name in stack.shim_ports
    ]
    stack.timeline.note("event streams start")
    start = time.monotonic()
    for stream in streams:
        stream.start()
    for at, what, kill in sorted(actions, key=lambda a: a[0]):
        time.sleep(max(0.0, start + at - time.monotonic()))  # the plan's clock, not a synchronisation
        if what == "kill":
            stack.act(kill)
        else:
            stack.restart_app_db()
    for stream in streams:
        stream.join(timeout=STREAM_SECONDS + 120)
    sent = [s for stream in streams for s in stream.sent]
    acknowledged = sum(s.acknowledged for s in sent)
    not_inserted = sum(stream.not_inserted for stream in streams)
    stack.timeline.note(
        f"event streams end: {acknowledged} acknowledged, {len(sent) - acknowledged} not acknowledged, "
        f"{not_inserted} not sent (the admin could not write its row)"
    )
    return sent


def stop_the_schedule(stack: ChaosStack) -> datetime:
    """Pause the ticker's schedule and drop its runs still planned in the future; return when.

    Prefect's scheduler may still insert a batch it planned before it saw the pause: the settle
    loop drops those too (`drop_planned`), and `problems` ignores any it has not dropped yet."""
    with prefect_client(stack.api) as client:
        ticker = client.read_deployment_by_name("sync-group/ticker")
        for schedule in ticker.schedules:
            client.update_deployment_schedule(ticker.id, schedule.id, active=False)
    paused_at = datetime.now(UTC)
    stack.timeline.note(f"ticker schedule paused, {drop_planned(stack, paused_at)} future runs dropped")
    return paused_at


def drop_planned(stack: ChaosStack, paused_at: datetime) -> int:
    """Delete the ticker's runs still Scheduled for after the pause; return how many."""
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterDeploymentId,
        FlowRunFilterExpectedStartTime,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    with prefect_client(stack.api) as client:
        ticker = client.read_deployment_by_name("sync-group/ticker")
        planned = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                deployment_id=FlowRunFilterDeploymentId(any_=[ticker.id]),
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED])),
                expected_start_time=FlowRunFilterExpectedStartTime(after_=paused_at + timedelta(seconds=3)),
            ),
            limit=200,
        )
        for run in planned:
            client.delete_flow_run(run.id)
    return len(planned)


def all_flow_runs(api: str) -> list[Any]:
    runs: list[Any] = []
    with prefect_client(api) as client:
        while batch := client.read_flow_runs(limit=200, offset=len(runs)):
            runs += batch
    return runs


def problems(stack: ChaosStack, sent: list[Sent], paused_at: datetime) -> list[str]:
    """Everything that is not (yet) as it must end; empty when the stack is settled and right."""
    found: list[str] = []
    outbox = {row["event_id"]: row for row in stack.outbox.events()}
    runs = all_flow_runs(stack.api)
    runs_by_job = Counter(run.parameters.get("job_id") for run in runs)
    states_of_job: dict[str, list[str]] = {}
    for run in runs:
        states_of_job.setdefault(run.parameters.get("job_id"), []).append(
            f"{run.id} {run.state.name if run.state else '?'}"
        )
    run_by_id = {str(run.id): run for run in runs}
    acknowledged = [s for s in sent if s.acknowledged]
    for s in acknowledged:
        for event_id in s.event_ids:
            row = outbox.get(event_id)
            if row is None:
                found.append(f"acknowledged event {event_id} ({s.event} {s.job_id}) is not in the outbox")
            elif row["status"] != "done" or not row["flow_run_id"]:
                found.append(
                    f"event {event_id} ({s.event} {s.job_id}) {row['status']} after {row['attempts']} "
                    f"attempts: {row['last_error']}"
                )
            else:
                run = run_by_id.get(row["flow_run_id"])
                key = f"{row['deployment']}:{row['pk']}"
                if run is None or run.idempotency_key != key or run.parameters.get("job_id") != s.job_id:
                    found.append(f"event {event_id}: flow run {row['flow_run_id']} is not its run ({key})")
        if runs_by_job[s.job_id] != 1:
            found.append(f"{s.event} {s.job_id}: {runs_by_job[s.job_id]} flow runs (want exactly 1)")
    for run in runs:
        if _planned_after(run, paused_at):
            continue
        if run.state is None or run.state.type.value not in FINAL:
            found.append(f"flow run {run.id} ({run.name}) is {run.state.name if run.state else 'stateless'}")
    unacknowledged = {s.job_id for s in sent if not s.acknowledged}
    for row in stack.syncjobs.recent(1000):
        status = row["status"]
        if status == "RUNNING" or (
            status == "PENDING" and (row["id"] not in unacknowledged or runs_by_job[row["id"]])
        ):
            runs_of_row = states_of_job.get(row["id"], [])
            found.append(f"SyncJob {row['id']} ({row['script']}) still {status}; flow runs: {runs_of_row}")
        elif status == "FAILED" and not (row["error"] or "").strip():
            found.append(f"SyncJob {row['id']} ({row['script']}) FAILED without a reason")
    pids = {event["pid"] for event in stack.stubs.events(event="start")}
    pids |= {pid for script in STUBS for pid in stack.stubs.pids(script)}
    found += [f"script process {pid} is still alive" for pid in sorted(pids) if process_alive(pid)]
    with prefect_client(stack.api) as client:
        for script in stack.catalog.scripts:
            limit = client.read_global_concurrency_limit_by_name(script_limit_name(script.id))
            if limit.active_slots:
                found.append(f"{limit.name} holds {limit.active_slots} slot(s)")
    return found


def _planned_after(run: Any, moment: datetime) -> bool:
    """A scheduled run not due before `moment` (a slot the paused schedule had already planned)."""
    return (
        run.state is not None
        and run.state.type.value == "SCHEDULED"
        and run.expected_start_time is not None
        and run.expected_start_time > moment + timedelta(seconds=3)
    )


def dump_runs(stack: ChaosStack, path: Any) -> None:
    """Every flow run with its deployment, job and state history, for a failure's post-mortem."""
    lines = []
    with prefect_client(stack.api) as client:
        names = {d.id: d.name for d in client.read_deployments(limit=50)}
        for run in sorted(
            all_flow_runs(stack.api), key=lambda r: r.created or datetime.min.replace(tzinfo=UTC)
        ):
            history = ", ".join(
                f"{s.timestamp:%H:%M:%S.%f}"[:-3] + f" {s.name}"
                for s in sorted(client.read_flow_run_states(run.id), key=lambda s: s.timestamp)
            )
            lines.append(
                f"{run.id} {names.get(run.deployment_id, '?')} job={run.parameters.get('job_id')} "
                f"key={run.idempotency_key}: {history}"
            )
    path.write_text("\n".join(lines) + "\n")


def flow_processes(stack: ChaosStack) -> list[str]:
    """For a failure's post-mortem: the flow-run processes still alive and the run files left."""
    import psutil

    from flows.process_tree import RUN_TAG, tag_of
    from flows.run_files import PREFECT_RUN_ENV

    found = []
    for process in psutil.process_iter(["pid", "status", "name"]):
        run_id = tag_of(process, PREFECT_RUN_ENV)
        if run_id and tag_of(process, "POLIGRAPH_CHAOS_TAG") == stack.tag:
            what = "script" if tag_of(process, RUN_TAG) else "process"
            found.append(f"{what} {process.pid} of flow run {run_id} alive ({process.info['status']})")
    found += [f"run file {path.name} left" for path in sorted((stack.home / "runs").glob("*.json"))]
    return found


def summary(stack: ChaosStack, sent: list[Sent]) -> str:
    rows = Counter(str(getattr(row["status"], "value", row["status"])) for row in stack.syncjobs.recent(1000))
    runs = Counter(run.state.type.value for run in all_flow_runs(stack.api) if run.state)
    unacknowledged_with_run = sum(
        1 for s in sent if not s.acknowledged and stack.syncjobs.get(s.job_id)["status"] != "PENDING"
    )
    return (
        f"SyncJob rows {dict(rows)}; flow runs {dict(runs)}; "
        f"{unacknowledged_with_run} unacknowledged sends ran anyway (stored, the answer lost)"
    )


def test_nothing_is_lost_duplicated_left_running_or_stuck_under_chaos(chaos):
    sent = run_chaos(chaos)
    wait_for(chaos.supervisor.all_running, timeout=60, what="every process back")
    paused_at = stop_the_schedule(chaos)
    settled_at: list[float] = []

    def settled() -> bool:
        if dropped := drop_planned(chaos, paused_at):
            chaos.timeline.note(f"{dropped} more runs the paused schedule had planned dropped")
        if problems(chaos, sent, paused_at):
            return False
        settled_at.append(time.monotonic())
        return True

    quiet_start = time.monotonic()
    try:
        wait_for(settled, timeout=SETTLE_SECONDS, interval=2, what="the stack to settle")
    except AssertionError:
        left = problems(chaos, sent, paused_at)
        chaos.timeline.note(f"NOT settled after {SETTLE_SECONDS:g} s: {len(left)} problem(s)")
        dump_runs(chaos, STATE / "chaos-runs.txt")
        left += flow_processes(chaos)
        pytest.fail(
            f"after the quiet period (runs: {STATE / 'chaos-runs.txt'}, processes: {STATE / 'chaos-stack.log'}):\n"
            + "\n".join(left[:40]),
            pytrace=False,
        )
    chaos.timeline.note(f"settled {settled_at[0] - quiet_start:.0f} s after the streams ended")
    chaos.timeline.note(summary(chaos, sent))
    assert sum(s.acknowledged for s in sent) >= 10  # the stream was a stream
