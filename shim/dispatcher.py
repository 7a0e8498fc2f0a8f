"""Turn pending events into flow runs, exactly once, whatever fails or restarts in between.

Each due event is handled inside a transaction that locks its row. The flow run is created with
the idempotency key `<flow/deployment>:<event row pk>`: Prefect scopes keys per flow, not per
deployment (docs/prefect.md, "Idempotency keys"), and the row pk is unique per accepted event,
so if the shim dies after Prefect created the run but before the row says so, the next attempt
gets the same run back instead of a second one. Errors from Prefect postpone the event with
exponential backoff.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any
from uuid import UUID

import httpx
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.exceptions import ObjectNotFound
from prefect.settings import (
    PREFECT_API_REQUEST_TIMEOUT,
    PREFECT_CLIENT_MAX_RETRIES,
    temporary_settings,
)
from sqlalchemy.engine import Connection

from deployments.syncjob import syncjob_repository
from shim.mapping import FAIL_JOB, RUN
from shim.outbox import DONE, FAILED, EventOutbox
from shim.settings import ShimSettings

log = logging.getLogger("poligraph.shim.dispatcher")
_PERMANENT_HTTP = {400, 403, 409, 422}  # Prefect refused these parameters: retrying won't help


class Dispatcher:
    def __init__(self, outbox: EventOutbox, settings: ShimSettings) -> None:
        self.outbox = outbox
        self.settings = settings
        self.wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._deployment_ids: dict[str, Any] = {}

    # --- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="shim-dispatcher", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10) -> None:
        self._stop.set()
        self.wake.set()
        if self._thread:
            self._thread.join(timeout)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                busy = self.dispatch_due()
            except Exception:  # the database may be down too: try again later
                log.exception("dispatch pass failed")
                busy = 0
            if not busy:
                self.wake.wait(self.settings.poll_seconds)
                self.wake.clear()

    # --- one pass -------------------------------------------------------------------------
    def dispatch_due(self) -> int:
        """Handle the events that are due now; return how many were handled (ok or postponed).

        One event per transaction: on PostgreSQL its row stays locked (SKIP LOCKED lets other
        shims pass it by) while Prefect is called; on SQLite the write lock is taken only for
        the final update, so a slow Prefect never blocks the Event API's inserts.
        """
        seen: list[str] = []  # each event at most once per pass, even when due again at once
        with ExitStack() as stack:
            # Our own backoff replaces the client's (up to a minute of silent retries per call),
            # and a slow Prefect costs one request timeout, not the default 60 s.
            stack.enter_context(
                temporary_settings(
                    updates={
                        PREFECT_CLIENT_MAX_RETRIES: 0,
                        PREFECT_API_REQUEST_TIMEOUT: self.settings.prefect_timeout_seconds,
                    }
                )
            )
            clients: list[SyncPrefectClient] = []

            def client() -> SyncPrefectClient:  # opened on first need, inside the error handling
                if not clients:
                    clients.append(stack.enter_context(get_client(sync_client=True)))
                return clients[0]

            while len(seen) < self.settings.batch_size and not self._stop.is_set():
                with self.outbox.engine.begin() as conn:
                    rows = self.outbox.claim_due(conn, 1, exclude=seen)
                    if not rows:
                        break
                    seen.append(rows[0]["pk"])
                    self._handle(conn, client, rows[0])
        return len(seen)

    def _handle(self, conn: Connection, client: Callable[[], SyncPrefectClient], row: dict[str, Any]) -> None:
        if row["action"] == FAIL_JOB:
            self._fail_job(row["job_id"], row["reason"])
            self.outbox.finish(conn, row["pk"], DONE)
            return
        if row["action"] != RUN:  # pragma: no cover - only pending rows get here
            self.outbox.finish(conn, row["pk"], DONE)
            return
        try:
            flow_run_id = self._create_run(client(), row)
        except httpx.HTTPStatusError as exc:
            if exc.response.status_code in _PERMANENT_HTTP:
                reason = f"Prefect refused the run of {row['deployment']}: {exc.response.text[:500]}"
                self._fail_job(row["job_id"], reason)
                self.outbox.finish(conn, row["pk"], FAILED, last_error=reason)
                return
            self._postpone(conn, row, exc)
        except Exception as exc:  # Prefect down, slow, or the deployment not there yet
            self._postpone(conn, row, exc)
        else:
            self.outbox.finish(conn, row["pk"], DONE, flow_run_id=str(flow_run_id), last_error=None)
            log.info("event %s (%s) -> flow run %s", row["event_id"], row["name"], flow_run_id)

    def _create_run(self, client: SyncPrefectClient, row: dict[str, Any]) -> UUID:
        name = row["deployment"]
        if name not in self._deployment_ids:
            self._deployment_ids[name] = client.read_deployment_by_name(name).id
        try:
            run = client.create_flow_run_from_deployment(
                self._deployment_ids[name],
                parameters=row["parameters"] or {},
                idempotency_key=f"{name}:{row['pk']}",
                tags=["inngest", f"event:{row['name']}"],
            )
        except ObjectNotFound:
            self._deployment_ids.pop(name, None)  # redeployed under a new id: look it up again
            raise
        return run.id

    def _postpone(self, conn: Connection, row: dict[str, Any], exc: Exception) -> None:
        attempts = row["attempts"] + 1
        delay = min(self.settings.max_backoff_seconds, 0.5 * 2 ** min(attempts, 16))
        error = f"{type(exc).__name__}: {exc}"
        log.warning(
            "event %s (%s): attempt %d failed, next in %.1fs: %s",
            row["event_id"],
            row["name"],
            attempts,
            delay,
            error,
        )
        self.outbox.postpone(conn, row["pk"], attempts, delay, error)

    @staticmethod
    def _fail_job(job_id: str | None, reason: str | None) -> None:
        # Only a row still PENDING: a refused event never rewrites a row that started or ended.
        if job_id:
            syncjob_repository().fail_pending(job_id, reason or "event refused")
