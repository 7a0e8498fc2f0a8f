"""Each event's fate as a Prefect event, so that it shows in Prefect's Event Feed and can drive
Automations (docs/prefect.md, "Events"):

    inngest.event.accepted     stored; a run will be created      resource inngest.event.<id>
    inngest.event.duplicate    its id was seen within the window  resource inngest.event.<id>
    inngest.event.refused      stored, starts no run (reason)     resource inngest.event.<id>
    inngest.event.dispatched   its flow run exists                related flow-run and deployment
    inngest.event.failed       Prefect refused its run (reason)
    inngest.request.refused    a whole request refused (400, 401, 413, 503...): nothing stored,
                               no event id; resource inngest.request.<uuid>

Best effort, and never on the request's path: intake only appends a small dict to a bounded
queue (MAX_QUEUED); the dispatcher's loop sends them in batches. While Prefect is unreachable
they wait in that queue and go out when it is back; past MAX_QUEUED the oldest are dropped,
counted, and logged once per batch of drops. The outbox, not this feed, is the record of what was
received. Prefect event ids are derived from the Inngest id and the kind (uuid5), so an event
sent twice is one event.
"""

from __future__ import annotations

import collections
import threading
import uuid
from datetime import UTC, datetime
from typing import Any

from shim.events import InboundEvent
from shim.mapping import EventAction
from shim.text import printable

MAX_QUEUED = 10_000
_NAMESPACE = uuid.UUID("0d6c7d4e-6f3a-4c55-9a58-7f1d2b9e4a31")  # this shim's Prefect event ids
MAX_TEXT = 500  # characters of an event name or a reason in a Prefect event


def event_resource(event_id: str) -> str:
    return f"inngest.event.{event_id}"


def _now() -> str:
    return datetime.now(UTC).isoformat()


class Announcer:
    """A bounded, thread-safe queue of Prefect events (appends from any thread)."""

    def __init__(self, enabled: bool = True, max_queued: int = MAX_QUEUED) -> None:
        self.enabled = enabled
        self._queue: collections.deque[dict[str, Any]] = collections.deque()
        self._max = max_queued
        self._lock = threading.Lock()
        self.dropped = 0  # since the last `take_dropped`

    def _put(self, event: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self._lock:
            if len(self._queue) >= self._max:
                self._queue.popleft()
                self.dropped += 1
            self._queue.append(event)

    def take(self, limit: int) -> list[dict[str, Any]]:
        with self._lock:
            return [self._queue.popleft() for _ in range(min(limit, len(self._queue)))]

    def give_back(self, events: list[dict[str, Any]]) -> None:
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
    def event_stored(self, event_id: str, event: InboundEvent, action: EventAction, outcome: str) -> None:
        payload: dict[str, Any] = {"name": printable(event.name, MAX_TEXT), "action": action.action}
        if action.job_id:
            payload["jobId"] = action.job_id
        if action.deployment:
            payload["deployment"] = action.deployment
        if action.reason:
            payload["reason"] = printable(action.reason, MAX_TEXT)
        self._put(self._event(f"inngest.event.{outcome}", event_id, event.name, payload))

    def dispatched(
        self, event_id: str, name: str, deployment: str, deployment_id: str | None, flow_run_id: str
    ) -> None:
        related = [
            {"prefect.resource.id": f"prefect.flow-run.{flow_run_id}", "prefect.resource.role": "flow-run"}
        ]
        if deployment_id:
            related.append(
                {
                    "prefect.resource.id": f"prefect.deployment.{deployment_id}",
                    "prefect.resource.role": "deployment",
                }
            )
        payload = {"name": name, "deployment": deployment, "flowRunId": flow_run_id}
        self._put(self._event("inngest.event.dispatched", event_id, name, payload, related))

    def failed(self, event_id: str, name: str, deployment: str, reason: str) -> None:
        payload = {"name": name, "deployment": deployment, "reason": printable(reason, MAX_TEXT)}
        self._put(self._event("inngest.event.failed", event_id, name, payload))

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
        payload: dict[str, Any],
        related: list[dict[str, str]] | None = None,
    ) -> dict[str, Any]:
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
