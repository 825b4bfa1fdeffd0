"""`categories_left` says what `drop_categories` would leave, without dropping anything."""

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
    assert {"error", "attachment", "user_report_v2", "transaction", "span", "log_item"} <= (
        prepared.categories()
    )
    left = pipeline.categories_left(prepared, {"error"})
    assert left == {"transaction", "span", "log_item", "log_byte"}
    # Logs count alone: rejecting them leaves everything else.
    left = pipeline.categories_left(prepared, {"log_byte"})
    assert left == prepared.categories() - {"log_item", "log_byte"}
