"""A script's global concurrency slot, held with a lease for the length of a step.

Prefect's `concurrency()` does this, and its lease renewal and events are used here; the increment
and the release are our own requests because of two measured facts (docs/prefect.md,
"Concurrency limits"): a Prefect server on SQLite answers 503 to a slot increment whenever another
write commits between the increment's read and its write (the task-run recorder writes at every
task start, so most steps met it), and Prefect's client sleeps 2 s after a 503 (2**attempt: the
server sends no Retry-After and no setting shortens it). Here a 503, 429 or failed connection is
retried after 10 ms, doubling up to 1 s (the write conflict behind a 503 is over by then: a first
wait of 50 ms was a sixth of a no-op step); a 423 (the slot is held) waits the server's
Retry-After, as Prefect does.
"""

from __future__ import annotations

import logging
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import httpx
from prefect.client.schemas.responses import MinimalConcurrencyLimitResponse
from prefect.concurrency._events import emit_concurrency_acquisition_events, emit_concurrency_release_events
from prefect.concurrency._leases import maintain_concurrency_lease
from prefect.settings import get_current_settings
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_delay, wait_exponential

from deployments.prefect_rest import prefect_headers, retry_after_seconds
from flows.errors import RunError

Logger = logging.Logger | logging.LoggerAdapter[Any]
LEASE_SECONDS = 60  # Prefect's minimum: the slot of a process killed outright frees within a minute
ACQUIRE_GIVE_UP_SECONDS = 60.0  # Prefect unreachable this long: the step fails (and is retried)
RELEASE_GIVE_UP_SECONDS = 5.0  # then the lease expires by itself
REQUEST_TIMEOUT_SECONDS = 10.0
FIRST_RETRY_SECONDS = 0.01  # then doubling, up to 1 s


class SlotHeld(RunError):  # RunError is an Exception, the base it had
    """423: another holder has the slot; come back after `wait` seconds (the server's Retry-After)."""

    retriable = True  # the slot frees when its holder ends

    def __init__(self, wait: float | None) -> None:
        super().__init__("HTTP 423")
        self.wait = wait


class SlotServerBusy(RunError):  # RunError is an Exception, the base it had
    """The Prefect server answered a slot call 429/503 (on SQLite: its database locked): try again
    soon. (Not the shim's `PrefectBusy`, which its dispatcher hands to a shared backoff.)"""

    retriable = True


class SlotLimitMissing(RunError, RuntimeError):
    """No such global concurrency limit: never run a script unprotected."""


TRANSIENT = (httpx.TransportError, SlotServerBusy)
RETRIED = (*TRANSIENT, SlotHeld)


@dataclass(frozen=True)
class Lease:
    id: UUID
    limits: list[MinimalConcurrencyLimitResponse]


def _wait(retry_state: RetryCallState) -> float:
    """The server's Retry-After on a 423, else exponential from 10 ms to 1 s."""
    exc = retry_state.outcome.exception() if retry_state.outcome else None
    if isinstance(exc, SlotHeld) and exc.wait is not None:
        return exc.wait
    return float(wait_exponential(multiplier=FIRST_RETRY_SECONDS, max=1.0)(retry_state))


class TransientFor:
    """Stop after `seconds` of transient errors in a row; a 423 wait (the slot is held) never
    stops: a step waits for its slot as long as it takes, as with Prefect's `concurrency()`."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.since: float | None = None  # when the current run of transient errors began

    def __call__(self, retry_state: RetryCallState) -> bool:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        now = retry_state.seconds_since_start or 0.0
        if not isinstance(exc, TRANSIENT):
            self.since = None
            return False
        self.since = now if self.since is None else self.since
        return now - self.since >= self.seconds


class SlotApi:
    """The increment and release requests on one HTTP client for the process (thread-safe)."""

    def __init__(self, client: httpx.Client) -> None:
        self.client = client

    @classmethod
    def from_prefect_settings(cls) -> SlotApi:
        """PREFECT_API_URL, with PREFECT_API_AUTH_STRING (Basic) or PREFECT_API_KEY (Bearer)."""
        api = get_current_settings().api
        if not api.url:
            raise RuntimeError("PREFECT_API_URL is not set: no server to take a concurrency slot from")
        headers = prefect_headers(
            api.auth_string.get_secret_value() if api.auth_string else None,
            api.key.get_secret_value() if api.key else None,
        )
        # no TLS over http: no SSL context to build (35 to 80 ms of CPU)
        verify: bool | ssl.SSLContext = api.url.startswith("https") and not api.tls_insecure_skip_verify
        if verify and api.ssl_cert_file:
            verify = ssl.create_default_context(cafile=api.ssl_cert_file)
        client = httpx.Client(
            base_url=api.url.rstrip("/") + "/",
            headers=headers,
            timeout=REQUEST_TIMEOUT_SECONDS,
            verify=verify,
        )
        return cls(client)

    def _post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        response = self.client.post(path, json=body)
        if response.status_code == 423:
            raise SlotHeld(retry_after_seconds(response.headers.get("Retry-After")))
        if response.status_code in (429, 503):
            raise SlotServerBusy(f"HTTP {response.status_code}")
        response.raise_for_status()
        return response

    def acquire(self, name: str, holder: dict[str, str] | None = None) -> Lease:
        """Wait for a slot of `name`; raises SlotLimitMissing, or the last transient error after
        ACQUIRE_GIVE_UP_SECONDS without an answer."""
        body: dict[str, Any] = {
            "names": [name],
            "slots": 1,
            "mode": "concurrency",
            "lease_duration": LEASE_SECONDS,
        }
        if holder:
            body["holder"] = holder
        for attempt in Retrying(
            retry=retry_if_exception_type(RETRIED),
            wait=_wait,
            stop=TransientFor(ACQUIRE_GIVE_UP_SECONDS),
            reraise=True,
        ):
            with attempt:
                reply = self._post("v2/concurrency_limits/increment-with-lease", body).json()
        limits = [MinimalConcurrencyLimitResponse.model_validate(limit) for limit in reply["limits"]]
        if not limits:
            raise SlotLimitMissing(f"concurrency limit {name!r} does not exist (serve and setup create it)")
        return Lease(UUID(reply["lease_id"]), limits)

    def release(self, lease: Lease) -> None:
        for attempt in Retrying(
            retry=retry_if_exception_type(TRANSIENT),
            wait=wait_exponential(multiplier=FIRST_RETRY_SECONDS, max=1.0),
            stop=stop_after_delay(RELEASE_GIVE_UP_SECONDS),
            reraise=True,
        ):
            with attempt:
                self._post("v2/concurrency_limits/decrement-with-lease", {"lease_id": str(lease.id)})


_api: SlotApi | None = None
_api_lock = threading.Lock()


def slot_api() -> SlotApi:
    """The process's SlotApi (one connection pool for every step of the run)."""
    global _api
    with _api_lock:
        if _api is None:
            _api = SlotApi.from_prefect_settings()
        return _api


@contextmanager
def held_slot(name: str, logger: Logger, holder: dict[str, str] | None = None) -> Iterator[None]:
    """Hold a slot of the global concurrency limit `name` for the block.

    The lease is renewed by Prefect's renewal loop while held; if renewal fails for good the block
    is cancelled (a slot we no longer own must not cover a running script). A release that cannot
    reach the server does not fail a block that succeeded: the lease expires within LEASE_SECONDS
    and the server's repossessor frees the slot.
    """
    lease = slot_api().acquire(name, holder)
    events = emit_concurrency_acquisition_events(lease.limits, 1)
    try:
        with maintain_concurrency_lease(lease.id, LEASE_SECONDS, raise_on_lease_renewal_failure=True):
            yield
    finally:
        give_back(name, lease, logger)
        emit_concurrency_release_events(lease.limits, 1, events)


def give_back(name: str, lease: Lease, logger: Logger) -> None:
    """Release a slot of `name`; when Prefect stays unreachable, say so and leave the lease to
    expire (within LEASE_SECONDS the server's repossessor frees the slot)."""
    try:
        slot_api().release(lease)
    except TRANSIENT as exc:
        logger.warning(
            "could not release the %s slot (Prefect unreachable: %s); its lease expires within %ss",
            name,
            type(exc).__name__,
            LEASE_SECONDS,
        )
