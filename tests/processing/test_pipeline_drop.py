"""`categories_left` says what `drop_categories` would leave, without dropping anything;
which categories drop which items, as Sentry decides."""

from __future__ import annotations

from itertools import chain, combinations

import orjson
import pytest

from relay.processing import pipeline
from relay.processing.context import RequestContext
from relay.protocol.envelope import parse_envelope
from tests.support.corpus import CORPUS

CTX = RequestContext(42, "abc", "203.0.113.9", "sentry.python/2.75.0")


def _line(obj: object) -> bytes:
    return orjson.dumps(obj) + b"\n"


def _mixed() -> bytes:
    """An error with an attachment and a user report, a transaction with spans, logs."""
    event = _line({"event_id": "a" * 32, "message": "boom"})
    tx = _line(
        {
            "type": "transaction",
            "transaction": "/checkout",
            "start_timestamp": 1.0,
            "timestamp": 2.0,
            "spans": [{"span_id": "b" * 16, "start_timestamp": 1.0, "timestamp": 2.0}],
        }
    )
    report = _line({"event_id": "a" * 32, "name": "n", "email": "e@example.com", "comments": "c"})
    logs = _line({"items": [{"timestamp": 1.0, "level": "info", "body": "x"}]})
    return b"".join(
        [
            _line({"event_id": "a" * 32}),
            _line({"type": "event", "length": len(event) - 1}),
            event,
            _line({"type": "attachment", "length": 3, "filename": "a.txt"}),
            b"abc\n",
            _line({"type": "user_report", "length": len(report) - 1}),
            report,
            _line({"type": "transaction", "length": len(tx) - 1}),
            tx,
            _line(
                {
                    "type": "log",
                    "length": len(logs) - 1,
                    "item_count": 1,
                    "content_type": "application/vnd.sentry.items.log+json",
                }
            ),
            logs,
        ]
    )


BODIES = {
    "mixed": _mixed(),
    **{p.stem: p.read_bytes() for p in sorted(CORPUS.glob("*.envelope"))},
}


@pytest.mark.parametrize("name", sorted(BODIES))
def test_categories_left_matches_what_drop_categories_leaves(name: str) -> None:
    categories = sorted(pipeline.prepare(parse_envelope(BODIES[name]), CTX).categories())
    assert categories
    subsets = chain.from_iterable(combinations(categories, n) for n in range(len(categories) + 1))
    for rejected in subsets:
        prepared = pipeline.prepare(parse_envelope(BODIES[name]), CTX)
        left = pipeline.categories_left(prepared, set(rejected))
        assert prepared.categories() == set(categories)  # nothing was changed
        pipeline.drop_categories(prepared, {c: ("quota", None) for c in rejected})
        assert left == prepared.categories(), rejected


def test_a_rejected_event_leaves_none_of_its_dependents() -> None:
    prepared = pipeline.prepare(parse_envelope(BODIES["mixed"]), CTX)
    assert {"error", "attachment", "feedback", "transaction", "span", "log_item"} <= (
        prepared.categories()
    )
    left = pipeline.categories_left(prepared, {"error"})
    assert left == {"transaction", "span", "log_item", "log_byte"}
    # Logs count alone: rejecting them leaves everything else.
    left = pipeline.categories_left(prepared, {"log_byte"})
    assert left == prepared.categories() - {"log_item", "log_byte"}


def _envelope(*items: tuple[dict[str, object], bytes]) -> bytes:
    return _line({"event_id": "a" * 32}) + b"".join(
        _line({**headers, "length": len(payload)}) + payload + b"\n" for headers, payload in items
    )


TRANSACTION = orjson.dumps(
    {
        "type": "transaction",
        "transaction": "/checkout",
        "start_timestamp": 1.0,
        "timestamp": 2.0,
        "spans": [{"span_id": "b" * 16, "start_timestamp": 1.0, "timestamp": 2.0}],
    }
)
PROFILE = orjson.dumps({"version": "1", "platform": "python", "profile": {}})
SPAN = orjson.dumps({"span_id": "c" * 16, "trace_id": "d" * 32, "start_timestamp": 1.0})


def test_a_span_quota_drops_standalone_spans_and_keeps_transactions() -> None:
    body = _envelope(({"type": "transaction"}, TRANSACTION), ({"type": "span"}, SPAN))
    prepared = pipeline.prepare(parse_envelope(body), CTX)
    assert prepared.quantities()["span"] == 3  # the transaction's 1 + 1 span, and one more
    assert pipeline.categories_left(prepared, {"span"}) == {"transaction", "span"}
    dropped = pipeline.drop_categories(prepared, {"span": ("spans", "spans")})
    assert [d.work.type for d in dropped] == ["span"]
    assert [w.type for w in prepared.kept] == ["transaction"]


def test_a_dropped_transaction_takes_its_profile() -> None:
    body = _envelope(({"type": "transaction"}, TRANSACTION), ({"type": "profile"}, PROFILE))
    prepared = pipeline.prepare(parse_envelope(body), CTX)
    assert pipeline.categories_left(prepared, {"transaction"}) == set()
    dropped = pipeline.drop_categories(prepared, {"transaction": ("tx", "tx")})
    assert sorted(d.work.type for d in dropped) == ["profile", "transaction"]
    assert {(d.outcome.category, d.outcome.reason) for d in dropped} == {
        ("transaction", "tx"),
        ("profile", "tx"),
    }
    assert prepared.kept == []


def test_user_reports_count_as_feedback_and_trace_metrics_as_their_own() -> None:
    report = orjson.dumps({"event_id": "a" * 32, "name": "n", "comments": "c"})
    metrics = orjson.dumps({"items": []})
    body = _envelope(
        ({"type": "user_report"}, report),
        ({"type": "trace_metric", "item_count": 7}, metrics),
    )
    prepared = pipeline.prepare(parse_envelope(body), CTX)
    assert prepared.quantities() == {"feedback": 1, "trace_metric": 7}


def test_item_types_sentry_does_not_know_are_never_limited() -> None:
    body = _envelope(({"type": "something_new"}, b"{}"), ({"type": "event"}, b"{}"))
    prepared = pipeline.prepare(parse_envelope(body), CTX)
    assert prepared.quantities() == {"error": 1}
    assert [w.category for w in prepared.kept] == ["unknown", "error"]
    pipeline.drop_categories(prepared, {"error": ("q", None), "unknown": ("q", None)})
    assert [w.type for w in prepared.kept] == ["something_new"]
