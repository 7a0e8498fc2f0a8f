"""Failure alerts for critical scripts: a JSON POST to POLIGRAPH_ALERT_WEBHOOK_URL, off the
critical path.

The payload follows the app's `sync.failed` webhook (docs/app-facts.md) plus the ids operators
need:
    {"event": "sync.failed", "script", "jobId", "flowRunId", "status": "FAILED", "error",
     "timestamp", "url"}
No URL configured: nothing is sent.

`alert_failure` only writes the alert to a spool, one file per alert in
`$POLIGRAPH_HOME/alerts/` (written atomically), and returns: a run, a hook or a reconciler pass
never waits for a webhook. An `AlertSender` thread delivers the spool, retrying each alert after
POLIGRAPH_ALERT_RETRY_DELAYS (tenacity); one that still fails moves to `alerts/undelivered/`.

* The long-lived reconciler process (`python -m scripts.reconcile`, one per worker) runs a sender for
  the whole spool, so an alert queued by a flow-run process that exited right after is not lost.
* A flow-run process that queued an alert sends its own at once and, when it exits, waits at
  most FLUSH_SECONDS for them; what is left goes to the long-lived sender.
* A file is locked (flock) while it is sent, so two processes never send it at once; the lock
  dies with its process. Delivery is at least once: a process killed between the webhook's answer
  and deleting the file leaves it to be sent again.
"""

from __future__ import annotations

import atexit
import fcntl
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_chain, wait_fixed

from deployments.settings import get_settings

log = logging.getLogger(__name__)
ALERT_ERROR_CHARS = 500  # as the app's webhook
REQUEST_TIMEOUT_SECONDS = 10.0
FLUSH_SECONDS = 3.0  # a flow-run process waits at most this at exit for its own alerts
SCAN_SECONDS = 1.0  # how often the long-lived sender looks for alerts other processes queued


def spool_dir() -> Path:
    return get_settings().home / "alerts"


def alert_failure(script: str, job_id: str, flow_run_id: str | None, error: str) -> Path | None:
    """Queue the alert (never blocks on the webhook); the spooled file, None when no URL is set."""
    settings = get_settings()
    if settings.alert_webhook_url is None:
        return None
    payload = {
        "event": "sync.failed",
        "script": script,
        "jobId": job_id,
        "flowRunId": flow_run_id,
        "status": "FAILED",
        "error": error[:ALERT_ERROR_CHARS],
        "timestamp": datetime.now(UTC).isoformat(),
        "url": f"{settings.admin_base_url.rstrip('/')}/admin/syncs",
    }
    path = spool(spool_dir(), payload)
    local_sender().send_soon(path)
    return path


def spool(directory: Path, payload: dict[str, Any]) -> Path:
    """Write one alert file atomically (a reader never sees half of it); oldest names sort first."""
    directory.mkdir(parents=True, exist_ok=True)
    name = f"{time.time_ns()}-{uuid.uuid4().hex}.json"
    partial = directory / f".{name}.partial"
    partial.write_text(json.dumps(payload))
    os.replace(partial, directory / name)
    return directory / name


class AlertSender:
    """Delivers spooled alerts from a daemon thread: every alert in the directory (`whole_spool`),
    or only those this process queued."""

    def __init__(
        self,
        directory: Path,
        url: str,
        retry_delays: Sequence[float],
        whole_spool: bool,
        post: Callable[[str, dict[str, Any]], httpx.Response] | None = None,
    ) -> None:
        self.directory = directory
        self.url = url
        self.retry_delays = list(retry_delays)
        self.whole_spool = whole_spool
        self.post = post or _post
        self._mine: set[Path] = set()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="alert-sender", daemon=True)

    def start(self) -> AlertSender:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def send_soon(self, path: Path) -> None:
        self._mine.add(path)
        self._wake.set()

    def flush(self, timeout: float) -> bool:
        """Wait (at most `timeout`) until the alerts this process queued are delivered or given up."""
        deadline = time.monotonic() + timeout
        while any(path.exists() for path in self._mine):
            if time.monotonic() >= deadline:
                return False
            self._stop.wait(0.05)
        return True

    def deliver_pending(self) -> int:
        """One pass over the spool; how many alerts were delivered."""
        if self.whole_spool:
            paths = sorted(self.directory.glob("*.json"))
        else:
            paths = sorted(p for p in self._mine if p.exists())
        return sum(self.deliver(path) for path in paths)

    def deliver(self, path: Path) -> bool:
        """Send one spooled alert unless another process is sending it; True when delivered."""
        try:
            handle = path.open("rb")
        except FileNotFoundError:  # delivered by someone else meanwhile
            self._mine.discard(path)
            return False
        with handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # another process is sending it
                return False
            if not _still_spooled(path, handle):  # sent and deleted between our open and lock
                self._mine.discard(path)
                return False
            delivered = self._send(path, json.loads(handle.read()))
            if delivered:
                path.unlink(missing_ok=True)
            else:
                undelivered = self.directory / "undelivered"
                undelivered.mkdir(exist_ok=True)
                os.replace(path, undelivered / path.name)
            self._mine.discard(path)
            return delivered

    def _send(self, path: Path, payload: dict[str, Any]) -> bool:
        waits = [wait_fixed(delay) for delay in self.retry_delays] or [wait_fixed(0)]
        retrying = Retrying(
            retry=retry_if_exception_type(httpx.HTTPError),
            stop=stop_after_attempt(len(self.retry_delays) + 1),
            wait=wait_chain(*waits),
            sleep=self._pause,
            reraise=True,
        )
        try:
            retrying(lambda: self.post(self.url, payload).raise_for_status())
            return True
        except httpx.HTTPError as exc:
            log.warning(
                "failure alert for %s (job %s) not delivered after %d attempts: %s; kept in %s",
                payload.get("script"),
                payload.get("jobId"),
                len(self.retry_delays) + 1,
                type(exc).__name__,
                self.directory / "undelivered" / path.name,
            )
            return False

    def _pause(self, seconds: float) -> None:
        self._stop.wait(seconds)  # backoff between attempts, cut short when the process stops

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                self.deliver_pending()
            except Exception:  # a broken file or a full disk must not stop the sender
                log.exception("alert sender pass failed")
            self._wake.wait(SCAN_SECONDS if self.whole_spool else None)


def _post(url: str, payload: dict[str, Any]) -> httpx.Response:
    return httpx.post(url, json=payload, timeout=REQUEST_TIMEOUT_SECONDS)


def _still_spooled(path: Path, handle: Any) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino
    except FileNotFoundError:
        return False


_senders: dict[tuple[Path, str, tuple[float, ...]], AlertSender] = {}
_senders_lock = threading.Lock()


def local_sender() -> AlertSender:
    """This process's sender for the current settings, started on first use; flushed (bounded)
    when the process exits."""
    settings = get_settings()
    assert settings.alert_webhook_url is not None, "no webhook URL configured"
    key = (spool_dir(), settings.alert_webhook_url.get_secret_value(), tuple(settings.alert_retry_delays))
    with _senders_lock:
        if key not in _senders:
            sender = _senders[key] = AlertSender(*key[:2], key[2], whole_spool=False).start()
            atexit.register(sender.flush, FLUSH_SECONDS)
        return _senders[key]


def start_spool_sender() -> AlertSender | None:
    """The sender of a long-lived process: the whole spool, including what exited runs left."""
    settings = get_settings()
    if settings.alert_webhook_url is None:
        return None
    url = settings.alert_webhook_url.get_secret_value()
    return AlertSender(spool_dir(), url, settings.alert_retry_delays, whole_spool=True).start()
