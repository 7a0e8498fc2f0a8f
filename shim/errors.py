"""The root of the intake layer's exceptions: what a caller needs to know of any of them.

    status     the HTTP status a request refused with it answers (None: it answers no request)
    retriable  whether the same thing, tried again later, may succeed (a full shim, a Prefect
               that is down or busy), or never will (a bad body, a request Prefect refuses)
    reason     the label it is counted under: `requests_refused{reason}` for a refused request,
               `dispatch_errors{kind}` for a Prefect request of the dispatcher

Subclasses set them as class attributes, or per instance where one class covers several cases
(`shim.body.BodyRefused`, `shim.prefect_api.PrefectError`). Their messages are unchanged: they are
the texts clients and logs show.
"""

from __future__ import annotations


class ShimError(Exception):
    """Any error the shim raises on purpose (not a bug, not a database outage: `shim.db_errors`)."""

    status: int | None = None
    retriable: bool = False
    reason: str = "error"
