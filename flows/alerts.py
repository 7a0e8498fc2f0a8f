"""Failure alerts for critical scripts: a JSON POST to POLIGRAPH_ALERT_WEBHOOK_URL, with retries.

The payload follows the app's `sync.failed` webhook (docs/poligraph-app.md) plus the ids operators
need:
    {"event": "sync.failed", "script", "jobId", "flowRunId", "status": "FAILED", "error",
     "timestamp", "url"}
No URL configured: nothing is sent. A failing webhook never fails the run.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime

import httpx

from deployments.settings import get_settings

log = logging.getLogger(__name__)
ALERT_ERROR_CHARS = 500  # as the app's webhook


def alert_failure(script: str, job_id: str, flow_run_id: str | None, error: str) -> bool:
    """POST the alert; True when the webhook accepted it."""
    settings = get_settings()
    if settings.alert_webhook_url is None:
        return False
    url = settings.alert_webhook_url.get_secret_value()
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
    delays = settings.alert_retry_delays
    for attempt in range(len(delays) + 1):
        try:
            response = httpx.post(url, json=payload, timeout=10)
            if response.status_code < 300:
                return True
            problem = f"HTTP {response.status_code}"
        except httpx.HTTPError as exc:
            problem = type(exc).__name__
        if attempt < len(delays):
            time.sleep(delays[attempt])  # backoff between attempts, not synchronisation
    log.warning("failure alert for %s (job %s) not delivered: %s", script, job_id, problem)
    return False
