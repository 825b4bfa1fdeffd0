"""Inbound filters on security reports, OTel logs and standalone spans, as Sentry filters them.

Security reports (`raw_security` items, the security and CSP endpoints) are filtered as the
event Sentry makes of each: every filter reads it, with the client's address as the user's,
the request's User-Agent, the release and environment of the endpoint's query, and the
message Sentry writes for the report. An OTel log (`otel_log`) and a standalone span (a
`span` item holding one v1 span) are filtered as one log or span record, once converted as
Sentry converts them.
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import orjson
import pytest

from relay.config.noise import FiltersConfig
from relay.keys import INGEST
from relay.outcomes import OutcomeKind
from relay.processing import pipeline
from relay.processing.context import RequestContext
from relay.processing.filters import (
    FilterHit,
    Filters,
    compile_filters,
    otel_log_record,
    security_event,
    span_v1_record,
)
from relay.protocol.envelope import Envelope, make_envelope
from relay.protocol.security import security_report_envelopes
from tests.support.relay import KEY, RelayFactory, auth_header
from tests.support.upstream import RecordingUpstream

CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36"
)
IE8 = "Mozilla/4.0 (compatible; MSIE 8.0; Windows NT 6.1; Trident/4.0)"
GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
CTX = RequestContext(42, KEY, "203.0.113.9", CHROME)

CSP = {
    "csp-report": {
        "document-uri": "https://shop.example.com/checkout",
        "referrer": "https://shop.example.com/",
        "violated-directive": "script-src 'self'",
        "effective-directive": "script-src",
        "blocked-uri": "https://evil.example.net/x.js?token=1",
        "source-file": "https://shop.example.com/static/app.js",
    }
}
EXPECT_CT = {"expect-ct-report": {"hostname": "shop.example.com", "port": 443}}
HPKP = {"hostname": "shop.example.com", "port": 443, "known-pins": ['pin-sha256="x"']}
EXPECT_STAPLE = {"expect-staple-report": {"hostname": "shop.example.com", "port": 443}}


def _filters(**config: Any) -> Filters:
    return compile_filters(msgspec.convert(config, FiltersConfig), None)


def _security(
    report: dict[str, Any], query: dict[str, str] | None = None, content_type: str | None = None
) -> Envelope:
    media = content_type or (
        "application/reports+json" if isinstance(report, list) else "application/csp-report"
    )
    (envelope,) = security_report_envelopes(orjson.dumps(report), media, query or {})
    return envelope


def _only_drop(prepared: pipeline.Prepared) -> pipeline.Dropped:
    (drop,) = prepared.dropped
    return drop


# --- security reports: the event Sentry makes of them ---------------------------------------


def test_a_csp_report_becomes_the_event_sentry_filters() -> None:
    headers = {"sentry_release": "1.0-rc1", "sentry_environment": "staging"}
    assert security_event(CSP, headers, CTX) == {
        "type": "csp",
        "csp": {
            "blocked_uri": "https://evil.example.net/x.js?token=1",
            "source_file": "https://shop.example.com/static/app.js",
        },
        "logentry": {"formatted": "Blocked 'script' from 'evil.example.net'"},
        "request": {
            "url": "https://shop.example.com/checkout",
            "headers": [["Referer", "https://shop.example.com/"], ["User-Agent", CHROME]],
        },
        "user": {"ip_address": "203.0.113.9"},
        "release": "1.0-rc1",
        "environment": "staging",
    }


@pytest.mark.parametrize(
    ("report", "kind", "message"),
    [
        (EXPECT_CT, "expectct", "Expect-CT failed for 'shop.example.com'"),
        (HPKP, "hpkp", "Public key pinning validation failed for 'shop.example.com'"),
        (EXPECT_STAPLE, "expectstaple", "Expect-Staple failed for 'shop.example.com'"),
    ],
)
def test_other_reports_name_their_host(report: dict[str, Any], kind: str, message: str) -> None:
    event = security_event(report, {}, CTX)
    assert event is not None
    assert event["type"] == kind
    assert event["logentry"] == {"formatted": message}
    assert event["request"]["url"] == "shop.example.com"
    assert event["user"] == {"ip_address": "203.0.113.9"}


#: (CSP report fields, the message Sentry writes): Sentry's own examples, then its rules.
CSP_MESSAGES = [
    (
        {
            "violated-directive": "style-src cdn.example.com",
            "blocked-uri": "http://example.com/lol.css",
            "effective-directive": "style-src",
        },
        "Blocked 'style' from 'example.com'",
    ),
    ({"effective-directive": "script-src"}, "Blocked unsafe (eval() or inline) 'script'"),
    (
        {"violated-directive": "default-src self", "blocked-uri": "http://evilhackerscripts.com"},
        "Blocked 'default-src' from 'evilhackerscripts.com'",
    ),
    (
        {"violated-directive": "script-src", "blocked-uri": "http://baddomain.com/test.js?_=15"},
        "Blocked 'script' from 'baddomain.com'",
    ),
    (
        {"effectiveDirective": "script-src", "blockedURL": "inline"},
        "Blocked unsafe inline 'script'",
    ),
    (
        {"effective-directive": "script-src", "blocked-uri": "eval"},
        "Blocked unsafe eval() 'script'",
    ),
    ({"effective-directive": "img-src", "blocked-uri": "self"}, "Blocked inline 'image'"),
    ({"effective-directive": "frame-src", "blocked-uri": ""}, "Blocked inline 'frame-src'"),
    (
        {"effective-directive": "form-action", "blocked-uri": "https://pay.example.org:8443/x"},
        "Blocked 'form' action to 'pay.example.org:8443'",
    ),
    (
        {"effective-directive": "connect-src", "blocked-uri": "wss://Live.Example.org:443/s"},
        "Blocked 'connect' from 'wss://live.example.org'",
    ),
    ({"effective-directive": "img-src", "blocked-uri": "data"}, "Blocked 'image' from 'data:'"),
    ({"effective-directive": "img-src", "blocked-uri": "http"}, "Blocked 'image' from 'http://'"),
    (
        {"effective-directive": "img-src", "blocked-uri": "data:image/png;base64,AAAA"},
        "Blocked 'image' from 'data:'",
    ),
    (
        {"effective-directive": "script-src", "blocked-uri": "chrome-extension://abc/x.js"},
        "Blocked 'script' from 'chrome-extension://abc'",
    ),
    (
        {"effective-directive": "script-src", "blocked-uri": "data://notlocalhost/"},
        "Blocked 'script' from 'data://notlocalhost'",
    ),
    (
        {"effective-directive": "script-src", "blocked-uri": "http://notlocalhost:8000/lol.css"},
        "Blocked 'script' from 'notlocalhost:8000'",
    ),
    (
        {"effective-directive": "script-src", "blocked-uri": "xyz://notlocalhost/"},
        "Blocked 'script' from 'xyz://notlocalhost'",
    ),
    # The effective directive's first word; a wrong one leaves the violated directive's.
    (
        {
            "effective-directive": "bogus",
            "violated-directive": "font-src 'self'",
            "blocked-uri": "https://f.example.com/a.woff",
        },
        "Blocked 'font' from 'f.example.com'",
    ),
]


@pytest.mark.parametrize(("fields", "message"), CSP_MESSAGES)
def test_csp_messages_are_sentrys(fields: dict[str, Any], message: str) -> None:
    for report in ({"csp-report": fields}, {"type": "csp-violation", "body": fields}):
        event = security_event(report, {}, CTX)
        assert event is not None and event["logentry"] == {"formatted": message}


def test_reports_sentry_would_not_read_give_what_they_can() -> None:
    # No directive Sentry knows: no message, but still the CSP interface and the sender.
    event = security_event({"csp-report": {"blocked-uri": "about"}}, {}, CTX)
    assert event is not None and "logentry" not in event
    assert event["csp"]["blocked_uri"] == "about"
    assert event["user"] == {"ip_address": "203.0.113.9"}
    assert security_event({"expect-ct-report": {"port": 1}}, {}, CTX) == {
        "type": "expectct",
        "expectct": {"hostname": None},
        "request": {"url": None, "headers": [["User-Agent", CHROME]]},
        "user": {"ip_address": "203.0.113.9"},
    }
    for other in ({"csp-report": "x"}, {"type": "deprecation", "body": {}}, {"nope": 1}):
        assert security_event(other, {}, CTX) is None
    # Headers that are no strings are no release (as Sentry reads them).
    assert "release" not in (security_event(CSP, {"sentry_release": 7}, CTX) or {})


@pytest.mark.parametrize(
    ("config", "query", "ctx", "reason", "rule"),
    [
        ({"releases": ["1.0-*"]}, {"sentry_release": "1.0-rc1"}, CTX, "release-version", "1.0-*"),
        (
            {"environments": ["staging"]},
            {"sentry_environment": "staging"},
            CTX,
            "environment",
            "staging",
        ),
        ({"client_ips": ["203.0.113.0/24"]}, {}, CTX, "ip-address", "203.0.113.0/24"),
        (
            {"web_crawlers": True},
            {},
            RequestContext(42, KEY, "203.0.113.9", GOOGLEBOT),
            "web-crawlers",
            "Googlebot",
        ),
        (
            {"legacy_browsers": True},
            {},
            RequestContext(42, KEY, "203.0.113.9", IE8),
            "legacy-browsers",
            "default",
        ),
        (
            {"localhost": True},
            {},
            RequestContext(42, KEY, "127.0.0.1", CHROME),
            "localhost",
            "user.ip_address",
        ),
        (
            {"error_messages": ["Blocked 'script' from *"]},
            {},
            CTX,
            "error-message",
            "Blocked 'script' from *",
        ),
    ],
)
def test_every_filter_reads_a_security_report(
    config: dict[str, Any],
    query: dict[str, str],
    ctx: RequestContext,
    reason: str,
    rule: str,
) -> None:
    prepared = pipeline.prepare(_security(CSP, query), ctx, filters=_filters(**config))
    assert prepared.kept == []
    drop = _only_drop(prepared)
    outcome = drop.outcome
    assert (outcome.kind, outcome.reason, outcome.rule) == (OutcomeKind.FILTERED, reason, rule)
    assert (outcome.category, outcome.quantity, drop.dry_run) == ("security", 1, False)


@pytest.mark.parametrize("report", [EXPECT_CT, HPKP, EXPECT_STAPLE])
def test_expect_ct_hpkp_and_expect_staple_reports_are_filtered_too(report: dict[str, Any]) -> None:
    media = "application/json"
    filters = _filters(releases=["1.0-*"], error_messages=["*failed for 'internal.example'"])
    envelope = _security(report, {"sentry_release": "1.0-rc1"}, media)
    drop = _only_drop(pipeline.prepare(envelope, CTX, filters=filters))
    assert (drop.outcome.reason, drop.outcome.category) == ("release-version", "security")
    filters = _filters(error_messages=["*failed for 'shop.example.com'"])
    drop = _only_drop(pipeline.prepare(_security(report, {}, media), CTX, filters=filters))
    assert drop.outcome.reason == "error-message"


def test_a_report_from_a_local_page_is_localhost() -> None:
    report = {"csp-report": {**CSP["csp-report"], "document-uri": "http://localhost:3000/"}}
    drop = _only_drop(pipeline.prepare(_security(report), CTX, filters=_filters(localhost=True)))
    assert (drop.outcome.reason, drop.outcome.rule) == ("localhost", "request.url")


def test_reporting_api_reports_and_the_csp_filter_still_work() -> None:
    batch = [{"type": "csp-violation", "body": {**CSP["csp-report"]}}]
    filters = _filters(releases=["1.0-*"])
    drop = _only_drop(
        pipeline.prepare(_security(batch, {"sentry_release": "1.0-x"}), CTX, filters=filters)
    )
    assert drop.outcome.reason == "release-version"
    extension = {"csp-report": {"blocked-uri": "chrome-extension://abc/x.js"}}
    drop = _only_drop(pipeline.prepare(_security(extension), CTX, filters=_filters(csp=True)))
    assert (drop.outcome.reason, drop.outcome.rule) == ("invalid-csp", "chrome-extension://*")


def test_a_security_report_passing_every_filter_is_kept() -> None:
    filters = _filters(
        releases=["1.0-*"],
        environments=["local"],
        client_ips=["10.0.0.0/8"],
        web_crawlers=True,
        legacy_browsers=True,
        localhost=True,
        error_messages=["*'image'*"],
        csp=True,
    )
    prepared = pipeline.prepare(_security(CSP, {"sentry_release": "2.0"}), CTX, filters=filters)
    assert [w.type for w in prepared.kept] == ["raw_security"] and prepared.dropped == []
    # One Sentry would not convert is forwarded as it came, whatever the filters.
    odd = make_envelope({}, [({"type": "raw_security"}, b'{"type": "deprecation", "body": {}}')])
    prepared = pipeline.prepare(odd, CTX, filters=_filters(client_ips=["0.0.0.0/0"]))
    assert len(prepared.kept) == 1 and prepared.dropped == []


def test_a_dry_run_filter_keeps_the_report() -> None:
    filters = _filters(releases={"globs": ["1.0-*"], "mode": "dry_run"})
    prepared = pipeline.prepare(_security(CSP, {"sentry_release": "1.0-rc1"}), CTX, filters=filters)
    assert len(prepared.kept) == 1
    drop = _only_drop(prepared)
    assert drop.dry_run and drop.outcome.reason == "release-version"


def test_a_filtered_report_takes_its_attachments_with_it() -> None:
    envelope = make_envelope(
        {"event_id": "ab" * 16},
        [
            ({"type": "raw_security", "sentry_release": "1.0-rc1"}, orjson.dumps(CSP)),
            ({"type": "attachment", "filename": "page.html"}, b"<html></html>"),
        ],
    )
    prepared = pipeline.prepare(envelope, CTX, filters=_filters(releases=["1.0-*"]))
    assert prepared.kept == []
    assert [(d.work.type, d.outcome.reason, d.outcome.category) for d in prepared.dropped] == [
        ("raw_security", "release-version", "security"),
        ("attachment", "release-version", "attachment"),
    ]


def test_a_security_event_counts_the_sender_as_its_user() -> None:
    # A `security` item (a report already made an event, e.g. sent to the store endpoint):
    # Sentry's normalization makes the sender its user, whatever the event says.
    event = {"type": "csp", "csp": {"blocked_uri": "https://a.example/"}, "user": {"id": "1"}}
    envelope = make_envelope({}, [({"type": "security"}, orjson.dumps(event))])
    local = RequestContext(42, KEY, "127.0.0.1", CHROME)
    drop = _only_drop(pipeline.prepare(envelope, local, filters=_filters(localhost=True)))
    assert (drop.outcome.reason, drop.outcome.rule) == ("localhost", "user.ip_address")
    # An error event is not a security report: its user is its own.
    error = make_envelope({}, [({"type": "event"}, orjson.dumps({"message": "x"}))])
    assert _filters(localhost=True).check({"message": "x"}, "event", local) is None
    assert len(pipeline.prepare(error, local, filters=_filters(localhost=True)).kept) == 1


async def _post_report(relay: Any, path: str, query: str, body: dict[str, Any]) -> None:
    resp = await relay.post(
        f"/api/42/{path}/?sentry_key={KEY}{query}",
        data=orjson.dumps(body),
        headers={"Content-Type": "application/csp-report", "User-Agent": CHROME},
    )
    assert resp.status == 200, await resp.text()


async def test_the_endpoints_filter_by_the_querys_release_and_environment(
    relay_factory: RelayFactory, recorder: RecordingUpstream
) -> None:
    relay = await relay_factory(
        policy={"filters": {"releases": ["1.0-*"], "environments": ["staging"]}}
    )
    await _post_report(relay, "security", "&sentry_release=1.0-rc1", CSP)
    await _post_report(relay, "csp-report", "&sentry_environment=staging", CSP)
    await _post_report(relay, "security", "&sentry_release=2.0&sentry_environment=prod", CSP)
    await recorder.wait_for(1)
    await asyncio.sleep(0.1)
    assert [item.headers.get("sentry_release") for e in recorder.envelopes for item in e.items] == [
        "2.0"
    ]
    metrics = await (await relay.get("/metrics")).text()
    for reason in ("release-version", "environment"):
        line = f'relay_items_total{{category="security",outcome="filtered",reason="{reason}"}} 1.0'
        assert line in metrics


# --- OTel logs ---------------------------------------------------------------------------------


def _otel_attr(key: str, value: Any) -> dict[str, Any]:
    kind = {str: "stringValue", bool: "boolValue", int: "intValue", float: "doubleValue"}
    return {"key": key, "value": {kind[type(value)]: value}}


def _otel_log(body: str = "paid", **attributes: Any) -> dict[str, Any]:
    return {
        "timeUnixNano": "1795313236500000000",
        "severityNumber": 9,
        "severityText": "info",
        "traceId": "86f2111e292348f990b40c2f7ff035f3",
        "spanId": "bbbbbbbbbbbbbbbb",
        "body": {"stringValue": body},
        "attributes": [_otel_attr(k.replace("__", "."), v) for k, v in attributes.items()],
    }


def _items(*items: tuple[str, Any]) -> Envelope:
    return make_envelope({}, [({"type": t}, orjson.dumps(p)) for t, p in items])


def test_an_otel_log_becomes_the_log_sentry_filters() -> None:
    log = _otel_log(
        "paid ✓",
        sentry__release="1.0",
        count=3,
        ratio=0.5,
        ok=True,
    )
    log["attributes"].append({"key": "tags", "value": {"arrayValue": {"values": []}}})
    log["attributes"].append({"key": "n", "value": {"intValue": "12"}})
    assert otel_log_record(log) == {
        "body": "paid ✓",
        "attributes": {
            "sentry.release": {"type": "string", "value": "1.0"},
            "count": {"type": "integer", "value": 3},
            "ratio": {"type": "double", "value": 0.5},
            "ok": {"type": "boolean", "value": True},
            "n": {"type": "integer", "value": 12},
        },
    }
    assert otel_log_record({"body": {"intValue": 1}, "attributes": "x"}) == {
        "body": "",
        "attributes": {},
    }


@pytest.mark.parametrize(
    ("config", "attributes", "ctx", "reason", "rule"),
    [
        ({"releases": ["1.0-*"]}, {"sentry__release": "1.0-rc1"}, CTX, "release-version", "1.0-*"),
        ({"client_ips": ["203.0.113.9"]}, {}, CTX, "ip-address", "203.0.113.9"),
        (
            {"web_crawlers": True},
            {"user_agent__original": GOOGLEBOT},
            CTX,
            "web-crawlers",
            "Googlebot",
        ),
        (
            {"web_crawlers": True},
            {},
            RequestContext(42, KEY, "203.0.113.9", GOOGLEBOT),
            "web-crawlers",
            "Googlebot",
        ),
        (
            {"legacy_browsers": ["ie9"]},
            {"browser__name": "IE", "browser__version": "9.0"},
            CTX,
            "legacy-browsers",
            "ie9",
        ),
    ],
)
def test_an_otel_log_is_filtered_as_a_log(
    config: dict[str, Any],
    attributes: dict[str, Any],
    ctx: RequestContext,
    reason: str,
    rule: str,
) -> None:
    log = _otel_log("paid", **attributes)
    prepared = pipeline.prepare(_items(("otel_log", log)), ctx, filters=_filters(**config))
    assert prepared.kept == []
    drop = _only_drop(prepared)
    outcome = drop.outcome
    assert (outcome.kind, outcome.reason, outcome.rule) == (OutcomeKind.FILTERED, reason, rule)
    assert (outcome.category, outcome.quantity) == ("log_item", 1)
    size = pipeline.log_byte_size(otel_log_record(log))
    assert drop.report == [("log_item", 1), ("log_byte", size)]


def test_an_otel_log_is_read_only_by_the_filters_sentry_applies_to_logs() -> None:
    log = _otel_log(
        "GET /healthz",
        sentry__environment="local",
        sentry__segment__name="GET /healthz",
        user_agent__original=CHROME,
    )
    filters = _filters(
        environments=["local"],
        transactions=["GET /*"],
        error_messages=["*"],
        localhost=True,
        legacy_browsers=True,
    )
    local = RequestContext(42, KEY, "127.0.0.1", CHROME)
    prepared = pipeline.prepare(_items(("otel_log", log)), local, filters=filters)
    assert len(prepared.kept) == 1 and prepared.dropped == []


def test_a_dry_run_hit_keeps_the_otel_log_and_junk_is_forwarded() -> None:
    filters = _filters(client_ips={"ips": ["203.0.113.0/24"], "mode": "dry_run"})
    prepared = pipeline.prepare(_items(("otel_log", _otel_log())), CTX, filters=filters)
    assert len(prepared.kept) == 1
    assert _only_drop(prepared).dry_run
    junk = make_envelope({}, [({"type": "otel_log"}, b"not json"), ({"type": "otel_log"}, b"[1]")])
    prepared = pipeline.prepare(junk, CTX, filters=_filters(client_ips=["0.0.0.0/0"]))
    assert len(prepared.kept) == 2 and prepared.dropped == []


def test_each_otel_log_of_an_envelope_is_filtered_on_its_own() -> None:
    envelope = _items(
        ("otel_log", _otel_log("old", sentry__release="1.0-rc1")),
        ("otel_log", _otel_log("new", sentry__release="2.0")),
    )
    prepared = pipeline.prepare(envelope, CTX, filters=_filters(releases=["1.0-*"]))
    (kept,) = prepared.kept
    assert orjson.loads(kept.item.payload)["body"] == {"stringValue": "new"}
    assert _only_drop(prepared).outcome.reason == "release-version"


async def test_the_upstream_never_gets_a_filtered_otel_log(
    relay_factory: RelayFactory, recorder: RecordingUpstream
) -> None:
    relay = await relay_factory(
        policy={"filters": {"releases": ["1.0-*"]}}, upstream={"client_reports_interval": 100}
    )
    old = _otel_log("old", sentry__release="1.0-rc1")
    body = _items(("otel_log", old), ("otel_log", _otel_log("new"))).serialize()
    resp = await relay.post("/api/42/envelope/", data=body, headers=auth_header())
    assert resp.status == 200
    await recorder.wait_for(1)
    (item,) = recorder.envelopes[0].items
    assert orjson.loads(item.payload)["body"] == {"stringValue": "new"}
    metrics = await (await relay.get("/metrics")).text()
    assert (
        'relay_items_total{category="log_item",outcome="filtered",reason="release-version"} 1.0'
        in metrics
    )
    pending = [dict(counts) for counts in relay.app[INGEST].client_reports._counts.values()]
    assert pending == [
        {
            ("filtered_events", "release-version", "log_item"): 1,
            ("filtered_events", "release-version", "log_byte"): pipeline.log_byte_size(
                otel_log_record(old)
            ),
        }
    ]


# --- standalone spans ------------------------------------------------------------------------


def _span(**data: Any) -> dict[str, Any]:
    return {
        "trace_id": "86f2111e292348f990b40c2f7ff035f3",
        "span_id": "b" * 16,
        "op": "http.server",
        "start_timestamp": 1_795_313_236.0,
        "timestamp": 1_795_313_236.5,
        "data": {k.replace("__", "."): v for k, v in data.items()},
    }


def test_a_v1_span_becomes_the_v2_span_sentry_filters() -> None:
    span = _span(release=12, transaction="GET /a", browser__name="Chrome", user_agent__original=5)
    span["tags"] = {"sentry.release": "ignored", "team": "web", "n": 1}
    span["sentry_tags"] = {"release": "also ignored", "browser.name": "Chrome", "description": ""}
    attributes = span_v1_record(span)["attributes"]
    assert attributes["sentry.release"] == {"type": "string", "value": "12"}
    assert attributes["sentry.segment.name"] == {"type": "string", "value": "GET /a"}
    assert "user_agent.original" not in attributes  # not text: no value
    assert attributes["team"] == {"type": "string", "value": "web"}
    assert attributes["n"] == {"type": "string", "value": "1"}
    assert attributes["sentry.browser.name"] == {"type": "string", "value": "Chrome"}
    assert "sentry.normalized_description" not in attributes
    # The field's own name wins over its old one; `sentry_tags` fill in what `data` lacks.
    both = _span(**{"sentry.segment.name": "GET /new", "transaction": "GET /old"})
    both["sentry_tags"] = {"release": "3.0"}
    attributes = span_v1_record(both)["attributes"]
    assert attributes["sentry.segment.name"]["value"] == "GET /new"
    assert attributes["sentry.release"]["value"] == "3.0"


@pytest.mark.parametrize(
    ("config", "span", "ctx", "reason", "rule"),
    [
        ({}, _span(transaction="GET /healthz"), CTX, "health-check", "*/healthz"),
        (
            {"transactions": ["GET /static/*"]},
            _span(**{"sentry.segment.name": "GET /static/a.js"}),
            CTX,
            "filtered-transaction",
            "GET /static/*",
        ),
        ({"releases": ["1.0-*"]}, _span(release="1.0-rc1"), CTX, "release-version", "1.0-*"),
        ({"client_ips": ["203.0.113.0/24"]}, _span(), CTX, "ip-address", "203.0.113.0/24"),
        (
            {"web_crawlers": True},
            _span(user_agent__original=GOOGLEBOT),
            CTX,
            "web-crawlers",
            "Googlebot",
        ),
        (
            {"legacy_browsers": True},
            _span(),
            RequestContext(42, KEY, "203.0.113.9", IE8),
            "legacy-browsers",
            "default",
        ),
    ],
)
def test_a_standalone_span_is_filtered_as_a_span(
    config: dict[str, Any], span: dict[str, Any], ctx: RequestContext, reason: str, rule: str
) -> None:
    prepared = pipeline.prepare(_items(("span", span)), ctx, filters=_filters(**config))
    assert prepared.kept == []
    drop = _only_drop(prepared)
    outcome = drop.outcome
    assert (outcome.kind, outcome.reason, outcome.rule) == (OutcomeKind.FILTERED, reason, rule)
    assert (outcome.category, outcome.quantity, drop.report) == ("span", 1, None)


def test_standalone_spans_are_filtered_one_by_one_and_containers_still_record_by_record() -> None:
    container = {
        "items": [
            {"trace_id": "a" * 32, "span_id": "c" * 16, "name": "x", "attributes": {}},
        ]
    }
    headers = {"type": "span", "content_type": "application/vnd.sentry.items.span.v2+json"}
    envelope = make_envelope(
        {},
        [
            ({"type": "span"}, orjson.dumps(_span(transaction="GET /healthz"))),
            ({"type": "span"}, orjson.dumps(_span(transaction="GET /checkout"))),
            ({**headers, "item_count": 1}, orjson.dumps(container)),
        ],
    )
    prepared = pipeline.prepare(envelope, CTX, filters=_filters(environments=["x"]))
    assert [orjson.loads(w.item.payload).get("data") for w in prepared.kept] == [
        {"transaction": "GET /checkout"},
        None,
    ]
    assert _only_drop(prepared).outcome.reason == "health-check"
    # Filtered spans leave the allowance of standalone spans to the others.
    many = make_envelope(
        {},
        [({"type": "span"}, orjson.dumps(_span(transaction="GET /healthz")))] * 3
        + [({"type": "span"}, orjson.dumps(_span()))] * 2,
    )
    limits = pipeline.Limits(max_standalone_spans=2)
    prepared = pipeline.prepare(many, CTX, filters=_filters(), limits=limits)
    assert len(prepared.kept) == 2
    assert {d.outcome.reason for d in prepared.dropped} == {"health-check"}


def test_filters_that_spans_lack_keep_standalone_spans() -> None:
    span = _span(environment="local", release="2.0")
    filters = _filters(environments=["local"], error_messages=["*"], localhost=True)
    local = RequestContext(42, KEY, "127.0.0.1", CHROME)
    prepared = pipeline.prepare(_items(("span", span)), local, filters=filters)
    assert len(prepared.kept) == 1 and prepared.dropped == []
    assert filters.check_item(span, "span", local) is None
    assert _filters(releases=["2.*"]).check_item(span, "span", local) == FilterHit(
        "release-version", "2.*", False
    )
