"""Triggering a job as the admin does: a PENDING SyncJob row, then the Inngest event with its
`jobId`, sent through the `inngest` SDK to the shim (INNGEST_BASE_URL, INNGEST_EVENT_KEY; dev
mode on http://127.0.0.1:8288 when no key is set). Names and flags are checked before anything
is created or sent.
"""

from __future__ import annotations

import difflib
import os
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from deployments.catalog import Catalog
from deployments.specs import DeploymentSpec, deployment_specs, spec_for_event
from deployments.syncjob import SyncJobRepository, job_id_for_flow_run
from scripts.errors import OperationError
from shim.mapping import RUN, map_event

if TYPE_CHECKING:
    import inngest

DEFAULT_SHIM = "http://127.0.0.1:8288"
SEND_FAILED = "Impossible d'envoyer l'événement Inngest"  # what the admin writes


class TriggerRefused(OperationError, ValueError):
    """An unknown name or a flag the catalog does not allow: nothing was created or sent."""

    exit_code = 2


class SendFailed(OperationError, RuntimeError):
    """The event could not be sent; the job's row was marked FAILED as the admin does."""


@dataclass(frozen=True)
class Request:
    event: str
    spec: DeploymentSpec
    data: dict[str, Any]  # limit / flags, as the event data carries them


def event_name(raw: str) -> str:
    """`sync:press` → sync/press, `discover:affairs` → sync/discover-affairs, `x` → sync/x.

    Fixes the app's own CLI, which turned `discover:affairs` into `discover/affairs`.
    """
    name = raw.strip()
    for prefix in ("sync:", "sync/"):
        if name.startswith(prefix):
            return "sync/" + name[len(prefix) :]
    return "sync/" + name.replace(":", "-").replace("/", "-")


def parse_flags(extra: list[str]) -> tuple[int | None, list[str]]:
    """`--limit=N` becomes the run's limit; every other --flag is passed on as is."""
    limit = None
    flags = []
    for item in extra:
        if item.startswith("--limit="):
            value = item.split("=", 1)[1]
            if not value.isdigit() or int(value) < 1:
                raise TriggerRefused(f"--limit must be a positive whole number, got {value!r}")
            limit = int(value)
        else:
            flags.append(item)
    return limit, flags


def check_request(catalog: Catalog, name: str, extra: list[str], flags: str) -> Request:
    """The event to send and its data, or TriggerRefused with the reason (closest names)."""
    event = event_name(name)
    spec = spec_for_event(catalog, event)
    if spec is None:
        known = sorted({e for s in deployment_specs(catalog) for e in s.events})
        close = difflib.get_close_matches(event, known, n=3, cutoff=0.5)
        hint = f" Closest: {', '.join(close)}." if close else ""
        raise TriggerRefused(f"Unknown job {name!r} (event {event}).{hint}")
    limit, passed = parse_flags(extra)
    all_flags = " ".join([*passed, *flags.split()])
    data: dict[str, Any] = {}
    if limit is not None:
        data["limit"] = limit
    if all_flags:
        data["flags"] = all_flags
    checked = map_event(catalog, event, data)
    if checked.action != RUN:
        raise TriggerRefused(checked.reason or "refused")
    return Request(event, spec, data)


def new_job_id() -> str:
    return job_id_for_flow_run(f"cli-{uuid.uuid4()}")


def inngest_client() -> inngest.Inngest:
    import inngest  # the SDK is only needed to send

    key = os.environ.get("INNGEST_EVENT_KEY")
    base = os.environ.get("INNGEST_BASE_URL") or os.environ.get("INNGEST_EVENT_API_BASE_URL")
    dev = os.environ.get("INNGEST_DEV", "")
    if not base and "://" in dev:
        base = dev
    return inngest.Inngest(
        app_id="poligraph",
        event_key=key,
        event_api_base_url=base or DEFAULT_SHIM,
        is_production=bool(key),
        signing_key=os.environ.get("INNGEST_SIGNING_KEY") or ("unused-for-sending" if key else None),
    )


def send_job(repository: SyncJobRepository, request: Request) -> str:
    """Create the PENDING row, send the event; return the job id (SendFailed when not sent)."""
    import inngest

    job_id = new_job_id()
    repository.create_pending(job_id, request.spec.row_script)
    try:
        inngest_client().send_sync(inngest.Event(name=request.event, data={"jobId": job_id, **request.data}))
    except Exception as exc:
        repository.mark_failed(job_id, SEND_FAILED)
        raise SendFailed(f"Could not send {request.event}: {exc} (SyncJob {job_id} marked FAILED)") from exc
    return job_id
