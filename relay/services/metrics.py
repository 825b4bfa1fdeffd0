"""Prometheus metrics: one registry per app, fed by outcomes and by the edges.

Names (dashboards and alerts depend on them):

    relay_requests_total{endpoint,status}
    relay_request_duration_seconds{endpoint}
    relay_items_total{category,outcome,reason}
    relay_item_quantity_total{category,outcome}
    relay_upstream_requests_total{status}
    relay_outbox_size / relay_outbox_bytes
    relay_upstream_limits_active

The counts touched on every request or item (requests, durations, items, upstream
requests, shadow deliveries, log lines) live in plain Python lists without locks
(each worker process runs one event loop). `LabelledCounter` and `LabelledHistogram`
export them when scraped; each is registered where its family appears in the output.
The rarely changed ones (reloads, gauges) stay prometheus_client objects.
"""

from __future__ import annotations

import logging
import math
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Sequence

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from relay.outcomes import Outcome, OutcomeKind
from relay.services.limiter.core import UsageRow

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

disable_created_metrics()  # type: ignore[no-untyped-call]

#: Upper bounds of `relay_request_duration_seconds` (+Inf is added).
DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

_NEGATIVE = "Counters can only be incremented by non-negative amounts."


class Metrics:
    """The relay's metrics; also an `OutcomeSink`."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = LabelledCounter(
            "relay_requests", "HTTP requests by endpoint and status.", ["endpoint", "status"], r
        )
        self.request_duration = LabelledHistogram(
            "relay_request_duration_seconds",
            "Time to answer an ingest request.",
            ["endpoint"],
            DURATION_BUCKETS,
            r,
        )
        self.items = LabelledCounter(
            "relay_items",
            "Envelope items by final outcome.",
            ["category", "outcome", "reason"],
            r,
        )
        self.item_quantity = LabelledCounter(
            "relay_item_quantity",
            "Quantity (items, bytes, spans) by outcome.",
            ["category", "outcome"],
            r,
        )
        self.upstream_requests = LabelledCounter(
            "relay_upstream_requests", "Requests to the upstream by status.", ["status"], r
        )
        self.shadow_requests = LabelledCounter(
            "relay_shadow_requests",
            "Requests to the shadow project's upstream by status.",
            ["status"],
            r,
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
        self.shadow_deliveries = LabelledCounter(
            "relay_shadow_deliveries", "Shadow copies by delivery result.", ["result"], r
        )
        self.shadow_outcomes = _ShadowOutcomes(self.shadow_deliveries)
        self.shadow_skipped = LabelledCounter(
            "relay_shadow_copies_skipped",
            "Shadow copies not queued, by why: capped, queue_full, failed.",
            ["reason"],
            r,
        )
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
        self.log_messages = LabelledCounter(
            "relay_log_messages", "Log lines of note by level.", ["level"], r
        )
        # The cells each hot call adds to, by the caller's own key: one dict lookup a call.
        self._item_cells: dict[tuple[str, OutcomeKind, str], tuple[list[float], list[float]]] = {}
        self._request_cells: dict[tuple[str, int], tuple[list[float], list[float]]] = {}
        self._upstream_cells: dict[int | None, list[float]] = {}
        self._bounds = self.request_duration.bounds

    def emit(self, outcome: Outcome) -> None:
        cells = self._item_cells.get((outcome.category, outcome.kind, outcome.reason))
        if cells is None:
            cells = self._new_item_cells(outcome)
        cells[0][0] += 1.0
        quantity = outcome.quantity
        if quantity < 0:
            raise ValueError(_NEGATIVE)
        cells[1][0] += quantity

    def _new_item_cells(self, outcome: Outcome) -> tuple[list[float], list[float]]:
        category, kind = str(outcome.category), outcome.kind.value
        cells = (
            self.items.cell(category, kind, outcome.reason),
            self.item_quantity.cell(category, kind),
        )
        self._item_cells[(outcome.category, outcome.kind, outcome.reason)] = cells
        return cells

    def count_request(self, endpoint: str, status: int, seconds: float) -> None:
        """One answered ingest request, and the seconds it took."""
        cells = self._request_cells.get((endpoint, status))
        if cells is None:
            cells = self._request_cells[(endpoint, status)] = (
                self.requests.cell(endpoint, str(status)),
                self.request_duration.series(endpoint),
            )
        count, series = cells
        count[0] += 1.0
        series[-1] += seconds
        bounds = self._bounds
        # The first bucket with seconds <= le; NaN lands in none (bisect_left says 0).
        i = bisect_left(bounds, seconds)
        if i or seconds <= bounds[0]:
            series[i] += 1.0

    def count_upstream(self, status: int | None) -> None:
        """One request to the upstream, by its status (None: no answer)."""
        cell = self._upstream_cells.get(status)
        if cell is None:
            cell = self._upstream_cells[status] = self.upstream_requests.cell(
                "error" if status is None else str(status)
            )
        cell[0] += 1.0

    def count_shadow_request(self, status: int | None) -> None:
        """One request to the shadow project's upstream (apart from the upstream's, whose
        alerts a down shadow must not fire)."""
        self.shadow_requests.cell("error" if status is None else str(status))[0] += 1.0

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


def _label_key(labelvalues: Sequence[object], labelnames: Sequence[str]) -> tuple[str, ...]:
    """A label set as stored: its values as strings, one per label name."""
    key = tuple(str(v) for v in labelvalues)
    if len(key) != len(labelnames):
        raise ValueError("Incorrect label count")
    return key


class LabelledCounter(Collector):
    """A labelled counter kept in plain Python, exported when scraped.

    Each label set has a cell, a one-element list holding its total; callers on a
    hot path keep the cell and add to `cell[0]` themselves. Label sets are exported
    in the order of first use, as prometheus_client does.

    Parameters:
        name: the family name, without `_total`.
        documentation: the HELP text.
        labelnames: the label names, in the order values are given.
        registry: where it is registered at once (its place in the output).
    """

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        registry: CollectorRegistry,
    ) -> None:
        self.name, self.documentation, self.labelnames = name, documentation, tuple(labelnames)
        self._cells: dict[tuple[str, ...], list[float]] = {}
        registry.register(self)

    def cell(self, *labelvalues: object) -> list[float]:
        """The cell of a label set (values are turned into strings), made on first use."""
        key = _label_key(labelvalues, self.labelnames)
        found = self._cells.get(key)
        if found is None:
            found = self._cells[key] = [0.0]
        return found

    def inc(self, *labelvalues: str) -> None:
        """Add one to a label set."""
        found = self._cells.get(labelvalues)
        if found is None:
            found = self.cell(*labelvalues)
        found[0] += 1.0

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for key, cell in tuple(self._cells.items()):
            family.add_metric(key, cell[0])
        yield family

    def describe(self) -> Iterator[Metric]:
        yield CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)


class LabelledHistogram(Collector):
    """A labelled histogram kept in plain Python, exported when scraped.

    Each label set has a series: one count per bucket (not cumulative: a value is
    counted in the first bucket whose upper bound is >= it; NaN in none), then the
    sum of the values. Callers add to a series themselves (see `Metrics.count_request`).

    Parameters:
        name: the family name.
        documentation: the HELP text.
        labelnames: the label names, in the order values are given.
        buckets: the upper bounds, ascending (+Inf is added when missing).
        registry: where it is registered at once (its place in the output).
    """

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        buckets: Iterable[float],
        registry: CollectorRegistry,
    ) -> None:
        bounds = [float(b) for b in buckets]
        if bounds != sorted(bounds):
            raise ValueError("Buckets not in sorted order")
        if bounds and bounds[-1] != math.inf:
            bounds.append(math.inf)
        if len(bounds) < 2:
            raise ValueError("Must have at least two buckets")
        self.name, self.documentation, self.labelnames = name, documentation, tuple(labelnames)
        #: Upper bounds, ascending, +Inf last.
        self.bounds = tuple(bounds)
        self._le: tuple[str, ...] = tuple(floatToGoString(b) for b in bounds)  # type: ignore[no-untyped-call]
        self._series: dict[tuple[str, ...], list[float]] = {}
        registry.register(self)

    def series(self, *labelvalues: object) -> list[float]:
        """The series of a label set (values are turned into strings), made on first use."""
        key = _label_key(labelvalues, self.labelnames)
        found = self._series.get(key)
        if found is None:
            found = self._series[key] = [0.0] * (len(self.bounds) + 1)
        return found

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for key, series in tuple(self._series.items()):
            total = 0.0
            buckets = []
            for le, count in zip(self._le, series[:-1], strict=True):
                total += count
                buckets.append((le, total))
            family.add_metric(key, buckets, series[-1])
        yield family

    def describe(self) -> Iterator[Metric]:
        yield HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)


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

    def __init__(self, counter: LabelledCounter) -> None:
        self.counter = counter

    def emit(self, outcome: Outcome) -> None:
        self.counter.inc(outcome.kind.value)


class LogCounter(logging.Handler):
    """Counts the relay's own log lines of note (warning and above) by level."""

    def __init__(self, counter: LabelledCounter) -> None:
        super().__init__(level=logging.WARNING)
        self.counter = counter

    def emit(self, record: logging.LogRecord) -> None:
        self.counter.inc(record.levelname.lower())
