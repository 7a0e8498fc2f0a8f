"""What "ready" means for the local stack, checked the way an operator's first commands use it.

Ready = the Prefect server answers `/api/health`, every catalog deployment can be read back by
name through the Prefect client (what `prefect deployment run flow/name` does first) and has
been polled by the current serving process (so a run created now is picked up), and the shim
answers `/health`. `missing()` names whatever is not there yet.
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
    serving_polls: bool  # the serving process polled for every deployment since it started

    @property
    def ready(self) -> bool:
        return not self.missing


class StackProbe:
    def __init__(
        self, api_url: str, shim_url: str, deployment_names: Iterable[str], poll_stale_seconds: float
    ) -> None:
        self.api_url = api_url
        self.shim_url = shim_url
        self.deployment_names = sorted(deployment_names)
        # A deployment last polled longer ago than this is not being served.
        self.poll_stale = timedelta(seconds=poll_stale_seconds)

    def prefect_healthy(self) -> bool:
        return answers(f"{self.api_url}/health")

    def check(self, serve_started: datetime | None) -> Readiness:
        """What is missing; `serve_started` is the start of the current serving process (None
        when it is not running)."""
        missing: list[str] = []
        serving_polls = False
        prefect_up = self.prefect_healthy()
        if not prefect_up:
            missing.append(f"the Prefect server ({self.api_url}/health)")
        else:
            unregistered, unpolled = self._deployments(serve_started)
            if unregistered:
                missing.append(f"{_count(unregistered)} not registered yet ({_some(unregistered)})")
            if serve_started is None:
                missing.append("the serving process (not running)")
            elif unpolled:
                missing.append(
                    f"{_count(unpolled)} not yet polled by the serving process ({_some(unpolled)})"
                )
            serving_polls = serve_started is not None and not unpolled and not unregistered
        if not answers(f"{self.shim_url}/health"):
            missing.append(f"the shim ({self.shim_url}/health)")
        return Readiness(missing, prefect_up, serving_polls)

    def _deployments(self, serve_started: datetime | None) -> tuple[list[str], list[str]]:
        """(names not registered, names not polled since serve_started and recently)."""
        from prefect.client.orchestration import SyncPrefectClient
        from prefect.exceptions import ObjectNotFound

        unregistered: list[str] = []
        unpolled: list[str] = []
        now = datetime.now(UTC)
        try:
            with SyncPrefectClient(self.api_url, httpx_settings={"timeout": PROBE_TIMEOUT_SECONDS}) as client:
                for name in self.deployment_names:
                    try:
                        deployment = client.read_deployment_by_name(name)
                    except ObjectNotFound:
                        unregistered.append(name)
                        continue
                    polled = deployment.last_polled
                    if (
                        serve_started is None
                        or polled is None
                        or polled < serve_started
                        or now - polled > self.poll_stale
                    ):
                        unpolled.append(name)
        except httpx.HTTPError:  # the server went away mid-check: nothing is known
            return list(self.deployment_names), list(self.deployment_names)
        return unregistered, unpolled


def _count(names: list[str]) -> str:
    return f"{len(names)} deployment{'s' if len(names) != 1 else ''}"


def _some(names: list[str]) -> str:
    shown = ", ".join(names[:NAMES_SHOWN])
    return shown + (f", … {len(names) - NAMES_SHOWN} more" if len(names) > NAMES_SHOWN else "")
