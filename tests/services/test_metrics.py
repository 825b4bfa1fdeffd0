"""Metrics: the hot counts kept in plain Python render exactly as prometheus_client's own.

The reference below feeds real prometheus_client Counter/Histogram objects the same
calls; `/metrics` must be the same bytes, family for family and line for line.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from relay.outcomes import Outcome, OutcomeKind
from relay.services.metrics import DURATION_BUCKETS, LogCounter, Metrics


class _Reference:
    """The same families, registered in the same order, as prometheus_client objects."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
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
            buckets=DURATION_BUCKETS,
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
        self.shadow_requests = Counter(
            "relay_shadow_requests",
            "Requests to the shadow project's upstream by status.",
            ["status"],
            registry=r,
        )
        Gauge("relay_outbox_size", "Envelopes waiting for the forwarder.", registry=r)
        Gauge("relay_outbox_bytes", "Bytes waiting for the forwarder.", registry=r)
        Gauge(
            "relay_upstream_limits_active",
            "Upstream 429 limits being enforced locally.",
            registry=r,
        )
        Gauge("relay_spool_bytes", "Bytes in the disk spool.", registry=r)
        Gauge(
            "relay_spool_oldest_seconds", "Age of the oldest unsent spooled envelope.", registry=r
        )
        self.config_reloads = Counter(
            "relay_config_reloads", "Config reloads by result.", ["result"], registry=r
        )
        self.config_info = Gauge(
            "relay_config_info", "The config revision in force (label).", ["revision"], registry=r
        )
        self.shadow_deliveries = Counter(
            "relay_shadow_deliveries", "Shadow copies by delivery result.", ["result"], registry=r
        )
        Counter(
            "relay_shadow_copies_skipped",
            "Shadow copies not queued, by why: capped, queue_full, failed.",
            ["reason"],
            registry=r,
        )
        Gauge(
            "relay_quota_used",
            "Quota usage in the current window.",
            ["quota", "scope_id"],
            registry=r,
        )
        Gauge("relay_quota_limit", "Quota limit.", ["quota", "scope_id"], registry=r)
        Gauge(
            "relay_spike_active",
            "1 while spike protection drops items.",
            ["project", "category"],
            registry=r,
        )
        self.log_messages = Counter(
            "relay_log_messages", "Log lines of note by level.", ["level"], registry=r
        )

    def emit(self, outcome: Outcome) -> None:
        category, kind = str(outcome.category), outcome.kind.value
        items = self.items.labels(category, kind, outcome.reason)
        quantity = self.item_quantity.labels(category, kind)
        items.inc()
        quantity.inc(outcome.quantity)

    def count_request(self, endpoint: str, status: int, seconds: float) -> None:
        requests = self.requests.labels(endpoint, str(status))
        duration = self.request_duration.labels(endpoint)
        requests.inc()
        duration.observe(seconds)

    def count_upstream(self, status: int | None) -> None:
        self.upstream_requests.labels("error" if status is None else str(status)).inc()

    def count_shadow_request(self, status: int | None) -> None:
        self.shadow_requests.labels("error" if status is None else str(status)).inc()

    def shadow(self, outcome: Outcome) -> None:
        self.shadow_deliveries.labels(outcome.kind.value).inc()

    def log(self, level: str) -> None:
        self.log_messages.labels(level).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


Call = tuple[str, tuple[Any, ...]]


def _play(calls: list[Call]) -> tuple[bytes, bytes]:
    """Both renders after the same calls."""
    metrics, reference = Metrics(), _Reference()
    for name, args in calls:
        if name == "shadow":
            metrics.shadow_outcomes.emit(*args)
            reference.shadow(*args)
        elif name == "log":
            LogCounter(metrics.log_messages).emit(_record(*args))
            reference.log(logging.getLevelName(args[0]).lower())
        else:
            getattr(metrics, name)(*args)
            getattr(reference, name)(*args)
    return metrics.render(), reference.render()


def _record(level: int) -> logging.LogRecord:
    return logging.LogRecord("relay.test", level, __file__, 1, "note", None, None)


def _outcome(kind: OutcomeKind, reason: str, category: str, quantity: int = 1) -> Outcome:
    return Outcome(kind, reason, category, quantity)


A = OutcomeKind.ACCEPTED
F = OutcomeKind.FILTERED
R = OutcomeKind.RATE_LIMITED

REALISTIC: list[Call] = [
    ("count_request", ("envelope", 200, 0.0031)),
    ("emit", (_outcome(A, "forwarded", "error"),)),
    ("emit", (_outcome(A, "forwarded", "attachment", 123_456),)),
    ("emit", (_outcome(A, "forwarded", "span", 7),)),
    ("emit", (_outcome(F, "browser-extensions", "error"),)),
    ("emit", (_outcome(F, "localhost", "error"),)),
    ("emit", (_outcome(R, "errors-per-minute", "error"),)),
    ("emit", (_outcome(A, "forwarded", "error"),)),
    ("count_request", ("store", 200, 0.0005)),  # on a bound
    ("count_request", ("store", 200, 0.0)),
    ("count_request", ("envelope", 429, 0.00049999)),
    ("count_request", ("envelope", 200, 10.0)),
    ("count_request", ("envelope", 200, 10.000001)),
    ("count_request", ("minidump", 413, 3600.0)),
    ("count_request", ("security", 400, 1e-9)),
    ("count_request", ("envelope", 200, 0.25)),
    ("count_request", ("envelope", 200, 0.2500001)),
    ("count_upstream", (200,)),
    ("count_upstream", (None,)),
    ("count_upstream", (429,)),
    ("count_upstream", (200,)),
    ("count_shadow_request", (503,)),
    ("count_shadow_request", (None,)),
    ("shadow", (_outcome(A, "forwarded", "error"),)),
    ("shadow", (_outcome(OutcomeKind.INTERNAL, "send_failed", "error"),)),
    ("log", (logging.WARNING,)),
    ("log", (logging.ERROR,)),
    ("log", (logging.WARNING,)),
    ("emit", (_outcome(OutcomeKind.INVALID, "too_large", "attachment", 0),)),
]


def test_render_is_byte_identical_to_prometheus_client() -> None:
    ours, reference = _play(REALISTIC)
    assert ours == reference
    text = ours.decode()
    assert 'relay_requests_total{endpoint="envelope",status="200"} 5.0' in text
    assert 'relay_request_duration_seconds_bucket{endpoint="store",le="0.0005"} 2.0' in text
    assert 'relay_request_duration_seconds_count{endpoint="envelope"} 6.0' in text
    assert 'relay_item_quantity_total{category="attachment",outcome="accepted"} 123456.0' in text
    assert 'relay_upstream_requests_total{status="error"} 1.0' in text
    assert 'relay_shadow_deliveries_total{result="internal"} 1.0' in text
    assert 'relay_log_messages_total{level="warning"} 2.0' in text


def test_nothing_counted_prints_the_families_only() -> None:
    ours, reference = _play([])
    assert ours == reference
    assert b"# TYPE relay_requests_total counter\n# HELP relay_request_duration" in ours


def test_the_rare_metrics_and_callbacks_keep_their_places() -> None:
    metrics, reference = Metrics(), _Reference()
    for m in (metrics, reference):
        m.count_request("envelope", 200, 0.01)
        m.config_reloads.labels("ok").inc()
        m.config_info.labels("abc").set(1)
    metrics.set_revision("abc")
    assert metrics.render() == reference.render()
    metrics.add_counter_callback("relay_redis_errors", "Failed Redis calls.", lambda: 3.0)
    assert metrics.render().endswith(
        b"# HELP relay_redis_errors_total Failed Redis calls.\n"
        b"# TYPE relay_redis_errors_total counter\nrelay_redis_errors_total 3.0\n"
    )


def test_odd_durations_and_quantities_match() -> None:
    calls: list[Call] = [
        ("count_request", ("envelope", 200, math.nan)),
        ("count_request", ("envelope", 200, math.inf)),
        ("count_request", ("store", 200, -1.0)),
        ("count_request", ("store", 200, -0.0)),
        ("count_request", ("store", 200, 1e300)),
        ("emit", (_outcome(A, "forwarded", "attachment", 2**53 + 1),)),
        ("emit", (_outcome(A, "forwarded", "attachment", 1),)),
        ("emit", (_outcome(A, "forwarded", "attachment", 1),)),
    ]
    ours, reference = _play(calls)
    assert ours == reference
    assert b'relay_request_duration_seconds_sum{endpoint="envelope"} NaN' in ours


def test_a_negative_quantity_is_refused_as_before() -> None:
    metrics, reference = Metrics(), _Reference()
    bad = _outcome(A, "forwarded", "span", -1)
    for emit in (metrics.emit, reference.emit):
        with pytest.raises(ValueError, match="non-negative"):
            emit(bad)
    assert metrics.render() == reference.render()


def test_sample_values_read_through_the_registry() -> None:
    metrics = Metrics()
    metrics.count_request("envelope", 200, 0.003)
    metrics.emit(_outcome(A, "forwarded", "span", 5))
    metrics.count_upstream(None)
    get = metrics.registry.get_sample_value
    assert get("relay_requests_total", {"endpoint": "envelope", "status": "200"}) == 1.0
    assert (
        get("relay_request_duration_seconds_bucket", {"endpoint": "envelope", "le": "0.0025"})
        == 0.0
    )
    assert (
        get("relay_request_duration_seconds_bucket", {"endpoint": "envelope", "le": "0.005"}) == 1.0
    )
    assert get("relay_request_duration_seconds_sum", {"endpoint": "envelope"}) == 0.003
    assert get("relay_item_quantity_total", {"category": "span", "outcome": "accepted"}) == 5.0
    assert get("relay_upstream_requests_total", {"status": "error"}) == 1.0


def test_names_stay_taken_in_the_registry() -> None:
    metrics = Metrics()
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        Counter("relay_items", "again", ["x"], registry=metrics.registry)
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        Histogram("relay_request_duration_seconds", "again", registry=metrics.registry)


def test_log_counter_counts_warnings_and_above() -> None:
    metrics = Metrics()
    logger = logging.getLogger("relay.test_metrics")
    handler = LogCounter(metrics.log_messages)
    logger.addHandler(handler)
    try:
        logger.info("not counted")
        logger.warning("counted")
        logger.error("counted")
    finally:
        logger.removeHandler(handler)
    get = metrics.registry.get_sample_value
    assert get("relay_log_messages_total", {"level": "warning"}) == 1.0
    assert get("relay_log_messages_total", {"level": "error"}) == 1.0
    assert get("relay_log_messages_total", {"level": "info"}) is None


def test_label_count_is_checked() -> None:
    metrics = Metrics()
    with pytest.raises(ValueError, match="Incorrect label count"):
        metrics.items.cell("error", "accepted")
    with pytest.raises(ValueError, match="Incorrect label count"):
        metrics.request_duration.series("envelope", "extra")


_labels = st.one_of(st.sampled_from(["envelope", "store", "error", "span"]), st.text(max_size=4))
_seconds = st.one_of(
    st.sampled_from([*DURATION_BUCKETS, 0.0, -0.0, math.nan, math.inf, -math.inf]),
    st.floats(min_value=0.0, max_value=20.0),
    st.floats(),
)
_calls: st.SearchStrategy[Call] = st.one_of(
    st.tuples(
        st.just("emit"),
        st.tuples(
            st.builds(
                _outcome,
                st.sampled_from(OutcomeKind),
                _labels,
                _labels,
                st.integers(0, 2**60),
            )
        ),
    ),
    st.tuples(st.just("count_request"), st.tuples(_labels, st.integers(100, 599), _seconds)),
    st.tuples(st.just("count_upstream"), st.tuples(st.none() | st.integers(100, 599))),
    st.tuples(
        st.just("shadow"),
        st.tuples(st.builds(_outcome, st.sampled_from(OutcomeKind), _labels, _labels)),
    ),
    st.tuples(
        st.just("log"),
        st.tuples(st.sampled_from([logging.WARNING, logging.ERROR, logging.CRITICAL])),
    ),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(_calls, max_size=40))
def test_any_call_sequence_renders_identically(calls: list[Call]) -> None:
    ours, reference = _play(calls)
    assert ours == reference
