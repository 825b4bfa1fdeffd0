"""Sessions Sentry would discard are dropped at the relay, with an outcome, before they
spend session quota: out of the time window (after clock-drift correction), a release
Sentry refuses, a payload that is not Sentry's session protocol. An aggregate keeps its
buckets in the window."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
import sentry_sdk
from aiohttp.test_utils import TestClient

from relay.config.noise import FiltersConfig
from relay.outcomes import OutcomeKind
from relay.processing import pipeline, sessions
from relay.processing.context import RequestContext
from relay.processing.filters import compile_filters
from relay.processing.sessions import (
    MAX_SECS_IN_FUTURE,
    MAX_SECS_IN_PAST,
    Verdict,
    check,
    parse_timestamp,
    valid_release,
    without_buckets,
)
from relay.protocol.envelope import parse_envelope
from tests.support.relay import KEY, auth_header
from tests.support.upstream import RecordingUpstream

NOW = 1_796_342_400.0  # 2026-12-04T00:00:00Z
DAY = 24 * 3600
ATTRS = {"release": "shop@1.4.2", "environment": "production"}


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _session(at: float = NOW, **fields: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "sid": uuid.uuid4().hex,
        "did": "user-7",
        "seq": 3,
        "init": True,
        "started": _iso(at),
        "timestamp": _iso(at + 1.5),
        "duration": 1.5,
        "status": "exited",
        "errors": 0,
        "attrs": dict(ATTRS),
    }
    doc.update(fields)
    return doc


def _aggregates(*started: float, **fields: Any) -> dict[str, Any]:
    buckets = [{"started": _iso(s), "did": "user-7", "exited": 2} for s in started]
    return {"aggregates": buckets, "attrs": dict(ATTRS), **fields}


# --- the release, as Sentry accepts one ---------------------------------------------


@pytest.mark.parametrize(
    "release",
    [
        "shop@1.4.2",
        "",
        "with spaces ",
        "a" * 200,
        "é" * 100,
        "latest-2",
        "Latest.1",
        "v1..2",
        "u\u2028",
    ],
)
def test_releases_sentry_accepts(release: str) -> None:
    assert valid_release(release)


@pytest.mark.parametrize(
    "release",
    [
        "a" * 201,
        "é" * 101,  # 202 bytes: the limit is in bytes
        ".",
        "..",
        "latest",
        "LATEST",
        "LaTeSt",
        "feature/login",
        "a\\b",
        "a\nb",
        "a\rb",
        "a\tb",
        "a\x00b",
        "a\x1fb",
        "a\x7fb",
    ],
)
def test_releases_sentry_refuses(release: str) -> None:
    assert not valid_release(release)


# --- timestamps, as Sentry reads a session's -----------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("2026-12-04T00:00:00Z", NOW),
        ("2026-12-04T00:00:00.250000Z", NOW + 0.25),
        ("2026-12-04t00:00:00z", NOW),
        ("2026-12-04 00:00:00+00:00", NOW),
        ("2026-12-04T01:00:00+0100", NOW),
        ("2026-12-03T23:00:00-01:00", NOW),
        ("2026-12-04T00:00:00 UTC", NOW),
        ("2026-12-4T0:0:0Z", NOW),
        ("2026-12-04T00:00:60Z", NOW + 60),  # a leap second
    ],
)
def test_timestamps_that_read(text: str, seconds: float) -> None:
    assert parse_timestamp(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "value",
    [
        "2026-12-04T00:00:00",  # no offset: Sentry reads none
        "2026-12-04",
        "2026-02-30T00:00:00Z",
        "2026-13-01T00:00:00Z",
        "2026-12-04T24:00:00Z",
        "2026-12-04T00:00:00+24:00",
        "yesterday",
        NOW,  # a number is no session timestamp
        None,
    ],
)
def test_timestamps_that_do_not_read(value: object) -> None:
    assert parse_timestamp(value) is None


# --- a session update --------------------------------------------------------------


def test_a_complete_session_passes() -> None:
    assert check("session", _session(), NOW + 2) == Verdict()


@pytest.mark.parametrize(
    "fields",
    [
        {"status": "some_new_status"},  # Sentry counts it as errored
        {"attrs": {**ATTRS, "environment": "none"}},  # Sentry removes the environment
        {"attrs": {**ATTRS, "ip_address": "{{auto}}"}},
        {"attrs": {"release": "shop@1.4.2", "ip_address": "2001:db8::1", "user_agent": None}},
        {"did": None, "duration": None, "abnormal_mechanism": "anr_foreground"},
        {"sid": str(uuid.uuid4())},
        {"whatever": [1, 2, 3]},  # fields Sentry does not know
    ],
)
def test_what_sentry_keeps_is_kept(fields: dict[str, Any]) -> None:
    assert check("session", _session(**fields), NOW + 2) == Verdict()


@pytest.mark.parametrize(
    "change",
    [
        {"started": None},
        {"started": "2026-12-04T00:00:00"},
        {"timestamp": None},
        {"attrs": None},
        {"attrs": {"environment": "production"}},  # no release
        {"attrs": {"release": None}},
        {"attrs": {**ATTRS, "ip_address": "not an address"}},
        {"attrs": {**ATTRS, "environment": 5}},
        {"sid": "not-a-uuid"},
        {"sid": None},
        {"did": 42},
        {"seq": -1},
        {"init": None},
        {"status": None},
        {"errors": -1},
        {"errors": 1.5},
        {"errors": True},
        {"duration": "long"},
        {"abnormal_mechanism": 1},
    ],
)
def test_what_sentry_cannot_read_is_an_invalid_session(change: dict[str, Any]) -> None:
    doc = _session(**change)
    assert check("session", doc, NOW + 2) == Verdict(sessions.INVALID_SESSION)
    doc = _session()
    for key in change:
        doc.pop(key, None)
    if set(change) & {"started", "attrs"}:
        assert check("session", doc, NOW + 2) == Verdict(sessions.INVALID_SESSION)
    else:  # the field may be absent
        assert check("session", doc, NOW + 2) == Verdict()


def test_a_release_sentry_refuses_drops_the_session() -> None:
    doc = _session(attrs={**ATTRS, "release": "latest"})
    assert check("session", doc, NOW + 2) == Verdict(sessions.INVALID_RELEASE)


@pytest.mark.parametrize(
    ("started", "kept"),
    [
        (NOW - MAX_SECS_IN_PAST, True),
        (NOW - MAX_SECS_IN_PAST - 1, False),
        (NOW + MAX_SECS_IN_FUTURE, True),
        (NOW + MAX_SECS_IN_FUTURE + 1, False),
    ],
)
def test_started_within_five_days_before_and_a_minute_after_receipt(
    started: float, kept: bool
) -> None:
    doc = _session(started, timestamp=_iso(started))
    assert check("session", doc, NOW) == (Verdict() if kept else Verdict(sessions.TIMESTAMP))


def test_timestamp_too_is_checked() -> None:
    late = _session(NOW, timestamp=_iso(NOW + MAX_SECS_IN_FUTURE + 1))
    assert check("session", late, NOW) == Verdict(sessions.TIMESTAMP)


def test_a_timestamp_before_started_counts_as_started() -> None:
    # Sentry moves it to `started`: a timestamp far in the past is then no reason to drop.
    doc = _session(NOW, timestamp=_iso(NOW - 30 * DAY))
    assert check("session", doc, NOW) == Verdict()


def test_clock_drift_is_corrected_first() -> None:
    # The SDK's clock is a day behind: its session looks six days old, its `sent_at` a day.
    doc = _session(NOW - 6 * DAY, timestamp=_iso(NOW - 6 * DAY))
    assert check("session", doc, NOW) == Verdict(sessions.TIMESTAMP)
    assert check("session", doc, NOW, _iso(NOW - DAY)) == Verdict()
    # Two hours ahead: its session looks to come from the future.
    ahead = _session(NOW + 7200, timestamp=_iso(NOW + 7200))
    assert check("session", ahead, NOW) == Verdict(sessions.TIMESTAMP)
    assert check("session", ahead, NOW, _iso(NOW + 7200)) == Verdict()


def test_drift_under_55_minutes_is_network_delay_not_drift() -> None:
    started = NOW - MAX_SECS_IN_PAST - 600
    doc = _session(started, timestamp=_iso(started))
    assert check("session", doc, NOW, _iso(NOW - 54 * 60)) == Verdict(sessions.TIMESTAMP)
    assert check("session", doc, NOW, _iso(NOW - 56 * 60)) == Verdict()


def test_without_timestamp_the_time_of_receipt_is_corrected_too() -> None:
    # As Sentry: the missing timestamp is taken as "now" and then moved by the drift, so an
    # SDK a day behind lands a day in the future.
    doc = _session(NOW - DAY)
    del doc["timestamp"]
    assert check("session", doc, NOW) == Verdict()
    assert check("session", doc, NOW, _iso(NOW - DAY)) == Verdict(sessions.TIMESTAMP)


# --- session aggregates ------------------------------------------------------------


def test_aggregates_keep_their_buckets_in_the_window() -> None:
    doc = _aggregates(NOW - 6 * DAY, NOW - 60, NOW + 120)
    verdict = check("sessions", doc, NOW)
    assert verdict == Verdict(None, (0, 2))
    kept = without_buckets(doc, verdict.stale)
    assert kept == {"aggregates": [doc["aggregates"][1]], "attrs": ATTRS}


def test_aggregates_with_no_bucket_left_are_dropped() -> None:
    assert check("sessions", _aggregates(NOW - 6 * DAY, NOW - 7 * DAY), NOW) == Verdict(
        sessions.TIMESTAMP
    )
    assert check("sessions", _aggregates(), NOW) == Verdict(sessions.INVALID_SESSION)


def test_aggregate_buckets_are_drift_corrected() -> None:
    doc = _aggregates(NOW - 6 * DAY)
    assert check("sessions", doc, NOW, _iso(NOW - DAY)) == Verdict()


@pytest.mark.parametrize(
    "doc",
    [
        {"aggregates": [{"exited": 1}], "attrs": ATTRS},  # a bucket without `started`
        {"aggregates": [{"started": _iso(NOW), "exited": -1}], "attrs": ATTRS},
        {"aggregates": [{"started": _iso(NOW), "crashed": 2**32}], "attrs": ATTRS},
        {"aggregates": [{"started": _iso(NOW), "did": 7}], "attrs": ATTRS},
        {"aggregates": None, "attrs": ATTRS},
        {"aggregates": [{"started": _iso(NOW)}]},  # no attrs
    ],
)
def test_aggregates_sentry_cannot_read(doc: dict[str, Any]) -> None:
    assert check("sessions", doc, NOW) == Verdict(sessions.INVALID_SESSION)


def test_aggregates_with_a_release_sentry_refuses() -> None:
    doc = _aggregates(NOW, attrs={"release": "latest"})
    assert check("sessions", doc, NOW) == Verdict(sessions.INVALID_RELEASE)
    most = {"started": _iso(NOW), "errored": 2**32 - 1}
    assert check("sessions", {"aggregates": [most], "attrs": ATTRS}, NOW) == Verdict()


# --- in the pipeline ---------------------------------------------------------------


def _envelope(*items: tuple[str, bytes], sent_at: float | None = None) -> bytes:
    header = {} if sent_at is None else {"sent_at": _iso(sent_at)}
    lines = [orjson.dumps(header)]
    for item_type, payload in items:
        lines += [orjson.dumps({"type": item_type}), payload]
    return b"\n".join(lines) + b"\n"


def test_the_pipeline_drops_them_with_an_outcome_and_trims_aggregates() -> None:
    ctx = RequestContext(42, KEY, received_at=NOW)
    body = _envelope(
        ("session", orjson.dumps(_session(NOW - 6 * DAY))),
        ("session", b"not json"),
        ("session", orjson.dumps(_session(NOW - 60))),
        ("sessions", orjson.dumps(_aggregates(NOW - 6 * DAY, NOW - 60, NOW - 7 * DAY))),
    )
    prepared = pipeline.prepare(parse_envelope(body), ctx)
    assert [
        (d.outcome.kind, d.outcome.reason, d.outcome.category, d.outcome.quantity)
        for d in prepared.dropped
    ] == [
        (OutcomeKind.INVALID, "timestamp", "session", 1),
        (OutcomeKind.INVALID, "invalid_json", "session", 1),
        (OutcomeKind.INVALID, "timestamp", "session", 2),
    ]
    assert [w.type for w in prepared.kept] == ["session", "sessions"]
    assert prepared.quantities() == {"session": 2}  # the quota counts what is forwarded
    trimmed = orjson.loads(prepared.kept[1].item.payload)
    assert [b["started"] for b in trimmed["aggregates"]] == [_iso(NOW - 60)]


def test_a_filtered_session_stays_filtered() -> None:
    # The inbound filters run first, as in Sentry: the outcome names the filter.
    filters = compile_filters(FiltersConfig(releases=["shop@*"]), None, [])
    body = _envelope(("session", orjson.dumps(_session(NOW - 6 * DAY))))
    prepared = pipeline.prepare(
        parse_envelope(body), RequestContext(42, KEY, received_at=NOW), filters=filters
    )
    assert [(d.outcome.kind, d.outcome.reason) for d in prepared.dropped] == [
        (OutcomeKind.FILTERED, "release-version")
    ]


# --- through the relay -------------------------------------------------------------


async def _session_outcomes(relay: TestClient) -> list[str]:
    text = await (await relay.get("/metrics")).text()
    return [
        line
        for line in text.splitlines()
        if line.startswith(("relay_items_total{", "relay_item_quantity_total{"))
        and 'category="session"' in line
    ]


async def _wait_for_outcome(relay: TestClient, fragment: str) -> list[str]:
    async with asyncio.timeout(10):
        while True:
            lines = await _session_outcomes(relay)
            if any(fragment in line for line in lines):
                return lines
            await asyncio.sleep(0.02)


async def test_an_envelope_of_old_and_fresh_sessions_forwards_the_fresh_ones(
    relay: TestClient, recorder: RecordingUpstream
) -> None:
    now = time.time()
    fresh = _session(now - 60)
    body = _envelope(
        ("session", orjson.dumps(_session(now - 6 * DAY))),
        ("session", orjson.dumps(fresh)),
        ("sessions", orjson.dumps(_aggregates(now - 6 * DAY, now - 60, now + 3600))),
        ("session", orjson.dumps(_session(now, attrs={"release": "feature/login"}))),
        sent_at=now,
    )
    resp = await relay.post("/api/42/envelope/", data=body, headers=auth_header())
    assert resp.status == 200
    await recorder.wait_for(1)
    (forwarded,) = [orjson.loads(i.payload) for i in recorder.items("session")]
    assert forwarded["sid"] == fresh["sid"]
    (aggregate,) = [orjson.loads(i.payload) for i in recorder.items("sessions")]
    assert [b["started"] for b in aggregate["aggregates"]] == [_iso(now - 60)]
    lines = await _wait_for_outcome(relay, 'outcome="invalid",reason="timestamp"')
    assert 'relay_items_total{category="session",outcome="invalid",reason="timestamp"} 2.0' in lines
    assert (
        'relay_items_total{category="session",outcome="invalid",reason="invalid_release"} 1.0'
        in lines
    )
    # One old session, two old buckets, one bad release: four sessions not forwarded.
    assert 'relay_item_quantity_total{category="session",outcome="invalid"} 4.0' in lines


@pytest.mark.parametrize(("release", "forwarded"), [("shop@1.4.2", True), ("latest", False)])
async def test_the_sdks_session_is_forwarded_unless_sentry_would_drop_it(
    relay: TestClient, recorder: RecordingUpstream, release: str, forwarded: bool
) -> None:
    sentry_sdk.init(
        dsn=f"http://{KEY}@127.0.0.1:{relay.port}/42",
        default_integrations=False,
        auto_enabling_integrations=False,
        release=release,
        environment="test",
    )
    client = sentry_sdk.get_client()
    try:
        scope = sentry_sdk.get_isolation_scope()
        scope.start_session()
        scope.end_session()
        # Closing sends the pending session; the SDK's thread must not block the loop.
        await asyncio.to_thread(client.close, 5)
    finally:
        if client.is_active():
            client.close(timeout=2)
    sent = [i for i in recorder.items() if i.type in ("session", "sessions")]
    if forwarded:
        await recorder.wait_for(1)
        sent = [i for i in recorder.items() if i.type in ("session", "sessions")]
        (session,) = [orjson.loads(i.payload) for i in sent]
        assert session["attrs"]["release"] == release
        assert all('outcome="invalid"' not in line for line in await _session_outcomes(relay))
    else:
        lines = await _wait_for_outcome(relay, 'reason="invalid_release"')
        assert (
            'relay_items_total{category="session",outcome="invalid",reason="invalid_release"} 1.0'
            in lines
        )
        assert not sent
