"""Sentry's envelope limits, applied item by item: one event-like item per envelope, and
sizes and counts per item type. Sentry refuses the whole envelope (413) for one item past
them; the relay drops that item alone (`invalid`), with an outcome, and forwards the rest."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from dataclasses import fields
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from relay.config import ConfigError, LimitsConfig, parse_config
from relay.config.noise import FiltersConfig
from relay.outcomes import Reason
from relay.policy.compile import compile_policy
from relay.processing import pipeline
from relay.processing.context import RequestContext
from relay.processing.filters import compile_filters
from relay.processing.pipeline import Limits, Prepared
from relay.protocol.categories import primary_category
from relay.protocol.envelope import Envelope, make_envelope
from tests.support.relay import RelayFactory, auth_header
from tests.support.upstream import RecordingUpstream

CTX = RequestContext(42, "abc", "203.0.113.9", "sentry.python/2.75.0")
EVENT = orjson.dumps({"message": "boom"})
TRANSACTION = orjson.dumps(
    {"type": "transaction", "transaction": "/a", "start_timestamp": 1.0, "timestamp": 2.0}
)
CSP = orjson.dumps({"csp-report": {"document-uri": "https://example.com/", "blocked-uri": "x"}})
PAYLOADS = {
    "event": EVENT,
    "transaction": TRANSACTION,
    "security": orjson.dumps({"csp": {"document-uri": "https://example.com/"}}),
    "raw_security": CSP,
    "feedback": orjson.dumps({"contexts": {"feedback": {"message": "m"}}}),
    "replay_event": orjson.dumps({"type": "replay_event", "replay_id": "a" * 32}),
    "form_data": b"{}",
    "unreal_report": b"PK\x03\x04",
    "nel": orjson.dumps({"type": "network-error", "url": "https://example.com/", "body": {}}),
    "user_report": orjson.dumps({"event_id": "a" * 32, "name": "n", "comments": "c"}),
}
CONTAINER = {"content_type": "application/vnd.sentry.items.log+json"}
SPAN_CONTAINER = {"content_type": "application/vnd.sentry.items.span.v2+json"}


def _envelope(*items: tuple[dict[str, Any], bytes]) -> Envelope:
    return make_envelope({"event_id": "a" * 32}, list(items))


def _prepare(*items: tuple[dict[str, Any], bytes], **kwargs: Any) -> Prepared:
    # Received now (sessions are checked against it): `CTX` was made at collection.
    ctx = dataclasses.replace(CTX, received_at=time.time())
    return pipeline.prepare(_envelope(*items), ctx, **kwargs)


def _kept(prepared: Prepared) -> list[str]:
    return [w.type for w in prepared.kept]


def _drops(prepared: Prepared) -> list[tuple[str, str, str, str]]:
    return [
        (d.work.type, d.outcome.kind.value, d.outcome.reason, d.outcome.category)
        for d in prepared.dropped
    ]


def _session() -> bytes:
    started = datetime.now(UTC).isoformat()
    attrs = {"release": "app@1.0.0"}
    return orjson.dumps(
        {"sid": uuid.uuid4().hex, "status": "ok", "started": started, "attrs": attrs}
    )


# -- one event-like item per envelope ------------------------------------------------------


@pytest.mark.parametrize(
    ("first", "second", "category"),
    [
        ("event", "event", "error"),
        ("event", "transaction", "transaction"),
        ("transaction", "event", "error"),
        ("security", "security", "security"),
        ("raw_security", "raw_security", "security"),
        ("feedback", "event", "error"),
        ("event", "feedback", "feedback"),
        ("event", "form_data", "unknown"),
        ("replay_event", "replay_event", "replay"),
        ("unreal_report", "unreal_report", "error"),
    ],
)
def test_a_second_event_like_item_is_dropped_as_a_duplicate(
    first: str, second: str, category: str
) -> None:
    prepared = _prepare(({"type": first}, PAYLOADS[first]), ({"type": second}, PAYLOADS[second]))
    assert _kept(prepared) == [first]
    assert _drops(prepared) == [(second, "invalid", Reason.DUPLICATE_ITEM, category)]


def test_the_first_event_like_item_keeps_its_place_when_it_is_dropped_itself() -> None:
    big = orjson.dumps({"message": "x" * 100})
    prepared = _prepare(
        ({"type": "event"}, big), ({"type": "event"}, EVENT), limits=Limits(max_event_bytes=50)
    )
    assert _kept(prepared) == []
    assert [d.outcome.reason for d in prepared.dropped] == ["too_large", "duplicate_item"]


def test_a_third_one_and_every_later_one_is_dropped_too() -> None:
    items = [({"type": "event"}, EVENT), ({"type": "transaction"}, TRANSACTION)] * 3
    prepared = _prepare(*items)
    assert _kept(prepared) == ["event"]
    assert [d.outcome.reason for d in prepared.dropped] == ["duplicate_item"] * 5


def test_items_that_may_repeat_are_kept() -> None:
    # NEL reports, user reports and native crash reports go beside the event, as in Sentry;
    # an Unreal crash report has a slot of its own, not the event's.
    prepared = _prepare(
        ({"type": "event"}, EVENT),
        ({"type": "nel"}, PAYLOADS["nel"]),
        ({"type": "nel"}, PAYLOADS["nel"]),
        ({"type": "user_report"}, PAYLOADS["user_report"]),
        ({"type": "user_report"}, PAYLOADS["user_report"]),
        ({"type": "attachment", "attachment_type": "event.minidump"}, b"MDMP"),
        ({"type": "attachment", "attachment_type": "event.applecrashreport"}, b"crash"),
        ({"type": "attachment", "attachment_type": "event.payload"}, b"\x80"),
        ({"type": "attachment", "attachment_type": "event.payload"}, b"\x80"),
        ({"type": "unreal_report"}, PAYLOADS["unreal_report"]),
    )
    assert prepared.dropped == []
    assert len(prepared.kept) == 10


def test_the_kept_event_keeps_its_dependents() -> None:
    prepared = _prepare(
        ({"type": "event"}, EVENT),
        ({"type": "transaction"}, TRANSACTION),
        ({"type": "attachment", "filename": "a.txt"}, b"abc"),
    )
    assert _kept(prepared) == ["event", "attachment"]
    assert prepared.kept[0].makes_event


# -- sizes per item type --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("item_type", "key", "headers"),
    [
        ("check_in", "max_check_in_bytes", {}),
        ("profile", "max_profile_bytes", {}),
        ("profile_chunk", "max_profile_bytes", {"platform": "python"}),
        ("replay_recording", "max_replay_bytes", {}),
        ("replay_video", "max_replay_bytes", {}),
        ("session", "max_sessions_bytes", {}),
        ("client_report", "max_client_reports_bytes", {}),
        ("log", "max_log_bytes", {}),
        ("span", "max_span_bytes", {}),
        ("trace_metric", "max_trace_metric_bytes", {}),
        ("raw_security", "max_event_bytes", {}),
        ("replay_event", "max_event_bytes", {}),
        ("unreal_report", "max_attachment_bytes", {}),
    ],
)
def test_an_item_over_its_types_limit_is_dropped_alone(
    item_type: str, key: str, headers: dict[str, Any]
) -> None:
    limits = Limits(**{key: 10})
    other = ({"type": "attachment", "filename": "a.txt"}, b"abc")
    prepared = _prepare(({"type": item_type, **headers}, b"x" * 11), other, limits=limits)
    category = primary_category(item_type, headers)
    assert _drops(prepared) == [(item_type, "invalid", "too_large", category)]
    assert _kept(prepared) == ["attachment"]
    prepared = _prepare(({"type": item_type, **headers}, b"x" * 10), other, limits=limits)
    assert "too_large" not in {d.outcome.reason for d in prepared.dropped}


def test_a_check_in_over_100_kib_is_dropped_and_the_event_goes_on() -> None:
    check_in = orjson.dumps({"check_in_id": "c" * 32, "monitor_slug": "m", "x": "y" * 102400})
    prepared = _prepare(({"type": "check_in"}, check_in), ({"type": "event"}, EVENT))
    assert _kept(prepared) == ["event"]
    assert _drops(prepared) == [("check_in", "invalid", "too_large", "monitor")]


def test_a_container_is_held_to_its_limit_per_record_and_whole() -> None:
    limits = Limits(max_log_bytes=10, max_container_bytes=100)
    three = {"type": "log", "item_count": 3, **CONTAINER}
    prepared = _prepare(
        (three, b"x" * 30),  # 10 bytes a record
        (three, b"x" * 33),  # 11
        ({**three, "item_count": 10}, b"x" * 100),  # 10 a record, 100 whole
        ({**three, "item_count": 20}, b"x" * 101),  # 5 a record, but 101 whole
        limits=limits,
    )
    assert [len(w.item.payload) for w in prepared.kept] == [30, 100]
    assert [len(d.work.item.payload) for d in prepared.dropped] == [33, 101]
    assert {d.outcome.reason for d in prepared.dropped} == {"too_large"}


def test_a_log_item_that_is_no_container_is_held_to_the_record_limit_whole() -> None:
    prepared = _prepare(
        ({"type": "log", "item_count": 3}, b"x" * 11), limits=Limits(max_log_bytes=10)
    )
    assert _kept(prepared) == []


def test_the_limits_read_no_payload() -> None:
    # Not JSON at all: the limits decide from the length and the headers alone.
    prepared = _prepare(
        ({"type": "check_in"}, b"\xff" * 200),
        ({"type": "session"}, b"\xff" * 200),
        limits=Limits(max_check_in_bytes=100, max_sessions_bytes=100),
    )
    assert _drops(prepared) == [
        ("check_in", "invalid", "too_large", "monitor"),
        ("session", "invalid", "too_large", "session"),
    ]


# -- counts per envelope --------------------------------------------------------------------


def test_attachments_past_thirty_are_dropped() -> None:
    items = [({"type": "attachment", "filename": f"{i}.txt"}, b"abc") for i in range(32)]
    prepared = _prepare(({"type": "event"}, EVENT), *items)
    assert len(prepared.kept) == 31
    assert [d.work.item.headers["filename"] for d in prepared.dropped] == ["30.txt", "31.txt"]
    assert {
        (d.outcome.kind.value, d.outcome.reason, d.outcome.category) for d in prepared.dropped
    } == {("invalid", "too_large", "attachment")}
    assert [d.outcome.quantity for d in prepared.dropped] == [3, 3]


def test_user_reports_and_unreal_reports_count_with_attachments() -> None:
    prepared = _prepare(
        ({"type": "attachment"}, b"a"),
        ({"type": "user_report"}, PAYLOADS["user_report"]),
        ({"type": "unreal_report"}, PAYLOADS["unreal_report"]),
        ({"type": "attachment"}, b"b"),
        limits=Limits(max_attachment_items=2),
    )
    assert _kept(prepared) == ["attachment", "user_report"]
    assert [d.work.type for d in prepared.dropped] == ["unreal_report", "attachment"]


def test_sessions_past_a_hundred_are_dropped() -> None:
    items = [({"type": "session"}, _session()) for _ in range(101)]
    started = datetime.now(UTC).isoformat()
    aggregate = {"aggregates": [{"started": started}], "attrs": {"release": "app@1.0.0"}}
    prepared = _prepare(*items, ({"type": "sessions"}, orjson.dumps(aggregate)))
    assert _kept(prepared) == ["session"] * 100
    assert _drops(prepared) == [
        ("session", "invalid", "too_large", "session"),
        ("sessions", "invalid", "too_large", "session"),
    ]


def test_sessions_past_their_bytes_together_are_dropped() -> None:
    one = _session()
    items = [({"type": "session"}, _session()) for _ in range(3)]
    prepared = _prepare(*items, limits=Limits(max_sessions_bytes=2 * len(one)))
    assert _kept(prepared) == ["session"] * 2
    assert [d.outcome.reason for d in prepared.dropped] == ["too_large"]


def test_filtered_items_do_not_count() -> None:
    other = orjson.loads(_session())
    other["attrs"]["release"] = "old@0.1"
    items = [({"type": "session"}, orjson.dumps(other)) for _ in range(3)]
    filters = compile_filters(FiltersConfig(releases=["old@*"]), None, [])
    prepared = _prepare(
        *items,
        ({"type": "session"}, _session()),
        ({"type": "session"}, _session()),
        filters=filters,
        limits=Limits(max_session_items=2),
    )
    assert _kept(prepared) == ["session"] * 2
    assert {d.outcome.kind.value for d in prepared.dropped} == {"filtered"}


def test_client_reports_past_their_count_or_bytes_are_dropped() -> None:
    report = orjson.dumps({"timestamp": 1.0, "discarded_events": []})
    items = [({"type": "client_report"}, report) for _ in range(101)]
    prepared = _prepare(*items)
    assert len(prepared.kept) == 100
    assert [(d.outcome.kind.value, d.outcome.reason) for d in prepared.dropped] == [
        ("invalid", "too_large")
    ]
    limits = Limits(max_client_reports_bytes=2 * len(report))
    prepared = _prepare(*items[:3], limits=limits)
    assert len(prepared.kept) == 2


def test_standalone_spans_past_twenty_five_are_dropped_and_containers_do_not_count() -> None:
    span = orjson.dumps({"span_id": "c" * 16, "trace_id": "d" * 32, "start_timestamp": 1.0})
    container = orjson.dumps({"items": [orjson.loads(span)]})
    items = [({"type": "span"}, span) for _ in range(26)]
    prepared = _prepare(*items, ({"type": "span", "item_count": 1, **SPAN_CONTAINER}, container))
    assert len(prepared.kept) == 26
    assert prepared.kept[-1].item.payload == container
    assert _drops(prepared) == [("span", "invalid", "too_large", "span")]


def test_standalone_spans_share_the_container_bytes() -> None:
    items = [({"type": "span"}, b"x" * 40) for _ in range(3)]
    prepared = _prepare(*items, limits=Limits(max_container_bytes=100))
    assert len(prepared.kept) == 2


# -- defaults and config --------------------------------------------------------------------

MIB = 1024 * 1024


def test_the_defaults_are_sentrys() -> None:
    limits = Limits()
    assert (limits.max_check_in_bytes, limits.max_profile_bytes) == (100 * 1024, 50 * MIB)
    assert (limits.max_replay_bytes, limits.max_event_bytes) == (10 * MIB, MIB)
    assert (limits.max_session_items, limits.max_sessions_bytes) == (100, 10 * MIB)
    assert (limits.max_client_report_items, limits.max_client_reports_bytes) == (100, 100 * 1024)
    assert (limits.max_log_bytes, limits.max_span_bytes) == (2 * MIB, 10 * MIB)
    assert (limits.max_trace_metric_bytes, limits.max_container_bytes) == (MIB, 12 * MIB)
    assert (limits.max_standalone_spans, limits.max_attachment_items) == (25, 30)
    # The config has the same keys, with the same defaults.
    config = LimitsConfig()
    for f in fields(Limits):
        assert getattr(config, f.name) == getattr(limits, f.name), f.name


def test_the_config_keys_reach_the_pipeline() -> None:
    config = parse_config(
        {
            "accept_unknown": True,
            "limits": {"max_check_in_bytes": "1KiB", "max_attachment_items": 3},
        },
        env={"RELAY_LIMITS_MAX_STANDALONE_SPANS": "7"},
    )
    limits = compile_policy(config, None).limits
    assert (limits.max_check_in_bytes, limits.max_attachment_items) == (1024, 3)
    assert limits.max_standalone_spans == 7


def test_a_negative_count_is_refused_with_its_path() -> None:
    with pytest.raises(ConfigError) as caught:
        limits = {"max_envelope_items": -1, "max_session_items": -1, "max_standalone_spans": -2}
        parse_config({"limits": limits}, env={})
    assert [p.path for p in caught.value.problems] == [
        "limits.max_envelope_items",
        "limits.max_session_items",
        "limits.max_standalone_spans",
    ]


# -- through the app ------------------------------------------------------------------------


async def _metric(relay: Any, line: str) -> bool:
    async with asyncio.timeout(5):
        while True:
            text = await (await relay.get("/metrics")).text()
            if line in text.splitlines():
                return True
            await asyncio.sleep(0.02)


async def test_an_envelope_with_two_events_forwards_the_first(
    relay_factory: RelayFactory, recorder: RecordingUpstream
) -> None:
    relay = await relay_factory()
    first = orjson.dumps({"message": "first"})
    second = orjson.dumps({"message": "second"})
    body = _envelope(({"type": "event"}, first), ({"type": "event"}, second)).serialize()
    resp = await relay.post("/api/42/envelope/", data=body, headers=auth_header())
    assert resp.status == 200
    await recorder.wait_for(1)
    (envelope,) = recorder.envelopes
    assert [i.type for i in envelope.items] == ["event"]
    assert orjson.loads(envelope.items[0].payload)["message"] == "first"
    assert await _metric(
        relay, 'relay_items_total{category="error",outcome="invalid",reason="duplicate_item"} 1.0'
    )


async def test_an_oversized_check_in_is_dropped_and_the_event_forwarded(
    relay_factory: RelayFactory, recorder: RecordingUpstream
) -> None:
    relay = await relay_factory()
    check_in = orjson.dumps({"check_in_id": "c" * 32, "monitor_slug": "m", "x": "y" * 102400})
    body = _envelope(({"type": "check_in"}, check_in), ({"type": "event"}, EVENT)).serialize()
    resp = await relay.post("/api/42/envelope/", data=body, headers=auth_header())
    assert resp.status == 200
    await recorder.wait_for(1)
    (envelope,) = recorder.envelopes
    assert [i.type for i in envelope.items] == ["event"]
    assert await _metric(
        relay, 'relay_items_total{category="monitor",outcome="invalid",reason="too_large"} 1.0'
    )


async def test_an_envelope_of_an_oversized_check_in_alone_is_answered_413(
    relay_factory: RelayFactory, recorder: RecordingUpstream
) -> None:
    relay = await relay_factory(limits={"max_check_in_bytes": 100})
    body = _envelope(({"type": "check_in"}, b"x" * 101)).serialize()
    resp = await relay.post("/api/42/envelope/", data=body, headers=auth_header())
    assert resp.status == 413
    assert recorder.received == []
