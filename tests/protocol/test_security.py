from __future__ import annotations

import json

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.protocol.envelope import parse_envelope
from relay.protocol.security import (
    SecurityReportError,
    security_report_envelopes,
    security_report_to_envelope,
)

CSP = {
    "csp-report": {
        "document-uri": "https://example.com/foo/bar",
        "referrer": "https://www.google.com/",
        "violated-directive": "default-src self",
        "original-policy": "default-src self; report-uri /csp-hotline.php",
        "blocked-uri": "http://evilhackerscripts.com",
    }
}
CSP_BODY = json.dumps(CSP, indent=2).encode()

CSP_VIOLATION = {
    "age": 53531,
    "type": "csp-violation",
    "url": "https://example.com/csp-report",
    "user_agent": "Mozilla/5.0",
    "body": {
        "blockedURL": "inline",
        "disposition": "enforce",
        "documentURL": "https://example.com/csp-report",
        "effectiveDirective": "script-src-elem",
        "originalPolicy": "default-src 'self'; report-to csp-endpoint",
        "statusCode": 200,
    },
}
NEL = {
    "age": 0,
    "type": "network-error",
    "url": "https://example.com/",
    "user_agent": "Mozilla/5.0",
    "body": {
        "elapsed_time": 48,
        "method": "GET",
        "phase": "connection",
        "protocol": "http/1.1",
        "referrer": "",
        "sampling_fraction": 1.0,
        "server_ip": "192.0.2.1",
        "status_code": 0,
        "type": "tcp.refused",
    },
}
DEPRECATION = {"type": "deprecation", "url": "https://example.com/", "body": {"id": "x"}}


def test_csp_report() -> None:
    env = security_report_to_envelope(CSP_BODY, "application/csp-report", {})
    env = parse_envelope(env.serialize())
    assert env.event_id is not None and len(env.event_id) == 32
    [item] = env.items
    assert item.type == "raw_security"
    assert item.headers["content_type"] == "application/json"
    assert item.payload == CSP_BODY  # as the browser sent it
    assert "sentry_release" not in item.headers


def test_release_and_environment_from_query() -> None:
    query = {"sentry_release": "shop@1.4.2", "sentry_environment": "prod", "sentry_key": "k"}
    env = security_report_to_envelope(CSP_BODY, "application/csp-report; charset=utf-8", query)
    item = env.items[0]
    assert item.headers["sentry_release"] == "shop@1.4.2"
    assert item.headers["sentry_environment"] == "prod"
    assert "sentry_key" not in item.headers


@pytest.mark.parametrize(
    ("key", "content_type"),
    [
        ("expect-ct-report", "application/expect-ct-report+json"),
        ("known-pins", "application/json"),
        ("expect-staple-report", "application/expect-staple-report"),
    ],
)
def test_other_legacy_reports(key: str, content_type: str) -> None:
    body = orjson.dumps({key: {"hostname": "example.com"}})
    env = security_report_to_envelope(body, content_type, {})
    assert [i.type for i in env.items] == ["raw_security"]


def test_reporting_api_batch_gets_one_envelope_per_report() -> None:
    body = orjson.dumps([CSP_VIOLATION, DEPRECATION, NEL, CSP_VIOLATION])
    envs = security_report_envelopes(body, "application/reports+json", {"sentry_release": "r"})
    assert [[i.type for i in e.items] for e in envs] == [
        ["raw_security"],
        ["nel"],
        ["raw_security"],
    ]
    assert len({e.event_id for e in envs}) == 3
    assert orjson.loads(envs[0].items[0].payload) == CSP_VIOLATION
    assert orjson.loads(envs[1].items[0].payload) == NEL
    assert envs[0].items[0].headers["sentry_release"] == "r"
    assert "sentry_release" not in envs[1].items[0].headers
    for env in envs:
        assert parse_envelope(env.serialize()).items[0].payload == env.items[0].payload


def test_single_reporting_api_report() -> None:
    body = orjson.dumps([CSP_VIOLATION])
    env = security_report_to_envelope(body, "application/reports+json", {})
    assert env.items[0].type == "raw_security"
    env = security_report_to_envelope(orjson.dumps(NEL), "application/json", {})
    assert env.items[0].type == "nel"


def test_single_envelope_api_refuses_batches() -> None:
    body = orjson.dumps([CSP_VIOLATION, CSP_VIOLATION])
    with pytest.raises(SecurityReportError) as info:
        security_report_to_envelope(body, "application/reports+json", {})
    assert info.value.status == 400
    assert (
        security_report_envelopes(orjson.dumps([DEPRECATION]), "application/reports+json", {}) == []
    )


@pytest.mark.parametrize(
    "content_type",
    [None, "", "text/plain", "application/x-www-form-urlencoded", "multipart/form-data"],
)
def test_unsupported_content_type(content_type: str | None) -> None:
    with pytest.raises(SecurityReportError) as info:
        security_report_envelopes(CSP_BODY, content_type, {})
    assert info.value.status == 415


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"  ",
        b"not json",
        b"42",
        b'"csp"',
        b'{"something": "else"}',
        b"[1, 2]",
        b'[{"type": "csp-violation"}]',
        b'[{"body": {}}]',
    ],
)
def test_junk(body: bytes) -> None:
    with pytest.raises(SecurityReportError) as info:
        security_report_envelopes(body, "application/json", {})
    assert info.value.status == 400


@settings(max_examples=150, deadline=None)
@given(
    body=st.one_of(
        st.binary(max_size=200),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(max_size=10),
            lambda c: (
                st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=12), c, max_size=3)
            ),
            max_leaves=10,
        ).map(lambda v: json.dumps(v).encode()),
    ),
    content_type=st.sampled_from(["application/json", "application/reports+json", "text/html"]),
)
def test_fuzz_only_security_report_errors(body: bytes, content_type: str) -> None:
    try:
        envs = security_report_envelopes(body, content_type, {})
    except SecurityReportError as exc:
        assert exc.status in (400, 415)
    else:
        for env in envs:
            assert [i.type for i in parse_envelope(env.serialize()).items] in (
                ["raw_security"],
                ["nel"],
            )
