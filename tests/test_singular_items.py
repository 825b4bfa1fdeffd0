"""Item types Sentry accepts once per envelope beyond the event-like ones: check-ins and
transaction profiles. The first is kept; each later one is dropped on its own with one
`invalid` outcome. Other types (containers of different kinds, standalone spans) keep
their places."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import orjson

from relay.outcomes import Reason
from relay.processing import pipeline
from relay.processing.context import RequestContext
from relay.processing.pipeline import Prepared
from relay.protocol.envelope import Envelope, make_envelope
from tests.support.relay import RelayFactory, auth_header
from tests.support.upstream import RecordingUpstream
from tests.test_item_limits import _metric

CTX = RequestContext(42, "abc", "203.0.113.9", "sentry.python/2.75.0")
EVENT = orjson.dumps({"message": "boom"})
TRANSACTION = orjson.dumps(
    {"type": "transaction", "transaction": "/a", "start_timestamp": 1.0, "timestamp": 2.0}
)
LOGS = {"content_type": "application/vnd.sentry.items.log+json", "item_count": 1}
SPANS = {"content_type": "application/vnd.sentry.items.span.v2+json", "item_count": 1}
METRICS = {"content_type": "application/vnd.sentry.items.trace-metric+json", "item_count": 1}


def _check_in(slug: str) -> bytes:
    return orjson.dumps({"check_in_id": "c" * 32, "monitor_slug": slug, "status": "ok"})


def _container(key: str, value: Any) -> bytes:
    return orjson.dumps({"items": [{key: value}]})


def _envelope(*items: tuple[dict[str, Any], bytes]) -> Envelope:
    return make_envelope({"event_id": "a" * 32}, list(items))


def _prepare(*items: tuple[dict[str, Any], bytes]) -> Prepared:
    ctx = dataclasses.replace(CTX, received_at=time.time())
    return pipeline.prepare(_envelope(*items), ctx)


def _drops(prepared: Prepared) -> list[tuple[str, str, str, str, int]]:
    return [
        (
            d.work.type,
            d.outcome.kind.value,
            d.outcome.reason,
            d.outcome.category,
            d.outcome.quantity,
        )
        for d in prepared.dropped
    ]


def test_a_second_and_third_check_in_are_dropped_one_outcome_each() -> None:
    prepared = _prepare(
        ({"type": "check_in"}, _check_in("first")),
        ({"type": "check_in"}, _check_in("second")),
        ({"type": "check_in"}, _check_in("third")),
    )
    assert [w.type for w in prepared.kept] == ["check_in"]
    assert orjson.loads(prepared.kept[0].item.payload)["monitor_slug"] == "first"
    assert _drops(prepared) == [("check_in", "invalid", Reason.DUPLICATE_ITEM, "monitor", 1)] * 2


def test_a_second_profile_is_dropped_as_too_many_profiles() -> None:
    prepared = _prepare(
        ({"type": "transaction"}, TRANSACTION),
        ({"type": "profile"}, b'{"version": "1"}'),
        ({"type": "profile"}, b'{"version": "1"}'),
    )
    assert [w.type for w in prepared.kept] == ["transaction", "profile"]
    assert _drops(prepared) == [("profile", "invalid", "profiling_too_many_profiles", "profile", 1)]


def test_other_items_beside_a_check_in_keep_their_place() -> None:
    span = orjson.dumps({"span_id": "b" * 16, "trace_id": "c" * 32, "op": "db"})
    prepared = _prepare(
        ({"type": "log", **LOGS}, _container("body", "hello")),
        ({"type": "span", **SPANS}, _container("name", "GET /")),
        ({"type": "trace_metric", **METRICS}, _container("name", "requests")),
        ({"type": "span"}, span),
        ({"type": "span"}, span),
        ({"type": "check_in"}, _check_in("nightly")),
        ({"type": "event"}, EVENT),
    )
    assert prepared.dropped == []
    assert len(prepared.kept) == 7


# -- through the app ------------------------------------------------------------------------


async def test_an_envelope_with_two_check_ins_forwards_the_first(
    relay_factory: RelayFactory, recorder: RecordingUpstream
) -> None:
    relay = await relay_factory()
    body = _envelope(
        ({"type": "check_in"}, _check_in("first")),
        ({"type": "check_in"}, _check_in("second")),
    ).serialize()
    resp = await relay.post("/api/42/envelope/", data=body, headers=auth_header())
    assert resp.status == 200
    await recorder.wait_for(1)
    (envelope,) = recorder.envelopes
    assert [orjson.loads(i.payload)["monitor_slug"] for i in envelope.items] == ["first"]
    assert await _metric(
        relay, 'relay_items_total{category="monitor",outcome="invalid",reason="duplicate_item"} 1.0'
    )
