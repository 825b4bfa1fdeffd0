"""`categories_left` says what `drop_categories` would leave, without dropping anything;
which categories drop which items, as Sentry decides."""

from __future__ import annotations

import dataclasses
import time
from datetime import UTC, datetime, timedelta
from itertools import chain, combinations
from typing import Any

import orjson
import pytest

from relay.config.noise import FiltersConfig
from relay.processing import pipeline
from relay.processing.context import RequestContext
from relay.processing.filters import Filters, compile_filters
from relay.protocol.envelope import parse_envelope
from tests.support.corpus import CORPUS

CTX = RequestContext(42, "abc", "203.0.113.9", "sentry.python/2.75.0")


def _line(obj: object) -> bytes:
    return orjson.dumps(obj) + b"\n"


def _mixed() -> bytes:
    """An error with an attachment and a user report, a standalone span, logs (a
    transaction goes in an envelope of its own: Sentry takes one event-like item)."""
    event = _line({"event_id": "a" * 32, "message": "boom"})
    span = _line({"span_id": "b" * 16, "trace_id": "d" * 32, "start_timestamp": 1.0})
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
            _line({"type": "span", "length": len(span) - 1}),
            span,
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


def _native() -> bytes:
    """A native crash without an event item: a minidump, a log file, a standalone profile."""
    profile = _line({"version": "1", "platform": "cocoa", "profile": {}})
    return b"".join(
        [
            _line({"event_id": "a" * 32}),
            _line({"type": "attachment", "length": 4, "attachment_type": "event.minidump"}),
            b"MDMP\n",
            _line({"type": "attachment", "length": 3, "filename": "log.txt"}),
            b"abc\n",
            _line({"type": "profile", "length": len(profile) - 1}),
            profile,
        ]
    )


def _feedback() -> bytes:
    """User feedback with its screenshot, and a profile chunk of a UI platform."""
    feedback = _line({"event_id": "a" * 32, "contexts": {"feedback": {"message": "m"}}})
    return b"".join(
        [
            _line({"event_id": "a" * 32}),
            _line({"type": "feedback", "length": len(feedback) - 1}),
            feedback,
            _line({"type": "attachment", "length": 3, "filename": "screenshot.png"}),
            b"png\n",
            _line({"type": "profile_chunk", "length": 2, "platform": "android"}),
            b"{}\n",
        ]
    )


BODIES = {
    "mixed": _mixed(),
    "native": _native(),
    "feedback": _feedback(),
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
    assert {"error", "attachment", "feedback", "span", "log_item"} <= prepared.categories()
    left = pipeline.categories_left(prepared, {"error"})
    assert left == {"span", "log_item", "log_byte"}
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


MINIDUMP = b"MDMP" + b"\x00" * 28


def test_a_crash_report_is_the_event_of_an_envelope_without_one() -> None:
    # Sentry (item.rs `creates_event`): a minidump, an Apple crash report or a native
    # event payload makes the event: it counts one `error` when there is no event item.
    body = _envelope(
        ({"type": "attachment", "attachment_type": "event.minidump"}, MINIDUMP),
        ({"type": "attachment", "attachment_type": "event.applecrashreport"}, b"crash"),
        ({"type": "attachment", "filename": "log.txt"}, b"abc"),
    )
    prepared = pipeline.prepare(parse_envelope(body), CTX)
    assert prepared.quantities() == {"error": 1, "attachment": 40, "attachment_item": 3}
    # An attachment quota drops the plain attachment only, and is not announced for the
    # crash reports alone.
    assert pipeline.categories_left(prepared, {"attachment"}) == prepared.categories()
    assert pipeline.announces(prepared, "attachment")
    dropped = pipeline.drop_categories(prepared, {"attachment": ("att", None)})
    assert [d.work.item.headers.get("filename") for d in dropped] == ["log.txt"]
    assert not pipeline.announces(prepared, "attachment")
    assert pipeline.announces(prepared, "error")
    # An error quota drops the event, and with it every attachment.
    assert pipeline.categories_left(prepared, {"error"}) == set()
    dropped = pipeline.drop_categories(prepared, {"error": ("err", None)})
    assert len(dropped) == 2 and prepared.kept == []
    assert dropped[0].report == [("error", 1), ("attachment", 32), ("attachment_item", 1)]


def test_a_crash_report_beside_an_event_item_counts_as_an_attachment() -> None:
    body = _envelope(
        ({"type": "event"}, b"{}"),
        ({"type": "attachment", "attachment_type": "event.minidump"}, MINIDUMP),
    )
    prepared = pipeline.prepare(parse_envelope(body), CTX)
    assert prepared.quantities() == {"error": 1, "attachment": 32, "attachment_item": 1}
    assert pipeline.drop_categories(prepared, {"attachment": ("att", None)}) == []
    assert [w.type for w in prepared.kept] == ["event", "attachment"]


def test_nel_reports_and_unreal_reports_count_as_errors() -> None:
    nel = orjson.dumps({"type": "network-error", "url": "https://example.com/", "body": {}})
    for item_type, payload in (("nel", nel), ("unreal_report", b"PK\x03\x04")):
        prepared = pipeline.prepare(parse_envelope(_envelope(({"type": item_type}, payload))), CTX)
        assert prepared.quantities() == {"error": 1}, item_type
        assert [w.category for w in prepared.kept] == ["error"]


def test_rate_limited_feedback_takes_its_attachments() -> None:
    prepared = pipeline.prepare(parse_envelope(BODIES["feedback"]), CTX)
    assert pipeline.categories_left(prepared, {"feedback"}) == {"profile_chunk_ui"}
    dropped = pipeline.drop_categories(prepared, {"feedback": ("fb", None)})
    assert sorted(d.work.type for d in dropped) == ["attachment", "feedback"]
    assert [w.type for w in prepared.kept] == ["profile_chunk"]


def test_a_profile_without_its_transaction_also_counts_as_transaction_zero() -> None:
    prepared = pipeline.prepare(parse_envelope(_envelope(({"type": "profile"}, PROFILE))), CTX)
    assert prepared.quantities() == {"profile": 1, "transaction": 0}
    dropped = pipeline.drop_categories(prepared, {"transaction": ("tx", None)})
    assert [(d.outcome.category, d.outcome.quantity, d.report) for d in dropped] == [
        ("profile", 1, [("profile", 1)])
    ]
    # Beside its transaction it goes with it, and counts no transaction of its own.
    body = _envelope(({"type": "transaction"}, TRANSACTION), ({"type": "profile"}, PROFILE))
    prepared = pipeline.prepare(parse_envelope(body), CTX)
    assert prepared.quantities()["transaction"] == 1


@pytest.mark.parametrize(
    ("platform", "category"),
    [
        ("cocoa", "profile_chunk_ui"),
        ("android", "profile_chunk_ui"),
        ("javascript", "profile_chunk_ui"),
        ("python", "profile_chunk"),
        (None, "profile_chunk"),
    ],
)
def test_profile_chunks_of_ui_platforms_count_apart(platform: object, category: str) -> None:
    headers: dict[str, object] = {"type": "profile_chunk"}
    if platform is not None:
        headers["platform"] = platform
    prepared = pipeline.prepare(parse_envelope(_envelope((headers, b"{}"))), CTX)
    assert prepared.quantities() == {category: 1}
    assert [w.category for w in prepared.kept] == [category]


def test_the_profile_chunk_ui_item_type_counts_as_a_ui_chunk() -> None:
    # Sentry's Android SDK 8.10-8.11 sends UI chunks as their own item type; Sentry reads
    # it as a profile chunk, so a `profile_chunk_ui` quota limits it.
    headers = {"type": "profile_chunk_ui"}
    prepared = pipeline.prepare(parse_envelope(_envelope((headers, b"{}"))), CTX)
    assert prepared.quantities() == {"profile_chunk_ui": 1}
    assert [w.category for w in prepared.kept] == ["profile_chunk_ui"]


def test_a_rate_limited_drop_reports_every_category_it_counted_in() -> None:
    prepared = pipeline.prepare(parse_envelope(BODIES["mixed"]), CTX)
    dropped = pipeline.drop_categories(
        prepared, {"error": ("err", None), "span": ("sp", None), "log_byte": ("lb", None)}
    )
    reports = {d.work.type: d.report for d in dropped}
    assert reports["event"] == [("error", 1)]
    assert reports["attachment"] == [("attachment", 3), ("attachment_item", 1)]
    assert reports["span"] == [("span", 1)]
    # Log items and log bytes are limited apart: only the rejected one is reported.
    (log,) = (d.work for d in dropped if d.work.type == "log")
    assert reports["log"] == [("log_byte", len(log.item.payload))]
    # A transaction in all its categories: its own and its spans'.
    body = _envelope(({"type": "transaction"}, TRANSACTION))
    prepared = pipeline.prepare(parse_envelope(body), CTX)
    (transaction,) = pipeline.drop_categories(prepared, {"transaction": ("tx", None)})
    assert transaction.report == [("transaction", 1), ("span", 2)]


def _filters(**config: Any) -> Filters:
    return compile_filters(FiltersConfig(**config), None, [])


SESSION_ATTRS = {"release": "app@1.0.0", "environment": "production"}
# Sessions are counted only within days of being sent (`relay.processing.sessions`).
STARTED = datetime.now(UTC).isoformat()


@pytest.mark.parametrize(
    ("item_type", "doc"),
    [
        ("session", {"sid": "a" * 32, "status": "ok", "started": STARTED, "attrs": SESSION_ATTRS}),
        ("sessions", {"aggregates": [{"started": STARTED}], "attrs": SESSION_ATTRS}),
    ],
)
def test_sessions_of_a_filtered_release_are_filtered(item_type: str, doc: object) -> None:
    # As Sentry's inbound filters: else release health keeps the sessions of a release
    # whose errors are filtered out.
    body = _envelope(({"type": item_type}, orjson.dumps(doc)))
    filters = _filters(releases=["app@1.0.*"])
    prepared = pipeline.prepare(parse_envelope(body), CTX, filters=filters)
    assert not prepared.kept
    (dropped,) = prepared.dropped
    assert (dropped.outcome.kind.value, dropped.outcome.reason) == ("filtered", "release-version")
    kept = pipeline.prepare(parse_envelope(body), CTX, filters=_filters(releases=["other"]))
    assert [w.type for w in kept.kept] == [item_type]


def test_a_filtered_replay_takes_its_recording_and_video_with_it() -> None:
    replay = {"replay_id": "b" * 32, "release": "app@1.0.0", "platform": "javascript"}
    body = _envelope(
        ({"type": "replay_event"}, orjson.dumps(replay)),
        ({"type": "replay_recording", "length": 3}, b"abc"),
        ({"type": "replay_video", "length": 3}, b"xyz"),
        ({"type": "check_in"}, b'{"check_in_id":"c","monitor_slug":"m","status":"ok"}'),
    )
    filters = _filters(releases=["app@1.0.0"])
    prepared = pipeline.prepare(parse_envelope(body), CTX, filters=filters)
    assert [w.type for w in prepared.kept] == ["check_in"]
    assert [(d.work.type, d.outcome.reason) for d in prepared.dropped] == [
        ("replay_event", "release-version"),
        ("replay_recording", "release-version"),
        ("replay_video", "release-version"),
    ]


def test_session_aggregates_count_one_per_bucket() -> None:
    # As Sentry counts them against a `session` quota: each bucket once.
    minute = datetime.now(UTC).replace(second=0, microsecond=0)
    started = [(minute - timedelta(hours=h)).isoformat() for h in (2, 1, 0)]
    buckets = [{"started": started[0], "exited": 5}, {"started": started[1], "errored": 2}]
    doc = {"aggregates": [*buckets, {"started": started[2]}], "attrs": SESSION_ATTRS}
    body = _envelope(({"type": "sessions"}, orjson.dumps(doc)))
    # Received now: `CTX` was made when the module was collected, minutes ago in a full run.
    ctx = dataclasses.replace(CTX, received_at=time.time())
    prepared = pipeline.prepare(parse_envelope(body), ctx)
    assert prepared.quantities() == {"session": 3}


@pytest.mark.parametrize(
    "report",
    [
        {"name": "Jane", "comments": "it broke"},  # no event id
        {"event_id": "not-an-id", "comments": "it broke"},
        {"event_id": "c" * 32, "comments": ["not", "text"]},
    ],
)
def test_a_user_report_sentry_cannot_read_is_invalid(report: object) -> None:
    body = _envelope(({"type": "user_report"}, orjson.dumps(report)))
    prepared = pipeline.prepare(parse_envelope(body), CTX)
    assert not prepared.kept
    assert prepared.dropped[0].outcome.reason == "invalid_json"
    good = {"event_id": "c" * 32, "name": None, "email": "a@b.c", "comments": "it broke"}
    body = _envelope(({"type": "user_report"}, orjson.dumps(good)))
    assert [w.type for w in pipeline.prepare(parse_envelope(body), CTX).kept] == ["user_report"]
