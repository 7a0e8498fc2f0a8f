"""What `POST /e/{key}` does, apart from any web framework: check the key, parse and validate the
body, decide what each event will do, and commit the events to the outbox before answering."""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable

from sqlalchemy import exc as sa_exc

from deployments.catalog import Catalog
from shim.events import EventError, parse_body
from shim.ids import event_ids
from shim.mapping import map_events
from shim.outbox import EventOutbox
from shim.settings import ShimSettings
from shim.text import printable
from shim.wire import Reply, accepted, refused, unavailable

log = logging.getLogger("poligraph.shim")
# The database is down or unreachable (not a bad statement: that would be a bug): the client
# gets a 5xx and sends the events again.
OUTAGE = (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError)


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
        outbox: EventOutbox,
        catalog: Callable[[], Catalog],
        on_pending: Callable[[], None] = lambda: None,
    ) -> None:
        self.outbox = outbox
        self.catalog = catalog
        self.on_pending = on_pending

    def receive(self, raw: bytes, seed: str | None) -> Reply:
        """Parse, map and store a request's events (all or none); blocking: run it off the loop."""
        try:
            events = parse_body(raw)
        except EventError as exc:
            log.info("request refused: %s", printable(str(exc)))
            return refused(str(exc))
        ids = event_ids(seed, len(events))
        actions = map_events(self.catalog(), [(event.name, event.data) for event in events])
        batch = list(zip(ids, events, actions, strict=True))
        if batch:
            try:
                self.outbox.record(batch)  # committed before the 200: nothing accepted is lost
            except OUTAGE as exc:
                log.warning("events not stored, the outbox is unavailable: %s", type(exc).__name__)
                return unavailable()
            self.on_pending()
        for event_id, event, action in batch:
            log.info(
                "event %s %s -> %s %s",
                event_id,
                printable(event.name),
                action.action,
                action.deployment or action.reason or "",
            )
        return accepted(ids)
