"""A run's artifacts in the Prefect UI: its live progress, and at the end its steps.

    <deployment>-progress   progress bar, from the same values and at the same rate as the row's
                            `progress` (step starts here, PROGRESS lines through the tracker);
                            100 when the run succeeds
    <deployment>-steps      table at the end of every run, success or failure: one row per step
    <deployment>-summary    markdown, continue-on-failure groups (sync-daily): failures, required
                            steps, skipped steps

Best effort, and never on the caller's thread: the step's output loop also enforces its
deadline, so one daemon thread per run makes the API calls, in order; progress updates coalesce
(the latest wins) and the end of the run waits at most FLUSH_SECONDS for what is queued. A
failed call is logged and dropped: no run or step ever fails for an artifact. The thread is
hand-written rather than a ThreadPoolExecutor because executor threads are joined at interpreter
exit, so one stuck on a dead API would hold the run's process; a daemon thread does not.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol
from uuid import UUID

from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.actions import ArtifactCreate, ArtifactUpdate
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

from deployments.plans import Plan
from deployments.safe_text import safe_text
from deployments.ui import PROGRESS, STEPS, SUMMARY, artifact_key
from flows import run_summary
from flows.progress import ProgressReport
from flows.step_results import StepResult

log = logging.getLogger(__name__)
FLUSH_SECONDS = 10.0


class ArtifactSink(Protocol):
    def progress(self, key: str, percent: float, description: str) -> None: ...
    def create(self, kind: str, key: str, description: str, data: Any) -> None: ...
    def close(self) -> None: ...


class PrefectArtifacts:
    """The Prefect API calls of one flow run's artifacts. They are made from the writer thread,
    which has no run context, so the flow run is given explicitly."""

    def __init__(self, flow_run_id: UUID) -> None:
        self.flow_run_id = flow_run_id
        self._client: SyncPrefectClient | None = None
        self._progress_id: UUID | None = None

    def client(self) -> SyncPrefectClient:
        if self._client is None:
            client = get_client(sync_client=True)
            client.__enter__()
            self._client = client
        return self._client

    def progress(self, key: str, percent: float, description: str) -> None:
        client = self.client()
        if self._progress_id is None:  # a retried flow run (same id) keeps its bar
            found = client.read_artifacts(
                artifact_filter=ArtifactFilter(
                    key=ArtifactFilterKey(any_=[key]),
                    flow_run_id=ArtifactFilterFlowRunId(any_=[self.flow_run_id]),
                ),
                limit=1,
            )
            self._progress_id = found[0].id if found else None
        if self._progress_id is None:
            self._progress_id = self._create(PROGRESS, key, description, percent)
        else:
            client.update_artifact(self._progress_id, ArtifactUpdate(data=percent, description=description))

    def create(self, kind: str, key: str, description: str, data: Any) -> None:
        self._create(kind, key, description, data)

    def _create(self, kind: str, key: str, description: str, data: Any) -> UUID:
        artifact = ArtifactCreate(
            type=kind, key=key, description=description, data=data, flow_run_id=self.flow_run_id
        )
        return self.client().create_artifact(artifact).id

    def close(self) -> None:
        if self._client is not None:
            self._client.__exit__(None, None, None)
            self._client = None


class ArtifactWriter:
    """One daemon thread that makes a sink's calls in order; progress calls coalesce."""

    def __init__(self, sink: ArtifactSink) -> None:
        self._sink = sink
        self._cond = threading.Condition()
        self._progress: tuple[str, float, str] | None = None
        self._created: list[tuple[str, str, str, Any]] = []
        self._busy = False
        self._closing = False
        self._failures = 0
        self._thread = threading.Thread(target=self._run, name="run-artifacts", daemon=True)
        self._thread.start()

    def progress(self, key: str, percent: float, description: str) -> None:
        with self._cond:
            self._progress = (key, percent, safe_text(description))
            self._cond.notify_all()

    def create(self, kind: str, key: str, description: str, data: Any) -> None:
        """`description`, and `data` when it is text (markdown, a table's JSON), go out as safe
        text: they carry steps' errors, so scripts' output."""
        data = safe_text(data) if isinstance(data, str) else data
        with self._cond:
            self._created.append((kind, key, safe_text(description), data))
            self._cond.notify_all()

    def finish(self) -> None:
        """No more calls: the thread writes what is queued, closes the sink and ends."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()

    def wait(self, timeout: float = FLUSH_SECONDS) -> bool:
        """Wait (at most `timeout` s) for the thread to end after `finish`; True when it did."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def close(self, timeout: float = FLUSH_SECONDS) -> bool:
        """`finish`, then `wait`: True when everything queued was written and the sink closed."""
        self.finish()
        return self.wait(timeout)

    def _idle(self) -> bool:
        return not self._busy and self._progress is None and not self._created

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._closing or not self._idle())
                if self._closing and self._idle():
                    break
                progress, self._progress = self._progress, None
                created, self._created = self._created, []
                self._busy = True
            if progress is not None:
                self._call(self._sink.progress, *progress)
            for item in created:
                self._call(self._sink.create, *item)
            with self._cond:
                self._busy = False
                self._cond.notify_all()
        self._call(self._sink.close)

    def _call(self, call: Callable[..., None], *args: Any) -> None:
        try:
            call(*args)
        except Exception:  # best effort: log the first failure in full, then briefly
            self._failures += 1
            log.warning("artifact write failed (%d so far)", self._failures, exc_info=self._failures == 1)


class RunArtifacts:
    """The artifacts of one run, fed by its steps and written through an ArtifactWriter."""

    def __init__(self, plan: Plan, writer: ArtifactWriter) -> None:
        self.plan = plan
        self.writer = writer
        self.results: list[StepResult] = []  # run_steps appends one per step, in order
        self.current = 0
        self.percent = 0

    def key(self, kind: str) -> str:
        return artifact_key(self.plan.name, kind)

    def share_done(self, steps: int) -> int:
        """What the row's progress is once `steps` steps are done (100 only on completion)."""
        return min(99, steps * 100 // max(len(self.plan.steps), 1))

    def step_started(self, index: int) -> None:
        self.current = index
        self._progress(self.share_done(index), run_summary.running(self.plan, index))

    def step_progress(self, index: int, percent: int, report: ProgressReport | None) -> None:
        self._progress(percent, run_summary.running(self.plan, index, report))

    def finish(self, error: BaseException | None) -> None:
        ended = run_summary.outcome(self.plan, self.results, self.current, error)
        # a failed run's bar stays where the row's progress stopped
        self._progress(100 if error is None else max(self.percent, self.share_done(len(self.results))), ended)
        rows = run_summary.step_rows(self.plan, self.results, self.current, error)
        description = run_summary.table_description(self.plan, rows, ended, error)
        self.writer.create("table", self.key(STEPS), description, json.dumps(rows))
        if self.plan.continue_on_failure:
            markdown = run_summary.failures_markdown(self.plan, self.results, self.current, error)
            self.writer.create("markdown", self.key(SUMMARY), description, markdown)

    def _progress(self, percent: int, description: str) -> None:
        self.percent = percent
        self.writer.progress(self.key(PROGRESS), percent, description)


_active: dict[str, RunArtifacts] = {}  # by SyncJob id: what the step's progress tracker knows
_finishing: dict[str, ArtifactWriter] = {}  # by flow-run id: writers the run's end hook waits for


@contextmanager
def run_artifacts(
    plan: Plan, job_id: str, flow_run_id: str, sink: ArtifactSink | None = None, flush_later: bool = False
) -> Iterator[list[StepResult]]:
    """For the block (the run's steps): live progress; after it, whatever happened, the summary.

    Yields the list the steps' results go into. The end waits for the summary to be written,
    unless `flush_later`: then the flow's end hook (`flush_artifacts`) waits, once the run's
    final state is set, so that the artifacts never hold the run's Completed up."""
    writer = ArtifactWriter(sink or PrefectArtifacts(UUID(flow_run_id)))
    run = RunArtifacts(plan, writer)
    _active[job_id] = run
    error: BaseException | None = None
    try:
        yield run.results
    except BaseException as exc:
        error = exc
        raise
    finally:
        _active.pop(job_id, None)
        try:
            run.finish(error)
        except Exception:  # never mask the run's own outcome
            log.warning("could not summarise the run of SyncJob %s", job_id, exc_info=True)
        if flush_later:
            writer.finish()
            _finishing[flow_run_id] = writer
        elif not writer.close():
            log.warning("artifacts of SyncJob %s: not all written within %ss", job_id, FLUSH_SECONDS)


def flush_artifacts(flow_run_id: str) -> None:
    """Wait (at most FLUSH_SECONDS) for the artifacts a run left to its end hook."""
    writer = _finishing.pop(flow_run_id, None)
    if writer is not None and not writer.wait():
        log.warning("artifacts of flow run %s: not all written within %ss", flow_run_id, FLUSH_SECONDS)


def step_started(job_id: str, index: int) -> None:
    if run := _active.get(job_id):
        run.step_started(index)


def step_progress(job_id: str, index: int, percent: int, report: ProgressReport | None) -> None:
    """A progress write of the step's tracker, mirrored to the progress artifact."""
    if run := _active.get(job_id):
        run.step_progress(index, percent, report)
