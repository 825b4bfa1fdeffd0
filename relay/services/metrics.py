"""Prometheus metrics: one registry per app, fed by outcomes and by the edges.

Names (dashboards and alerts depend on them):

    relay_requests_total{endpoint,status}
    relay_request_duration_seconds{endpoint}
    relay_items_total{category,outcome,reason}
    relay_item_quantity_total{category,outcome}
    relay_upstream_requests_total{status}
    relay_outbox_size / relay_outbox_bytes
    relay_upstream_limits_active
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from relay.outcomes import Outcome, OutcomeKind
from relay.services.limiter.core import UsageRow

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

disable_created_metrics()  # type: ignore[no-untyped-call]


class Metrics:
    """The relay's metrics; also an `OutcomeSink`."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "relay_requests",
            "HTTP requests by endpoint and status.",
            ["endpoint", "status"],
            registry=r,
        )
        self.request_duration = Histogram(
            "relay_request_duration_seconds",
            "Time to answer an ingest request.",
            ["endpoint"],
            buckets=(
                0.0005,
                0.001,
                0.0025,
                0.005,
                0.01,
                0.025,
                0.05,
                0.1,
                0.25,
                0.5,
                1,
                2.5,
                5,
                10,
            ),
            registry=r,
        )
        self.items = Counter(
            "relay_items",
            "Envelope items by final outcome.",
            ["category", "outcome", "reason"],
            registry=r,
        )
        self.item_quantity = Counter(
            "relay_item_quantity",
            "Quantity (items, bytes, spans) by outcome.",
            ["category", "outcome"],
            registry=r,
        )
        self.upstream_requests = Counter(
            "relay_upstream_requests", "Requests to the upstream by status.", ["status"], registry=r
        )
        self.outbox_size = Gauge(
            "relay_outbox_size", "Envelopes waiting for the forwarder.", registry=r
        )
        self.outbox_bytes = Gauge(
            "relay_outbox_bytes", "Bytes waiting for the forwarder.", registry=r
        )
        self.upstream_limits_active = Gauge(
            "relay_upstream_limits_active",
            "Upstream 429 limits being enforced locally.",
            registry=r,
        )
        self.spool_bytes = Gauge("relay_spool_bytes", "Bytes in the disk spool.", registry=r)
        self.spool_oldest_seconds = Gauge(
            "relay_spool_oldest_seconds", "Age of the oldest unsent spooled envelope.", registry=r
        )
        self.config_reloads = Counter(
            "relay_config_reloads", "Config reloads by result.", ["result"], registry=r
        )
        self.config_info = Gauge(
            "relay_config_info", "The config revision in force (label).", ["revision"], registry=r
        )
        self._revision: str | None = None
        self.shadow_deliveries = Counter(
            "relay_shadow_deliveries", "Shadow copies by delivery result.", ["result"], registry=r
        )
        self.shadow_outcomes = _ShadowOutcomes(self.shadow_deliveries)
        self.quota_used = Gauge(
            "relay_quota_used",
            "Quota usage in the current window.",
            ["quota", "scope_id"],
            registry=r,
        )
        self.quota_limit = Gauge(
            "relay_quota_limit", "Quota limit.", ["quota", "scope_id"], registry=r
        )
        self.spike_active = Gauge(
            "relay_spike_active",
            "1 while spike protection drops items.",
            ["project", "category"],
            registry=r,
        )
        # Label children, cached: `labels()` per request costs more than the increment.
        self._item_children: dict[tuple[str, OutcomeKind, str], tuple[Any, Any]] = {}
        self._request_children: dict[tuple[str, int], tuple[Any, Any]] = {}
        self._upstream_children: dict[int | None, Any] = {}
        self.log_messages = Counter(
            "relay_log_messages", "Log lines of note by level.", ["level"], registry=r
        )

    def emit(self, outcome: Outcome) -> None:
        key = (outcome.category, outcome.kind, outcome.reason)
        children = self._item_children.get(key)
        if children is None:
            category, kind = str(outcome.category), outcome.kind.value
            children = (
                self.items.labels(category, kind, outcome.reason),
                self.item_quantity.labels(category, kind),
            )
            self._item_children[key] = children
        children[0].inc()
        children[1].inc(outcome.quantity)

    def count_request(self, endpoint: str, status: int, seconds: float) -> None:
        key = (endpoint, status)
        children = self._request_children.get(key)
        if children is None:
            children = (
                self.requests.labels(endpoint, str(status)),
                self.request_duration.labels(endpoint),
            )
            self._request_children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def count_upstream(self, status: int | None) -> None:
        """One request to the upstream, by its status (None: no answer)."""
        child = self._upstream_children.get(status)
        if child is None:
            child = self.upstream_requests.labels("error" if status is None else str(status))
            self._upstream_children[status] = child
        child.inc()

    def set_usage(self, rows: Iterable[UsageRow]) -> None:
        """Refresh the quota gauges from the limiter's usage rows (on scrape)."""
        self.quota_used.clear()
        self.quota_limit.clear()
        self.spike_active.clear()
        for row in rows:
            if row.kind == "spike":
                self.spike_active.labels(row.scope_id, row.category or "all").set(
                    1 if row.active else 0
                )
                continue
            quota = row.id if row.category is None else f"{row.id}:{row.category}"
            self.quota_used.labels(quota, row.scope_id).set(
                row.spend if row.spend is not None else row.used
            )
            self.quota_limit.labels(quota, row.scope_id).set(
                row.amount if row.amount is not None else row.limit
            )

    def set_revision(self, revision: str) -> None:
        if self._revision is not None:
            self.config_info.remove(self._revision)
        self._revision = revision
        self.config_info.labels(revision).set(1)

    def add_collector(self, collector: Collector) -> None:
        self.registry.register(collector)

    def add_gauge_callback(self, name: str, doc: str, fn: Callable[[], float]) -> None:
        """A gauge read when scraped (for values owned by another component)."""
        self.registry.register(_Callback(GaugeMetricFamily, name, doc, fn))

    def add_counter_callback(self, name: str, doc: str, fn: Callable[[], float]) -> None:
        """A counter read when scraped (`name` without the `_total` suffix)."""
        self.registry.register(_Callback(CounterMetricFamily, name, doc, fn))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _Callback(Collector):
    """A gauge or counter whose value is read from another component when scraped."""

    def __init__(
        self,
        family: type[GaugeMetricFamily | CounterMetricFamily],
        name: str,
        doc: str,
        fn: Callable[[], float],
    ) -> None:
        self.family, self.name, self.doc, self.fn = family, name, doc, fn

    def collect(self):  # type: ignore[no-untyped-def]
        yield self.family(self.name, self.doc, value=self.fn())

    def describe(self):  # type: ignore[no-untyped-def]
        return []


class _ShadowOutcomes:
    """Outcomes of shadow copies are not item outcomes: counted on their own."""

    def __init__(self, counter: Counter) -> None:
        self.counter = counter

    def emit(self, outcome: Outcome) -> None:
        self.counter.labels(outcome.kind.value).inc()


class LogCounter(logging.Handler):
    """Counts the relay's own log lines of note (warning and above) by level."""

    def __init__(self, counter: Counter) -> None:
        super().__init__(level=logging.WARNING)
        self.counter = counter

    def emit(self, record: logging.LogRecord) -> None:
        self.counter.labels(record.levelname.lower()).inc()
