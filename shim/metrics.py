"""The shim's Prometheus metrics (`GET /metrics`), one registry per app.

Counters and histograms are updated where things happen (a label set is a fixed, small
vocabulary: nothing a client sends becomes a label, so their memory is bounded); the outbox
gauges are computed on scrape by one small query. Nothing secret is exported: no key, no URL.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from deployments.syncjob import utcnow
from shim.admission import Admission
from shim.mapping import EventAction, EventOutcome

log = logging.getLogger("poligraph.shim.metrics")
PREFIX = "poligraph_shim"
# seconds from an event's arrival to its flow run, and of one Prefect request
_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)


def refusal_reason(action: EventAction) -> str:
    """A refused event's reason as a label: one of a few words, never the text itself."""
    reason = action.reason or ""
    if reason.startswith("no flow handles"):
        return "no_handler"
    if reason.startswith("jobId must be"):
        return "bad_job_id"
    return "bad_data"


class OutboxCollector(Collector):
    """`outbox_pending_events` and `outbox_oldest_pending_age_seconds`, read at scrape time."""

    def __init__(self, stats: Callable[[], tuple[int, datetime | None]]) -> None:
        self.stats = stats

    def collect(self) -> Iterator[GaugeMetricFamily]:
        up = GaugeMetricFamily(f"{PREFIX}_outbox_up", "1 when the outbox database answered this scrape")
        pending = GaugeMetricFamily(f"{PREFIX}_outbox_pending_events", "Events waiting for their flow run")
        age = GaugeMetricFamily(
            f"{PREFIX}_outbox_oldest_pending_age_seconds",
            "Age of the oldest event waiting for its flow run (0 when none waits)",
        )
        try:
            count, oldest = self.stats()
        except Exception as exc:  # the database is down: say so, the scrape itself still works
            log.warning("outbox metrics unavailable: %s", type(exc).__name__)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        pending.add_metric([], count)
        age.add_metric([], (utcnow() - oldest).total_seconds() if oldest else 0.0)
        yield from (up, pending, age)


class ShimMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        ProcessCollector(registry=r)  # RSS, CPU, open files of the shim itself
        self.events = Counter(
            f"{PREFIX}_events",
            "Events stored, by outcome: accepted (a run will be created), duplicate, refused (no run)",
            ["outcome", "reason"],
            registry=r,
        )
        self.requests_refused = Counter(
            f"{PREFIX}_requests_refused",
            "Whole requests refused, nothing stored (bad_request, unknown_key, too_large, too_slow, "
            "busy, outbox_unavailable)",
            ["reason"],
            registry=r,
        )
        self.dispatch_attempts = Counter(
            f"{PREFIX}_dispatch_attempts",
            "Events the dispatcher tried to turn into flow runs, by result "
            "(created, postponed, failed, job_failed)",
            ["result"],
            registry=r,
        )
        self.dispatch_errors = Counter(
            f"{PREFIX}_dispatch_errors",
            "Prefect requests that failed, by kind (down, busy, refused, error)",
            ["kind"],
            registry=r,
        )
        self.dispatch_latency = Histogram(
            f"{PREFIX}_dispatch_latency_seconds",
            "From an event's arrival to its flow run's creation",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.prefect_request_seconds = Histogram(
            f"{PREFIX}_prefect_request_seconds",
            "Duration of one Prefect API request of the dispatcher",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.prefect_up = Gauge(
            f"{PREFIX}_prefect_up", "1 while the dispatcher can reach Prefect, 0 while it probes", registry=r
        )
        self.prefect_up.set(1)
        self.prefect_probes = Counter(
            f"{PREFIX}_prefect_probes", "Health probes of Prefect while it was unreachable", registry=r
        )
        self.prefect_events = Counter(
            f"{PREFIX}_prefect_events",
            "Prefect events (Event Feed) by result: sent, dropped",
            ["result"],
            registry=r,
        )
        self.purged = Counter(
            f"{PREFIX}_purged",
            "Rows deleted by retention, by table: inngest_event (finished events older than "
            "POLIGRAPH_SHIM_RETENTION_DAYS), inngest_dedupe (expired dedupe keys)",
            ["table"],
            registry=r,
        )
        for table in ("inngest_event", "inngest_dedupe"):
            self.purged.labels(table)
        for outcome in (EventOutcome.ACCEPTED, EventOutcome.DUPLICATE):
            self.events.labels(outcome, "")
        for reason in ("no_handler", "bad_job_id", "bad_data"):
            self.events.labels(EventOutcome.REFUSED, reason)
        for result in ("created", "postponed", "failed", "job_failed"):
            self.dispatch_attempts.labels(result)
        for result in ("sent", "dropped"):
            self.prefect_events.labels(result)

    def count_event(self, outcome: EventOutcome, action: EventAction) -> None:
        reason = refusal_reason(action) if outcome == EventOutcome.REFUSED else ""
        self.events.labels(outcome, reason).inc()

    def watch_outbox(self, stats: Callable[[], tuple[int, datetime | None]]) -> None:
        self.registry.register(OutboxCollector(stats))

    def watch_admission(self, admission: Admission) -> None:
        """The requests in progress and the body bytes they hold, read at scrape time."""
        requests = Gauge(
            f"{PREFIX}_requests_in_progress",
            "Event requests past their head, not yet answered (POLIGRAPH_SHIM_MAX_REQUESTS)",
            registry=self.registry,
        )
        requests.set_function(lambda: admission.requests)
        held = Gauge(
            f"{PREFIX}_body_bytes_in_flight",
            "Request body bytes held by them (POLIGRAPH_SHIM_MAX_BYTES_IN_FLIGHT)",
            registry=self.registry,
        )
        held.set_function(lambda: admission.bytes)
