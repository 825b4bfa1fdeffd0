"""The `csp` inbound filter: Sentry's disallowed sources for CSP reports.

The matcher vectors are Sentry's own (the CSP filter tests of getsentry/relay), kept as data.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient

from relay.config import ConfigError, parse_config
from relay.config.noise import DEFAULT_CSP_SOURCES, CspFilter, FiltersConfig
from relay.policy.compile import validate_policies
from relay.processing.context import RequestContext
from relay.processing.filters import (
    FilterHit,
    OriginPattern,
    compile_filters,
    match_origin,
    security_event,
    validate_filters,
)
from relay.processing.pipeline import prepare
from relay.protocol.envelope import make_envelope
from relay.protocol.security import security_report_envelopes
from tests.support.relay import KEY, RelayFactory
from tests.support.upstream import RecordingUpstream

CTX = RequestContext(project_id=42, public_key=KEY)

# --- Sentry's vectors ------------------------------------------------------------------------

#: (source, scheme, host, port) as Sentry cuts a source up; None is "anything".
PARSED = [
    ("*", None, None, None),
    ("*://*", None, None, None),
    ("*://*:*", None, None, None),
    ("https://*", "https", None, None),
    ("https://*.abc.net", "https", "*.abc.net", None),
    ("https://*:*", "https", None, None),
    ("x.y.z", None, "x.y.z", None),
    ("x.y.z:*", None, "x.y.z", None),
    ("*://x.y.z:*", None, "x.y.z", None),
    ("*://*.x.y.z:*", None, "*.x.y.z", None),
    ("*:8000", None, None, "8000"),
    ("*://*:8000", None, None, "8000"),
    ("http://x.y.z", "http", "x.y.z", None),
    ("http://*:8000", "http", None, "8000"),
    ("abc:8000", None, "abc", "8000"),
    ("*.abc.com:8000", None, "*.abc.com", "8000"),
    ("*.com:86", None, "*.com", "86"),
    ("http://abc.com:86", "http", "abc.com", "86"),
    ("http://x.y.z:4000", "http", "x.y.z", "4000"),
    ("http://", "http", "", None),
]

#: (url, sources, matches)
ORIGINS = [
    # generic
    ("http://abc1.com", ["*://*:*", "bbc.com"], True),
    ("http://abc2.com", ["*:*", "bbc.com"], True),
    ("http://abc3.com", ["*", "bbc.com"], True),
    ("http://abc4.com", ["http://*", "bbc.com"], True),
    ("http://abc5.com", ["http://abc5.com:*", "bbc.com"], True),
    ("http://abc.com:80", ["*://*:*", "bbc.com"], True),
    ("http://abc.com:81", ["*:*", "bbc.com"], True),
    ("http://abc.com:82", ["*:82", "bbc.com"], True),
    ("http://abc.com:83", ["http://*:83", "bbc.com"], True),
    ("http://abc.com:84", ["abc.com:*", "bbc.com"], True),
    # partial domains
    ("http://abc.com:85", ["*.abc.com:85", "bbc.com"], True),
    ("http://abc.com:86", ["*.com:86"], True),
    ("http://abc.com:86", ["*.com:86", "bbc.com"], True),
    ("http://abc.def.ghc.com:87", ["*.com:87"], True),
    ("http://abc.def.ghc.com:88", ["*.ghc.com:88"], True),
    ("http://abc.def.ghc.com:89", ["*.def.ghc.com:89"], True),
    # exact
    ("http://abc.com:90", ["abc.com", "bbc.com"], True),
    ("http://abc.com:91", ["abc.com:91", "bbc.com"], True),
    ("http://abc.com:92", ["http://abc.com:92"], True),
    ("http://abc.com:93", ["http://abc.com", "bbc.com"], True),
    # any position
    ("http://abc6.com", ["abc6.com", "bbc.com"], True),
    ("http://abc7.com", ["bbc.com", "abc7.com"], True),
    ("http://abc8.com", ["bbc.com", "abc8.com", "def"], True),
    # another domain
    ("http://abc9.com", ["http://other.com", "bbc.com"], False),
    ("http://abc10.com", ["http://*.other.com", "bbc"], False),
    ("abc11.com", ["*.other.com", "bbc"], False),
    # another scheme
    ("https://abc12.com", ["http://abc12.com", "bbc.com"], False),
    # another port
    ("http://abc13.com:80", ["http://abc13.com:8080", "bbc.com"], False),
    ("http://y:80", ["http://x"], False),
]

#: The sources of Sentry's compatibility tests, and the reports they drop or keep:
#: (blocked_uri, source_file).
SENTRY_SOURCES = [
    "about",
    "ms-browser-extension",
    "*.superfish.com",
    "chrome://*",
    "chrome-extension://*",
    "chromeinvokeimmediate://*",
    "chromenull://*",
    "localhost",
]
BAD_REPORTS = [
    ("about", None),
    ("ms-browser-extension", None),
    ("http://foo.superfish.com", None),
    (None, "chrome-extension://fdsa"),
    (None, "http://localhost:8000"),
    (None, "http://localhost"),
    (None, "http://foo.superfish.com"),
]
GOOD_REPORTS = [("http://example.com", None), (None, "http://example.com"), (None, None)]


def csp_event(blocked_uri: str | None, source_file: str | None, **extra: Any) -> dict[str, Any]:
    csp = {"blocked_uri": blocked_uri, "source_file": source_file}
    return {"type": "csp", "csp": {k: v for k, v in csp.items() if v is not None}, **extra}


def check(
    cfg: FiltersConfig | None,
    event: dict[str, Any],
    item_type: str = "security",
    project: FiltersConfig | None = None,
) -> FilterHit | None:
    if item_type == "raw_security":  # a report as sent: checked as the event made of it
        made = security_event(event, {}, CTX)
        if made is None:
            return None
        event, item_type = made, "security"
    return compile_filters(cfg, project).check(event, item_type, CTX)


@pytest.mark.parametrize(("source", "scheme", "host", "port"), PARSED)
def test_sources_are_cut_up_as_sentry_does(
    source: str, scheme: str | None, host: str | None, port: str | None
) -> None:
    assert OriginPattern.parse(source) == OriginPattern(scheme, host, port)


@pytest.mark.parametrize(("url", "sources", "expected"), ORIGINS)
def test_origins_match_as_in_sentry(url: str, sources: list[str], expected: bool) -> None:
    found = match_origin(url, [OriginPattern.parse(s) for s in sources])
    assert (found is not None) == expected


@pytest.mark.parametrize(("blocked", "source"), BAD_REPORTS)
def test_sentry_bad_reports_are_dropped(blocked: str | None, source: str | None) -> None:
    cfg = FiltersConfig(csp=CspFilter(defaults=False, sources=SENTRY_SOURCES))
    hit = check(cfg, csp_event(blocked, source))
    assert hit is not None and hit.reason == "invalid-csp" and not hit.dry_run


@pytest.mark.parametrize(("blocked", "source"), GOOD_REPORTS)
def test_sentry_good_reports_are_kept(blocked: str | None, source: str | None) -> None:
    cfg = FiltersConfig(csp=CspFilter(defaults=False, sources=SENTRY_SOURCES))
    assert check(cfg, csp_event(blocked, source)) is None


def test_known_bad_blocked_uri_and_source_file() -> None:
    cfg = FiltersConfig(csp=CspFilter(defaults=False, sources=["http://known.bad.com"]))
    expected = FilterHit("invalid-csp", "http://known.bad.com", False)
    assert check(cfg, csp_event("http://known.bad.com", None)) == expected
    assert check(cfg, csp_event(None, "http://known.bad.com")) == expected
    assert check(cfg, csp_event("http://good.file.com", None)) is None
    assert check(cfg, csp_event(None, "http://good.file.com")) is None


def test_only_csp_reports_are_read() -> None:
    cfg = FiltersConfig(csp=CspFilter(defaults=False, sources=["http://known.bad.com", "*"]))
    transaction = csp_event("http://known.bad.com", None, type="transaction")
    assert check(cfg, transaction, "transaction") is None
    for other in ("hpkp", "expectct", "expectstaple", "error"):
        assert check(cfg, csp_event("http://known.bad.com", None, type=other)) is None
    # The CSP interface is what is read; a `csp` event without one is kept even by `*`.
    assert check(cfg, {"type": "csp"}) is None
    # An event item of type `csp` (not only a `security` item) is a CSP report.
    assert check(cfg, csp_event("http://known.bad.com", None), "event") is not None


# --- Sentry's default list -------------------------------------------------------------------


def test_the_default_list_is_sentrys() -> None:
    assert len(DEFAULT_CSP_SOURCES) == len(set(DEFAULT_CSP_SOURCES)) == 52
    for source in ("about", "chrome-extension://*", "moz-extension://*", "*.superfish.com"):
        assert source in DEFAULT_CSP_SOURCES
    assert DEFAULT_CSP_SOURCES[-1] == "promfflinkdev.com"


@pytest.mark.parametrize(
    ("blocked", "source", "rule"),
    [
        ("chrome-extension://abcdefgh/content.js", None, "chrome-extension://*"),
        ("CHROME-EXTENSION://ABC", None, "chrome-extension://*"),
        ("https://cdn.example.com/app.js", "moz-extension://1234/inject.js", "moz-extension://*"),
        ("safari-extension://com.x/y", None, "safari-extension://*"),
        ("about", None, "about"),
        ("about:blank", None, "about"),
        ("http://localhost:3000/x.js", None, "localhost"),
        ("https://www.superfish.com/ws/sf_main.js", None, "*.superfish.com"),
        ("https://superfish.com/", None, "*.superfish.com"),
        ("https://a.b.metrext.com/x", None, "*.metrext.com"),
        # Cut up without a URL parser: `data:text/...` is host `data`, port `text`.
        ("data:text/html,chromewebdata", None, "data:text/html,chromewebdata"),
        ("data:text/javascript,alert(1)", None, "data:text/html,chromewebdata"),
    ],
)
def test_default_list_drops_extension_noise(blocked: str, source: str | None, rule: str) -> None:
    assert check(FiltersConfig(csp=True), csp_event(blocked, source)) == FilterHit(
        "invalid-csp", rule, False
    )


@pytest.mark.parametrize(
    "blocked",
    [
        "https://cdn.example.com/app.js",
        "https://notsuperfish.com/x",
        "data:image/png;base64,AAAA",
        "inline",
        "eval",
        "self",
        "blob",
    ],
)
def test_default_list_keeps_real_violations(blocked: str) -> None:
    event = csp_event(blocked, "https://shop.example.com/static/app.js")
    assert check(FiltersConfig(csp=True), event) is None


# --- raw reports, as the security endpoint makes them ------------------------------------------


def test_raw_reports_in_every_shape() -> None:
    cfg = FiltersConfig(csp=True)
    legacy = {"csp-report": {"blocked-uri": "chrome-extension://x", "source-file": "https://a"}}
    snake = {"csp-report": {"blocked_uri": "https://a", "source_file": "moz-extension://x"}}
    reporting = {
        "type": "csp-violation",
        "url": "https://shop.example.com/",
        "body": {"blockedURL": "https://a", "sourceFile": "safari-extension://x"},
    }
    for report in (legacy, snake, reporting):
        hit = check(cfg, report, "raw_security")
        assert hit is not None and hit.reason == "invalid-csp", report
    clean = {"csp-report": {"blocked-uri": "https://evil.example.net/x.js"}}
    assert check(cfg, clean, "raw_security") is None


def test_raw_report_without_blocked_uri_is_self() -> None:
    report = {
        "csp-report": {"document-uri": "https://shop.example.com/", "violated-directive": "x"}
    }
    only_self = FiltersConfig(csp=CspFilter(defaults=False, sources=["self"]))
    assert check(only_self, report, "raw_security") == FilterHit("invalid-csp", "self", False)
    assert check(FiltersConfig(csp=True), report, "raw_security") is None


def test_other_raw_security_reports_are_not_csp() -> None:
    everything = FiltersConfig(csp=CspFilter(defaults=False, sources=["*"]))
    for report in (
        {"expect-ct-report": {"hostname": "localhost"}},
        {"known-pins": [], "hostname": "localhost"},
        {"expect-staple-report": {"hostname": "localhost"}},
        {"type": "deprecation", "body": {"sourceFile": "chrome-extension://x"}},
        {"csp-report": "chrome-extension://x"},
    ):
        assert check(everything, report, "raw_security") is None, report
    assert check(everything, {"csp-report": {}}, "raw_security") is not None


def test_other_filters_read_raw_reports_as_the_event_made_of_them() -> None:
    ctx = RequestContext(project_id=42, public_key=KEY, client_ip="10.1.2.3")
    cfg = FiltersConfig(client_ips=["10.0.0.0/8"], csp=True)
    report = {"csp-report": {"blocked-uri": "https://evil.example.net/x.js"}}
    filters = compile_filters(cfg, None)
    event = security_event(report, {}, ctx)
    assert event is not None
    hit = filters.check(event, "security", ctx)
    assert hit is not None and hit.reason == "ip-address"


def test_pipeline_drops_a_raw_report_with_outcome() -> None:
    body = orjson.dumps({"csp-report": {"blocked-uri": "chrome-extension://abc/x.js"}})
    (envelope,) = security_report_envelopes(body, "application/csp-report", {})
    prepared = prepare(envelope, CTX, filters=compile_filters(FiltersConfig(csp=True), None))
    assert prepared.kept == []
    (drop,) = prepared.dropped
    outcome = drop.outcome
    assert (outcome.kind.value, outcome.reason, outcome.category, outcome.quantity) == (
        "filtered",
        "invalid-csp",
        "security",
        1,
    )
    assert outcome.rule == "chrome-extension://*"


def test_pipeline_keeps_a_dry_run_hit() -> None:
    item = ({"type": "raw_security"}, orjson.dumps({"csp-report": {"blocked-uri": "about"}}))
    envelope = make_envelope({"event_id": "ab" * 16}, [item])
    cfg = FiltersConfig(csp=CspFilter(mode="dry_run"))
    prepared = prepare(envelope, CTX, filters=compile_filters(cfg, None))
    assert len(prepared.kept) == 1
    (drop,) = prepared.dropped
    assert drop.dry_run and drop.outcome.reason == "invalid-csp"


# --- config --------------------------------------------------------------------------------------


def _sources(cfg: FiltersConfig, project: FiltersConfig | None = None) -> list[str | None]:
    """The rule each of a few reports hits."""
    reports = ["chrome-extension://x", "https://ads.example.net/a.js", "https://ok.example.com"]
    found: list[str | None] = []
    for blocked in reports:
        hit = check(cfg, csp_event(blocked, None), project=project)
        found.append(None if hit is None else hit.rule)
    return found


def test_config_forms() -> None:
    ext = "chrome-extension://*"
    off: list[str | None] = [None, None, None]
    assert _sources(FiltersConfig()) == off
    assert _sources(FiltersConfig(csp=False)) == off
    assert _sources(FiltersConfig(csp=True)) == [ext, None, None]
    assert _sources(FiltersConfig(csp=["*.example.net"])) == [ext, "*.example.net", None]
    assert _sources(FiltersConfig(csp=[])) == [ext, None, None]
    assert _sources(FiltersConfig(csp=CspFilter())) == [ext, None, None]
    assert _sources(FiltersConfig(csp=CspFilter(enabled=False, sources=["*"]))) == off
    only = CspFilter(defaults=False, sources=["ads.example.net"])
    assert _sources(FiltersConfig(csp=only)) == [None, "ads.example.net", None]
    assert _sources(FiltersConfig(csp=CspFilter(defaults=False))) == off
    # A project adds sources to the org's filter; it cannot turn the org's off.
    project = FiltersConfig(csp=CspFilter(enabled=False))
    assert _sources(FiltersConfig(csp=True), project) == [ext, None, None]
    project = FiltersConfig(csp=CspFilter(defaults=False, sources=["*.example.net"]))
    assert _sources(FiltersConfig(csp=True), project) == [ext, "*.example.net", None]


def test_yaml_shaped_config_and_mode() -> None:
    config = parse_config(
        {
            "policy": {
                "filters": {
                    "csp": {"defaults": False, "sources": ["*.ads.example.net"], "mode": "dry_run"}
                }
            }
        },
        env={},
    )
    cfg = config.policy.filters
    assert cfg is not None and validate_filters(cfg) == []
    hit = check(cfg, csp_event("https://x.ads.example.net/a.js", None))
    assert hit == FilterHit("invalid-csp", "*.ads.example.net", True)
    assert parse_config({"policy": {"filters": {"csp": True}}}, env={}).policy.filters is not None


def test_validation_reports_paths() -> None:
    problems = validate_filters(FiltersConfig(csp=["ok.example.com", "", "a b"]))
    assert [p.path for p in problems] == ["csp[1]", "csp[2]"]
    bad = FiltersConfig(csp=CspFilter(sources=["x", " "], mode="sometimes"))
    assert [p.path for p in validate_filters(bad)] == ["csp.mode", "csp.sources[1]"]
    assert validate_filters(FiltersConfig(csp=True)) == []
    config = parse_config({"policy": {"filters": {"csp": ["chrome extension"]}}}, env={})
    assert [p.path for p in validate_policies(config)] == ["policy.filters.csp[0]"]
    with pytest.raises(ConfigError):
        parse_config({"policy": {"filters": {"csp": {"sources": "x"}}}}, env={})


# --- through the app -------------------------------------------------------------------------


def _report(blocked: str) -> bytes:
    return orjson.dumps(
        {
            "csp-report": {
                "document-uri": "https://shop.example.com/checkout",
                "violated-directive": "script-src 'self'",
                "effective-directive": "script-src",
                "blocked-uri": blocked,
                "source-file": "https://shop.example.com/static/app.js",
            }
        }
    )


async def _post(relay: TestClient, body: bytes, content_type: str) -> None:
    resp = await relay.post(
        f"/api/42/security/?sentry_key={KEY}", data=body, headers={"Content-Type": content_type}
    )
    assert resp.status == 200, await resp.text()


def _blocked_uris(recorder: RecordingUpstream) -> list[str]:
    out: list[str] = []
    for envelope in recorder.envelopes:
        for item in envelope.items:
            if item.type == "raw_security":
                report = orjson.loads(item.payload)
                body = report.get("csp-report") or report["body"]
                out.append(body.get("blocked-uri") or body.get("blockedURL"))
    return out


async def test_security_endpoint_filters_extension_reports(
    relay_factory: RelayFactory, recorder: RecordingUpstream
) -> None:
    relay = await relay_factory(policy={"filters": {"csp": True}})
    await _post(relay, _report("chrome-extension://abcdefgh/content.js"), "application/csp-report")
    await _post(relay, _report("https://evil.example.net/x.js"), "application/csp-report")
    batch = [
        {"type": "csp-violation", "body": {"blockedURL": "moz-extension://1234/x.js"}},
        {"type": "csp-violation", "body": {"blockedURL": "https://cdn.example.org/y.js"}},
    ]
    await _post(relay, orjson.dumps(batch), "application/reports+json")
    await recorder.wait_for(2)
    await asyncio.sleep(0.1)
    assert sorted(_blocked_uris(recorder)) == [
        "https://cdn.example.org/y.js",
        "https://evil.example.net/x.js",
    ]
    metrics = await (await relay.get("/metrics")).text()
    assert (
        'relay_items_total{category="security",outcome="filtered",reason="invalid-csp"} 2.0'
        in metrics
    )


async def test_csp_filter_is_off_unless_configured(
    relay: TestClient, recorder: RecordingUpstream
) -> None:
    await _post(relay, _report("chrome-extension://abcdefgh/content.js"), "application/csp-report")
    await recorder.wait_for(1)
    assert _blocked_uris(recorder) == ["chrome-extension://abcdefgh/content.js"]
