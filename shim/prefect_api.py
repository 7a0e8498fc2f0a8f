"""The few calls of Prefect's REST API the shim makes, on one long-lived async HTTP client.

    GET  /health                                       is the server there?
    GET  /deployments/name/{flow}/{deployment}         a deployment's id
    POST /deployments/{id}/create_flow_run/bulk        up to 100 runs in one request and transaction
    POST /events                                       Prefect events (Event Feed, Automations)

Written on httpx rather than with Prefect's client, for three measured reasons
(docs/prefect.md, "Client"): its retry loop sleeps after a 429/503 (2 s, or the Retry-After)
even with PREFECT_CLIENT_MAX_RETRIES=0, where the dispatcher must hand the wait to its shared
backoff instead; its settings are process-wide, so a dispatcher with its own timeout had to
rebuild them (and the client, and a CSRF-token request) on every pass; and importing `prefect`
costs the shim ~30 MB of its ~100 MB idle budget. What the client does that matters here is
kept: PREFECT_API_URL, PREFECT_API_AUTH_STRING (Basic) or PREFECT_API_KEY (Bearer), the API
version header, and a CSRF token fetched only when a server with CSRF protection asks for one.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx

from deployments.prefect_rest import prefect_headers, retry_after_seconds
from shim.errors import ShimError
from shim.settings import ShimSettings

BULK_LIMIT = 100  # runs per bulk request (the server refuses more)
_DOWN_STATUS = {502, 504}  # a proxy in front of a server that is not there
_BUSY_STATUS = {429, 503}  # the server is there and says: later (503: e.g. SQLite locked)
PERMANENT_STATUS = {400, 403, 409, 422}  # Prefect refused these parameters: retrying won't help


class PrefectDown(ShimError):
    """Not there: refused connection, no connection in time, or a gateway saying it is gone."""

    retriable = True
    reason = "down"


class PrefectBusy(ShimError):
    """429/503, or no answer in time: come back later (`retry_after` seconds when the server
    said so; `timed_out`: the request was too big for the server's pace)."""

    retriable = True
    reason = "busy"

    def __init__(self, message: str, retry_after: float | None, timed_out: bool = False) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.timed_out = timed_out


class PrefectError(ShimError):
    """Any other error answer, with Prefect's status (4xx: this request is wrong; 500: a server
    bug); retriable unless Prefect refused the request itself (PERMANENT_STATUS). It answers no
    request of the shim's: `status` stays None."""

    reason = "error"

    def __init__(self, prefect_status: int, text: str) -> None:
        super().__init__(f"HTTP {prefect_status}: {text[:500]}")
        self.prefect_status = prefect_status
        self.retriable = prefect_status not in PERMANENT_STATUS


class DeploymentNotFound(PrefectError):
    """The deployment is not there (yet), or was redeployed under a new id: tried again later."""

    reason = "refused"


@dataclass(frozen=True)
class RunRequest:
    parameters: dict[str, Any]
    idempotency_key: str
    tags: list[str]
    labels: dict[str, str]


@dataclass(frozen=True)
class RunResult:
    flow_run_id: str | None  # None: not created, `error` says why
    error: str | None = None


def scheduled_state() -> dict[str, Any]:
    """What `create_flow_run_from_deployment` sends: Scheduled, to start now."""
    now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    return {"type": "SCHEDULED", "name": "Scheduled", "state_details": {"scheduled_time": now}}


class PrefectApi:
    """One httpx.AsyncClient for the life of the dispatcher (used from one event loop)."""

    def __init__(self, settings: ShimSettings, transport: httpx.AsyncBaseTransport | None = None) -> None:
        auth, key = settings.prefect_api_auth_string, settings.prefect_api_key
        headers = prefect_headers(
            auth.get_secret_value() if auth else None, key.get_secret_value() if key else None
        )
        headers["User-Agent"] = "poligraph-jobs-shim"
        self._client = httpx.AsyncClient(
            base_url=settings.prefect_api_url.rstrip("/") + "/",
            headers=headers,
            timeout=settings.prefect_timeout_seconds,
            transport=transport,
        )
        self._deployment_ids: dict[str, str] = {}
        self._csrf: dict[str, str] | None = None  # headers, once a server asked for them
        self.last_call_seconds = 0.0

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        started = time.perf_counter()
        try:
            response = await self._send(method, path, **kwargs)
            if response.status_code == 403 and "Invalid CSRF token" in response.text:
                await self._fetch_csrf_token()
                response = await self._send(method, path, **kwargs)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.ProtocolError) as exc:
            raise PrefectDown(f"{type(exc).__name__}: {exc}") from exc
        except (httpx.TimeoutException, httpx.NetworkError) as exc:
            # connected, then no answer in time: a server too busy for this request (maybe
            # done with it all the same: the idempotency keys make a retry safe)
            raise PrefectBusy(f"{type(exc).__name__}: {exc}", None, timed_out=True) from exc
        finally:
            self.last_call_seconds = time.perf_counter() - started
        if response.status_code in _BUSY_STATUS:
            raise PrefectBusy(
                f"HTTP {response.status_code}: {response.text[:200]}",
                retry_after_seconds(response.headers.get("Retry-After")),
            )
        if response.status_code in _DOWN_STATUS:
            raise PrefectDown(f"HTTP {response.status_code} from a gateway")
        if response.status_code >= 400:
            raise PrefectError(response.status_code, response.text)
        return response

    async def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = self._csrf if (self._csrf and method != "GET") else None
        return await self._client.request(method, path, headers=headers, **kwargs)

    async def _fetch_csrf_token(self) -> None:
        client_id = str(uuid.uuid4())
        reply = await self._client.get("csrf-token", params={"client": client_id})
        reply.raise_for_status()
        self._csrf = {"Prefect-Csrf-Token": reply.json()["token"], "Prefect-Csrf-Client": client_id}

    async def healthy(self) -> bool:
        try:
            await self._request("GET", "health")
        except (PrefectDown, PrefectBusy, PrefectError):
            return False
        return True

    async def deployment_id(self, full_name: str) -> str:
        """The id of `flow/deployment`, cached (forget it with `forget_deployment`)."""
        if full_name not in self._deployment_ids:
            try:
                reply = await self._request("GET", f"deployments/name/{full_name}")
            except PrefectError as exc:
                if exc.prefect_status == 404:
                    raise DeploymentNotFound(404, f"no deployment {full_name}") from None
                raise
            self._deployment_ids[full_name] = reply.json()["id"]
        return self._deployment_ids[full_name]

    def forget_deployment(self, full_name: str) -> None:
        self._deployment_ids.pop(full_name, None)

    async def create_runs(self, deployment_id: str, runs: list[RunRequest]) -> list[RunResult]:
        """Create up to BULK_LIMIT runs of one deployment, in order. A repeated idempotency key
        gives back the run it created before (Prefect: per flow, never expiring)."""
        body = [
            {
                "state": scheduled_state(),
                "parameters": run.parameters,
                "tags": run.tags,
                "labels": run.labels,
                "idempotency_key": run.idempotency_key,
            }
            for run in runs
        ]
        try:
            reply = await self._request(
                "POST", f"deployments/{deployment_id}/create_flow_run/bulk", json=body
            )
        except PrefectError as exc:
            if exc.prefect_status == 404:
                raise DeploymentNotFound(404, f"deployment {deployment_id} is gone") from None
            raise
        results = reply.json()["results"]
        if len(results) != len(runs):  # never seen; the caller retries the whole request
            raise PrefectError(reply.status_code, f"{len(results)} results for {len(runs)} runs")
        return [
            RunResult(str(r["flow_run_id"]), None)
            if r.get("status") == "CREATED" and r.get("flow_run_id")
            else RunResult(None, str(r.get("error") or "not created"))
            for r in results
        ]

    async def emit_events(self, events: list[dict[str, Any]]) -> None:
        await self._request("POST", "events", json=events)
