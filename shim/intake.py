"""What `POST /e/{key}` does, apart from any web framework: check the key, parse and validate the
body, decide what each event will do, and commit the events to the outbox before answering."""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable

import anyio

from deployments.catalog import Catalog
from shim.committer import Committer
from shim.db_errors import describe, is_unavailable
from shim.event_feed import EventFeed
from shim.events import EventError, parse_body
from shim.ids import event_ids
from shim.mapping import NOTHING, EventOutcome, EventRouter
from shim.metrics import ShimMetrics
from shim.outbox import DUPLICATE, EventBatch, Recorded
from shim.replies import Reply, accepted, refused, unavailable
from shim.settings import ShimSettings
from shim.text import printable

log = logging.getLogger("poligraph.shim")
# Bodies up to this size are parsed on the event loop (a few hundred microseconds at most: what
# the SDKs send is ~200 bytes). Larger ones are parsed in a thread, a few at a time
# (POLIGRAPH_SHIM_INTAKE_THREADS), which also bounds the memory their parsed events hold.
INLINE_BODY_BYTES = 16 * 1024


class KeyCheck:
    """Dev mode takes any non-empty key; key mode only the configured ones (secrets)."""

    def __init__(self, settings: ShimSettings) -> None:
        self.dev_mode = settings.dev_mode
        self._keys = [key.get_secret_value().encode() for key in settings.event_keys]

    def __call__(self, key: str) -> bool:
        if self.dev_mode:
            return bool(key)
        given = key.encode()
        # compare against every key, in constant time each, so timing says nothing
        return any([hmac.compare_digest(given, known) for known in self._keys])


class Intake:
    def __init__(
        self,
        committer: Committer,
        catalog: Callable[[], Catalog],
        metrics: ShimMetrics,
        event_feed: EventFeed,
        large_requests: int = 2,
    ) -> None:
        self.committer = committer
        self.catalog = catalog
        self.metrics = metrics
        self.event_feed = event_feed
        self._router: EventRouter | None = None
        self._large = anyio.CapacityLimiter(large_requests)

    def router(self) -> EventRouter:
        catalog = self.catalog()
        if self._router is None or self._router.catalog is not catalog:
            self._router = EventRouter(catalog)
        return self._router

    async def receive(self, raw: bytes, seed: str | None) -> Reply:
        """Parse, map and store a request's events (all or none); answers once they are committed."""
        if len(raw) <= INLINE_BODY_BYTES:
            return await self._store(self.prepare(raw, seed))
        async with self._large:
            return await self._store(await anyio.to_thread.run_sync(self.prepare, raw, seed))

    def prepare(self, raw: bytes, seed: str | None) -> EventBatch | Reply:
        """The request's events with their ids and actions, or the reply that refuses it."""
        try:
            events = parse_body(raw)
        except EventError as exc:
            log.info("request refused: %s", printable(str(exc)))
            self.refused(exc.reason, str(exc), exc.status)
            return refused(str(exc), exc.status)
        ids = event_ids(seed, len(events))
        actions = self.router().map_events([(event.name, event.data) for event in events])
        return list(zip(ids, events, actions, strict=True))

    def refused(self, reason: str, error: str, status: int) -> None:
        """A whole request refused (nothing stored): counted and announced."""
        self.metrics.requests_refused.labels(reason).inc()
        self.event_feed.request_refused(status, error)

    async def _store(self, batch: EventBatch | Reply) -> Reply:
        if isinstance(batch, Reply):
            return batch
        if not batch:
            return accepted([])
        try:
            recorded = await self.committer.store(batch)  # committed before the 200
        except Exception as exc:
            # The database is down, unreachable or cannot take writes (shim.db_errors; not a bad
            # statement: that would be a bug): the client gets a 503 and sends the events again.
            if not is_unavailable(exc):
                raise
            log.warning("events not stored, the outbox is unavailable: %s", describe(exc))
            self.refused("outbox_unavailable", "the event store is unavailable", 503)
            return unavailable()
        self._report(batch, recorded)
        return accepted([event_id for event_id, _, _ in batch])

    def _report(self, batch: EventBatch, recorded: list[Recorded]) -> None:
        for (event_id, event, action), stored in zip(batch, recorded, strict=True):
            if stored.status == DUPLICATE:
                outcome = EventOutcome.DUPLICATE
            elif action.reason:
                outcome = EventOutcome.REFUSED
            else:
                outcome = EventOutcome.ACCEPTED
            self.metrics.count_event(outcome, action)
            self.event_feed.event_stored(event_id, event, action, outcome)
            log.info(
                "event %s %s -> %s %s",
                event_id,
                printable(event.name),
                "duplicate" if stored.status == DUPLICATE else action.action,
                action.deployment or action.reason or "",
            )


__all__ = ["NOTHING", "Intake", "KeyCheck"]
