"""The headers Prefect's own client sends with every REST request, for the places that speak
Prefect's REST API on plain httpx (the shim's dispatcher, a step's concurrency slot)."""

from __future__ import annotations

import base64
import email.utils
from datetime import UTC, datetime

API_VERSION = "0.8.4"  # what Prefect 3's client sends (X-PREFECT-API-VERSION)


def prefect_headers(auth_string: str | None, api_key: str | None) -> dict[str, str]:
    """The API version, and PREFECT_API_AUTH_STRING as Basic or else PREFECT_API_KEY as Bearer."""
    headers = {"X-PREFECT-API-VERSION": API_VERSION}
    if auth_string:
        headers["Authorization"] = f"Basic {base64.b64encode(auth_string.encode()).decode()}"
    elif api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return headers


def retry_after_seconds(value: str | None) -> float | None:
    """A Retry-After header: seconds, or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())
