"""What "ready" means for the local stack, checked the way an operator's first commands use it.

Ready = the Prefect server answers `/api/health`, every catalog deployment can be read back by
name through the Prefect client (what `prefect deployment run flow/name` does first), the current
worker process has sent its pool a heartbeat (it does so once its fork server, deployments and
run services are up, so a run created now is picked up), and the shim answers `/health`.
`missing` names whatever is not there yet.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import httpx

PROBE_TIMEOUT_SECONDS = 5.0
NAMES_SHOWN = 3  # deployments named in a "missing" message; the rest are counted


def answers(url: str) -> bool:
    """True if GET url answers 200 within the probe timeout."""
    try:
        return httpx.get(url, timeout=PROBE_TIMEOUT_SECONDS).status_code == 200
    except httpx.HTTPError:
        return False


@dataclass(frozen=True)
class Readiness:
    missing: list[str]
    prefect_up: bool  # the Prefect server answered /api/health
    worker_heard: bool  # the current worker sent a heartbeat since it started, recently

    @property
    def ready(self) -> bool:
        return not self.missing


class StackProbe:
    def __init__(
        self,
        api_url: str,
        shim_url: str,
        deployment_names: Iterable[str],
        worker: tuple[str, str],
        heartbeat_stale_seconds: float,
    ) -> None:
        self.api_url = api_url
        self.shim_url = shim_url
        self.deployment_names = sorted(deployment_names)
        self.work_pool, self.worker_name = worker
        # A worker last heard longer ago than this is not working.
        self.heartbeat_stale = timedelta(seconds=heartbeat_stale_seconds)

    def prefect_healthy(self) -> bool:
        return answers(f"{self.api_url}/health")

    def check(self, worker_started: datetime | None) -> Readiness:
        """What is missing; `worker_started` is the start of the current worker process (None
        when it is not running)."""
        missing: list[str] = []
        worker_heard = False
        prefect_up = self.prefect_healthy()
        if not prefect_up:
            missing.append(f"the Prefect server ({self.api_url}/health)")
        else:
            unregistered, heard = self._deployments_and_worker(worker_started)
            if unregistered:
                missing.append(f"{_count(unregistered)} not registered yet ({_some(unregistered)})")
            if worker_started is None:
                missing.append("the worker (not running)")
            elif not heard:
                missing.append(f"the worker's first heartbeat in work pool {self.work_pool!r}")
            worker_heard = heard
        if not answers(f"{self.shim_url}/health"):
            missing.append(f"the shim ({self.shim_url}/health)")
        return Readiness(missing, prefect_up, worker_heard)

    def _deployments_and_worker(self, worker_started: datetime | None) -> tuple[list[str], bool]:
        """(names not registered, whether the worker was heard since worker_started, recently)."""
        from prefect.client.orchestration import SyncPrefectClient
        from prefect.exceptions import ObjectNotFound

        unregistered: list[str] = []
        try:
            with SyncPrefectClient(self.api_url, httpx_settings={"timeout": PROBE_TIMEOUT_SECONDS}) as client:
                for name in self.deployment_names:
                    try:
                        client.read_deployment_by_name(name)
                    except ObjectNotFound:
                        unregistered.append(name)
                try:
                    workers = client.read_workers_for_work_pool(self.work_pool)
                except ObjectNotFound:  # the worker creates its pool as it starts
                    workers = []
        except httpx.HTTPError:  # the server went away mid-check: nothing is known
            return list(self.deployment_names), False
        now = datetime.now(UTC)
        heard = any(
            worker_started is not None
            and w.name == self.worker_name
            and w.last_heartbeat_time is not None
            and w.last_heartbeat_time >= worker_started
            and now - w.last_heartbeat_time <= self.heartbeat_stale
            for w in workers
        )
        return unregistered, heard


def _count(names: list[str]) -> str:
    return f"{len(names)} deployment{'s' if len(names) != 1 else ''}"


def _some(names: list[str]) -> str:
    shown = ", ".join(names[:NAMES_SHOWN])
    return shown + (f", … {len(names) - NAMES_SHOWN} more" if len(names) > NAMES_SHOWN else "")
