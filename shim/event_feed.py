"""Each event's fate as one Prefect event, so that it shows in Prefect's Event Feed and can drive
Automations (docs/prefect.md, "Events"); the resource is `inngest.event.<id>`:

    inngest.event.accepted     its flow run was created; related: the flow run, the deployment
    inngest.event.duplicate    its id was seen within the dedupe window: no run
    inngest.event.refused      no run (reason: no flow handles it, bad data, or Prefect refused
                               the run's parameters)
    inngest.request.refused    a whole request refused (400, 401, 408, 413, 503): nothing stored,
                               no event id; resource inngest.request.<uuid>, status and error

Best effort, and never on the request's path: intake and the dispatcher only append a small dict
to a bounded queue (MAX_QUEUED); the dispatcher's loop sends them in batches when no backlog
waits for its runs (on Prefect's SQLite each batch means writes competing with the runs'
creation). While Prefect is unreachable they wait in the queue and go out when it is back; past
MAX_QUEUED the oldest are dropped, counted (`poligraph_shim_prefect_events_total{result=
"dropped"}`) and logged. The outbox, not this feed, is the record of what was received. Prefect
event ids are derived from the Inngest id and the kind (uuid5): an event sent twice is one event.
"""

from __future__ import annotations

import collections
import threading
import uuid
from datetime import UTC, datetime

from shim.events import InboundEvent
from shim.jsonvalues import JSONObject
from shim.mapping import RUN, EventAction, EventOutcome
from shim.outbox import ClaimedEvent
from shim.text import printable

MAX_QUEUED = 20_000  # ~1 KB each: a 10,000-event burst fits
_NAMESPACE = uuid.UUID("0d6c7d4e-6f3a-4c55-9a58-7f1d2b9e4a31")  # this shim's Prefect event ids
MAX_TEXT = 500  # characters of an event name or a reason in a Prefect event


def event_resource(event_id: str) -> str:
    return f"inngest.event.{event_id}"


def _now() -> str:
    return datetime.now(UTC).isoformat()


class EventFeed:
    """A bounded, thread-safe queue of Prefect events (appends from any thread)."""

    def __init__(self, enabled: bool = True, max_queued: int = MAX_QUEUED) -> None:
        self.enabled = enabled
        self._queue: collections.deque[JSONObject] = collections.deque()
        self._max = max_queued
        self._lock = threading.Lock()
        self.dropped = 0  # since the last `take_dropped`

    def _put(self, event: JSONObject) -> None:
        if not self.enabled:
            return
        with self._lock:
            if len(self._queue) >= self._max:
                self._queue.popleft()
                self.dropped += 1
            self._queue.append(event)

    def take(self, limit: int) -> list[JSONObject]:
        with self._lock:
            return [self._queue.popleft() for _ in range(min(limit, len(self._queue)))]

    def give_back(self, events: list[JSONObject]) -> None:
        """Events that could not be sent: first in line again (the oldest dropped past the bound)."""
        with self._lock:
            room = self._max - len(self._queue)
            kept = events[-room:] if room > 0 else []
            self.dropped += len(events) - len(kept)
            self._queue.extendleft(reversed(kept))

    def take_dropped(self) -> int:
        with self._lock:
            dropped, self.dropped = self.dropped, 0
            return dropped

    def __len__(self) -> int:
        return len(self._queue)

    # --- what happens to events -------------------------------------------------------------
    def event_stored(
        self, event_id: str, event: InboundEvent, action: EventAction, outcome: EventOutcome
    ) -> None:
        """A stored event that starts no run (duplicate, refused); accepted ones are announced
        with their run, by `run_created`."""
        if outcome == EventOutcome.ACCEPTED:
            return
        payload: JSONObject = {"name": printable(event.name, MAX_TEXT), "action": action.action}
        if action.job_id:
            payload["jobId"] = action.job_id
        if action.deployment:
            payload["deployment"] = action.deployment
        if action.reason:
            payload["reason"] = printable(action.reason, MAX_TEXT)
        self._put(self._event(f"inngest.event.{outcome}", event_id, event.name, payload))

    def run_created(self, row: ClaimedEvent, deployment_id: str | None, flow_run_id: str) -> None:
        """An event's flow run exists (`row`: the event's outbox row)."""
        related = [_related("flow-run", flow_run_id)]
        if deployment_id:
            related.append(_related("deployment", deployment_id))
        payload = {
            "name": row.name,
            "action": RUN,
            "deployment": row.deployment,
            "flowRunId": flow_run_id,
        }
        if row.job_id:
            payload["jobId"] = row.job_id
        self._put(self._event("inngest.event.accepted", row.event_id, row.name, payload, related))

    def run_refused(self, row: ClaimedEvent, reason: str) -> None:
        """Prefect refused the run of a stored event (its parameters broke the deployment's schema)."""
        payload = {
            "name": row.name,
            "deployment": row.deployment,
            "reason": printable(reason, MAX_TEXT),
        }
        if row.job_id:
            payload["jobId"] = row.job_id
        self._put(self._event("inngest.event.refused", row.event_id, row.name, payload))

    def request_refused(self, status: int, error: str) -> None:
        request_id = str(uuid.uuid4())
        self._put(
            {
                "id": request_id,
                "occurred": _now(),
                "event": "inngest.request.refused",
                "resource": {"prefect.resource.id": f"inngest.request.{request_id}"},
                "payload": {"status": status, "error": printable(error, MAX_TEXT)},
            }
        )

    @staticmethod
    def _event(
        kind: str,
        event_id: str,
        name: str,
        payload: JSONObject,
        related: list[dict[str, str]] | None = None,
    ) -> JSONObject:
        return {
            "id": str(uuid.uuid5(_NAMESPACE, f"{event_id}/{kind}")),
            "occurred": _now(),
            "event": kind,
            "resource": {
                "prefect.resource.id": event_resource(event_id),
                "prefect.resource.name": printable(name, MAX_TEXT),
            },
            "related": related or [],
            "payload": payload,
        }


def _related(role: str, object_id: str) -> dict[str, str]:
    return {"prefect.resource.id": f"prefect.{role}.{object_id}", "prefect.resource.role": role}
