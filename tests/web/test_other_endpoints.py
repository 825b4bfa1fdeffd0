"""Store, security and minidump endpoints; CORS; health and metrics routes."""

from __future__ import annotations

import asyncio
import base64
import re
import uuid
import zlib
from typing import Any

import msgspec
import orjson
import pytest
from aiohttp.test_utils import TestClient

from tests.support.corpus import CORPUS
from tests.support.relay import KEY, auth_header
from tests.support.upstream import RecordingUpstream

EVENT = {
    "event_id": "fa90fdead5f74052b0d6bf1ed2d6f1a4",
    "message": "store endpoint works",
    "level": "error",
}


async def test_store_json(relay: TestClient, recorder: RecordingUpstream) -> None:
    resp = await relay.post("/api/42/store/", data=orjson.dumps(EVENT), headers=auth_header())
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["id"] == EVENT["event_id"]
    await recorder.wait_for(1)
    received = recorder.received[0]
    assert received.path == "/api/42/envelope/"
    (item,) = received.envelope.items
    assert item.type == "event"
    assert orjson.loads(item.payload)["message"] == "store endpoint works"


async def test_store_base64_and_base64_zlib(relay: TestClient, recorder: RecordingUpstream) -> None:
    plain = base64.b64encode(orjson.dumps(EVENT))
    packed = base64.b64encode(zlib.compress(orjson.dumps({**EVENT, "event_id": "ab" * 16})))
    for body in (plain, packed):
        resp = await relay.post("/api/42/store", data=body, headers=auth_header())
        assert resp.status == 200, await resp.text()
    await recorder.wait_for(2)
    ids = sorted(e.event_id or "" for e in recorder.envelopes)
    assert ids == sorted([EVENT["event_id"], "ab" * 16])


async def test_store_garbage_is_400(relay: TestClient) -> None:
    resp = await relay.post(
        "/api/42/store/", data=b"not json, not base64 {{{", headers=auth_header()
    )
    assert resp.status == 400
    assert (await resp.json())["detail"]


async def test_security_csp_report(relay: TestClient, recorder: RecordingUpstream) -> None:
    report = {
        "csp-report": {
            "document-uri": "https://shop.example.com/checkout",
            "violated-directive": "script-src",
            "blocked-uri": "https://evil.example.net/x.js",
        }
    }
    resp = await relay.post(
        f"/api/42/security/?sentry_key={KEY}&sentry_release=shop@1.4.2",
        data=orjson.dumps(report),
        headers={"Content-Type": "application/csp-report"},
    )
    assert resp.status == 200, await resp.text()
    await recorder.wait_for(1)
    (item,) = recorder.received[0].envelope.items
    assert item.type == "raw_security"
    assert item.headers["sentry_release"] == "shop@1.4.2"
    assert orjson.loads(item.payload)["csp-report"]["violated-directive"] == "script-src"


NEL_REPORTS = [
    {
        "age": 0,
        "type": "network-error",
        "url": "https://shop.example.com/about/",
        "user_agent": "Mozilla/5.0",
        "body": {"sampling_fraction": 1.0, "phase": "dns", "type": "dns.name_not_resolved"},
    }
]


@pytest.mark.parametrize(
    ("path", "body", "content_type", "item_type"),
    [
        (
            "csp-report",
            {"csp-report": {"violated-directive": "script-src"}},
            "application/csp-report",
            "raw_security",
        ),
        ("nel", NEL_REPORTS, "application/reports+json", "nel"),
        ("nel", NEL_REPORTS, "application/json", "nel"),
    ],
)
async def test_sentrys_other_browser_report_paths(
    relay: TestClient,
    recorder: RecordingUpstream,
    path: str,
    body: Any,
    content_type: str,
    item_type: str,
) -> None:
    # Browsers configured with Sentry's `csp-report/` and `nel/` URLs do not retry a 404.
    resp = await relay.post(
        f"/api/42/{path}/?sentry_key={KEY}",
        data=orjson.dumps(body),
        headers={"Content-Type": content_type},
    )
    assert resp.status == 200, await resp.text()
    await recorder.wait_for(1)
    (item,) = recorder.received[0].envelope.items
    assert item.type == item_type


async def test_minidump_forwarded_with_its_event_fields_scrubbed(
    relay: TestClient, recorder: RecordingUpstream
) -> None:
    boundary = "xyzzy"
    dump = b"MDMP\x93\xa7 binary alice@example.com \x00\xff"

    def field(name: str, value: bytes, filename: str | None = None) -> bytes:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        return (
            f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + value + b"\r\n"
        )

    body = (
        field("upload_file_minidump", dump, "a.dmp")
        + field(
            "sentry",
            orjson.dumps(
                {"user": {"email": "alice@example.com"}, "extra": {"password": "hunter2"}}
            ),
        )
        + field("sentry[user][email]", b"bob@example.org")
        + field("sentry[extra][api_key]", b"s3cr3t-value")
        + field("sentry[release]", b"shop@1.4.2")
        + f"--{boundary}--\r\n".encode()
    )
    resp = await relay.post(
        "/api/42/minidump/",
        data=body,
        headers={**auth_header(), "Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert resp.status == 200, await resp.text()
    await recorder.wait_for(1)
    received = recorder.received[0]
    assert received.path == "/api/42/minidump/"
    assert received.headers["Content-Type"].startswith("multipart/form-data")
    assert dump in received.body  # the binary dump goes as it came
    sent = received.body.replace(dump, b"")
    for secret in (b"alice@example.com", b"bob@example.org", b"hunter2", b"s3cr3t-value"):
        assert secret not in sent
    assert b"shop@1.4.2" in sent


async def test_minidump_form_fields_are_scrubbed_as_the_event_sentry_makes_of_them(
    relay: TestClient, recorder: RecordingUpstream
) -> None:
    # To Sentry, `sentry__1`, `sentry__2`, ... are one event JSON in pieces (Electron splits
    # long ones) and any other form field is the event's `extra.<name>`: key rules apply.
    event = orjson.dumps(
        {"release": "app@1.0", "extra": {"password": "hunter2"}, "user": {"id": "42"}}
    )
    cut = event.index(b"hunter2") - 3
    body = _upload_with(
        _field("sentry__2", event[cut:])
        + _field("sentry__1", event[:cut])
        + _field("password", b"s3cr3t-value")
        + _field("note", b"for bob@example.org")
    )
    headers = {**auth_header(), "Content-Type": "multipart/form-data; boundary=xyzzy"}
    resp = await relay.post("/api/42/minidump/", data=body, headers=headers)
    assert resp.status == 200, await resp.text()
    await recorder.wait_for(1)
    sent = recorder.received[0].body
    for secret in (b"hunter2", b"s3cr3t-value", b"bob@example.org"):
        assert secret not in sent
    parts = {m.group(1): m.group(2) for m in _FIELD_RE.finditer(sent)}
    joined = parts[b"sentry__1"] + parts[b"sentry__2"]
    assert orjson.loads(joined)["release"] == "app@1.0"  # still one event, in two pieces
    assert parts[b"sentry__1"] and parts[b"sentry__2"]
    assert parts[b"password"] == b"[Filtered]"


@pytest.mark.parametrize("content_type", ["application/octet-stream", "application/x-dmp"])
async def test_a_raw_minidump_upload_is_forwarded_as_the_form_sentry_reads(
    relay: TestClient, recorder: RecordingUpstream, content_type: str
) -> None:
    # As Sentry takes them: the whole body is the dump.
    dump = b"MDMP\x93\xa7\x00\x00" + bytes(range(256))
    headers = {**auth_header(), "Content-Type": content_type}
    resp = await relay.post("/api/42/minidump/", data=dump, headers=headers)
    assert resp.status == 200, await resp.text()
    event_id = uuid.UUID(await resp.text()).hex
    await recorder.wait_for(1)
    received = recorder.received[0]
    assert received.headers["Content-Type"].startswith("multipart/form-data; boundary=")
    parts = {
        m.group(1): m.group(2)
        for m in _FIELD_RE.finditer(
            received.body.replace(
                received.headers["Content-Type"].partition("boundary=")[2].encode(), b"xyzzy"
            )
        )
    }
    assert parts[b"sentry[event_id]"] == event_id.encode()
    assert dump in received.body
    assert b'name="upload_file_minidump"; filename="Minidump"' in received.body

    resp = await relay.post("/api/42/minidump/", data=b"not a dump", headers=headers)
    assert resp.status == 400
    assert "not a minidump" in await resp.text()


_FIELD_RE = re.compile(rb'name="([^"]+)"\r\n\r\n(.*?)\r\n--xyzzy', re.DOTALL)


def _minidump_upload(boundary: str = "xyzzy") -> bytes:
    return (
        f'--{boundary}\r\nContent-Disposition: form-data; name="upload_file_minidump"; '
        f'filename="a.dmp"\r\n\r\n'.encode()
        + b"MDMP\x93\xa7 binary \x00\xff"
        + f"\r\n--{boundary}--\r\n".encode()
    )


@pytest.mark.parametrize("limit", ["error", "attachment"])
async def test_minidump_uploads_are_counted_by_quotas(
    relay_factory: Any, recorder: RecordingUpstream, limit: str
) -> None:
    """An upload is an error with its dump attached. An error quota drops it once full,
    with a 200 all the same (crash reporters retry a 429 at once) and an outcome; an
    attachment quota counts the dump but never drops it: the dump makes the event."""
    quota = {"id": "q", "categories": [limit], "scope": "project", "limit": 2, "window": 60}
    if limit == "attachment":
        quota["limit"] = 1  # bytes: less than any dump
    relay = await relay_factory(policy={"quotas": [quota]})
    headers = {**auth_header(), "Content-Type": "multipart/form-data; boundary=xyzzy"}
    ids = []
    for _ in range(4):
        resp = await relay.post("/api/42/minidump/", data=_minidump_upload(), headers=headers)
        assert resp.status == 200, await resp.text()
        assert "X-Sentry-Rate-Limits" not in resp.headers
        assert resp.content_type == "text/plain"
        ids.append(await resp.text())
    assert len(set(ids)) == 4
    assert all(str(uuid.UUID(i)) == i for i in ids)  # hyphenated, as crash reporters expect
    expected = 2 if limit == "error" else 4
    await recorder.wait_for(expected)
    await asyncio.sleep(0.1)
    assert len(recorder.received) == expected
    metrics = await (await relay.get("/metrics")).text()
    if limit == "error":
        assert 'relay_items_total{category="error",outcome="rate_limited",reason="q"} 2.0' in (
            metrics
        )
    else:
        assert 'outcome="rate_limited"' not in metrics


def _upload_with(extra: bytes, boundary: str = "xyzzy") -> bytes:
    """`_minidump_upload` with more parts (`extra`, each ending in CRLF) before its end."""
    return _minidump_upload(boundary).replace(
        f"--{boundary}--\r\n".encode(), extra + f"--{boundary}--\r\n".encode()
    )


def _field(name: str, value: bytes, boundary: str = "xyzzy", filename: str | None = None) -> bytes:
    file = f'; filename="{filename}"' if filename else ""
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"{file}\r\n\r\n'
    return head.encode() + value + b"\r\n"


EVENT_ID = "2dd132e467174db48dbaddabd3cbed57"


@pytest.mark.parametrize(
    "extra",
    [
        _field("sentry", orjson.dumps({"event_id": EVENT_ID, "user": {"id": "1"}})),
        _field("sentry[event_id]", str(uuid.UUID(EVENT_ID)).encode()),
        _field("__sentry-event", msgspec.msgpack.encode({"event_id": EVENT_ID}), filename="e"),
        _field("sentry__2", f'{EVENT_ID}"}}'.encode()) + _field("sentry__1", b'{"event_id":"'),
    ],
    ids=["sentry-json", "sentry-field", "native-event", "sentry-chunks"],
)
async def test_a_minidump_upload_is_answered_with_its_own_event_id(
    relay: TestClient, recorder: RecordingUpstream, extra: bytes
) -> None:
    headers = {**auth_header(), "Content-Type": "multipart/form-data; boundary=xyzzy"}
    resp = await relay.post("/api/42/minidump/", data=_upload_with(extra), headers=headers)
    assert resp.status == 200
    assert await resp.text() == str(uuid.UUID(EVENT_ID))
    await recorder.wait_for(1)
    assert b'name="sentry[event_id]"\r\n\r\n' + EVENT_ID.encode() not in recorder.received[0].body


async def test_a_minidump_upload_without_an_event_id_gets_the_answered_one(
    relay: TestClient, recorder: RecordingUpstream
) -> None:
    """The upstream makes the event with the id the crash reporter was answered."""
    headers = {**auth_header(), "Content-Type": "multipart/form-data; boundary=xyzzy"}
    answered = []
    for extra in (b"", _field("sentry", orjson.dumps({"user": {"id": "1"}}))):
        resp = await relay.post("/api/42/minidump/", data=_upload_with(extra), headers=headers)
        assert resp.status == 200
        answered.append(uuid.UUID(await resp.text()).hex)
    await recorder.wait_for(2)
    field = b'Content-Disposition: form-data; name="sentry[event_id]"\r\n\r\n'
    for sent, event_id in zip((r.body for r in recorder.received), answered, strict=True):
        assert field + event_id.encode() + b"\r\n" in sent
        assert b"MDMP\x93\xa7 binary" in sent
    # Before the `sentry` JSON, whose own (missing) id the upstream would read first.
    second = recorder.received[1].body
    assert second.index(field) < second.index(b'name="sentry"')


async def test_garbage_minidump_upload_is_400(relay: TestClient) -> None:
    resp = await relay.post(
        "/api/42/minidump/",
        data=b"not multipart at all",
        headers={**auth_header(), "Content-Type": "multipart/form-data; boundary=zz"},
    )
    assert resp.status == 400


async def _raw_post(port: int, path: str, content_type: bytes, body: bytes) -> bytes:
    """A request written byte for byte (a client may send any bytes in a header)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n"
        f"X-Sentry-Auth: Sentry sentry_key={KEY}\r\nContent-Length: {len(body)}\r\n"
    ).encode()
    writer.write(head + b"Content-Type: " + content_type + b"\r\n\r\n" + body)
    answer = await reader.read()
    writer.close()
    return answer


@pytest.mark.parametrize(
    "content_type",
    [
        "multipart/form-data; boundary=zz; note=\u20ac".encode(),  # a UTF-8 byte sequence
        'multipart/form-data; boundary="z\u20acz"'.encode(),
        b"multipart/form-data; boundary=z{z",
        b'multipart/form-data; boundary="zz "',
    ],
)
async def test_a_minidump_content_type_the_upstream_cannot_take_is_400(
    relay: TestClient, recorder: RecordingUpstream, content_type: bytes
) -> None:
    body = (
        b'--zz\r\nContent-Disposition: form-data; name="upload_file_minidump"; '
        b'filename="a.dmp"\r\n\r\nMDMP\r\n--zz--\r\n'
    )
    assert relay.port is not None
    answer = await _raw_post(relay.port, "/api/42/minidump/", content_type, body)
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]
    await asyncio.sleep(0.1)
    assert recorder.received == []


async def test_cors_preflight_and_exposed_headers(relay: TestClient) -> None:
    resp = await relay.options(
        "/api/42/envelope/",
        headers={"Origin": "https://shop.example.com", "Access-Control-Request-Method": "POST"},
    )
    assert resp.status == 200
    assert resp.headers["Access-Control-Allow-Origin"] == "https://shop.example.com"
    assert "x-sentry-auth" in resp.headers["Access-Control-Allow-Headers"]
    assert "POST" in resp.headers["Access-Control-Allow-Methods"]
    err = await relay.post(
        "/api/42/envelope/", data=b"{}", headers={"Origin": "https://shop.example.com"}
    )
    assert err.status == 401
    exposed = err.headers["Access-Control-Expose-Headers"]
    for name in ("x-sentry-rate-limits", "retry-after", "x-sentry-error"):
        assert name in exposed


async def test_disallowed_origin_is_403(relay_factory) -> None:  # type: ignore[no-untyped-def]
    relay = await relay_factory(
        projects=[{"id": 42, "keys": [KEY], "allowed_origins": ["https://*.example.com"]}]
    )
    ok = await relay.post(
        "/api/42/store/",
        data=orjson.dumps(EVENT),
        headers={**auth_header(), "Origin": "https://shop.example.com"},
    )
    assert ok.status == 200
    bad = await relay.post(
        "/api/42/store/",
        data=orjson.dumps(EVENT),
        headers={**auth_header(), "Origin": "https://evil.test"},
    )
    assert bad.status == 403


async def test_health_routes(relay: TestClient) -> None:
    for path in (
        "/healthz",
        "/readyz",
        "/api/relay/healthcheck/live/",
        "/api/relay/healthcheck/ready/",
    ):
        resp = await relay.get(path)
        assert resp.status == 200, path
        assert (await resp.json())["is_healthy"] is True


async def test_metrics_names(relay: TestClient, recorder: RecordingUpstream) -> None:
    await relay.post("/api/42/store/", data=orjson.dumps(EVENT), headers=auth_header())
    await recorder.wait_for(1)
    text = await (await relay.get("/metrics")).text()
    for name in (
        'relay_requests_total{endpoint="store",status="200"}',
        "relay_request_duration_seconds_bucket",
        'relay_items_total{category="error",outcome="accepted",reason="forwarded"}',
        'relay_upstream_requests_total{status="200"}',
        "relay_outbox_size",
    ):
        assert name in text, name


async def test_store_accepts_an_envelope_body(
    relay: TestClient, recorder: RecordingUpstream
) -> None:
    body = b'{"event_id":"' + b"cd" * 16 + b'"}\n{"type":"event"}\n{"message":"via store"}\n'
    resp = await relay.post(
        "/api/42/store/",
        data=body,
        headers={**auth_header(), "Content-Type": "application/x-sentry-envelope"},
    )
    assert resp.status == 200, await resp.text()
    await recorder.wait_for(1)
    assert recorder.received[0].envelope.event_id == "cd" * 16


async def test_client_reports_tell_the_upstream_what_was_dropped(
    relay_factory, recorder: RecordingUpstream
) -> None:  # type: ignore[no-untyped-def]
    """Each drop in the report's field for it, as Sentry's own relays report them: a
    filter's under its name in `filtered_events`, a quota's under its reason code in
    `rate_limited_events`, what has no field of its own in `discarded_events`."""
    relay = await relay_factory(
        upstream={"client_reports_interval": 0.5},
        policy={
            "quotas": [
                {"id": "errors", "categories": ["error"], "limit": 0, "reason": "no_errors"}
            ],
            "sampling": [{"id": "tx", "match": {"event.type": "transaction"}, "rate": 0.0}],
        },
    )
    for name in ["transaction-healthz"] * 3 + ["error-payment", "transaction-checkout"]:
        body = (CORPUS / f"{name}.envelope").read_bytes()
        resp = await relay.post("/api/42/envelope/", data=body, headers=auth_header())
        assert resp.status in (200, 429)
    await recorder.wait_for(1)
    (item,) = recorder.received[0].envelope.items
    assert item.type == "client_report"
    report = orjson.loads(item.payload)
    # A transaction is reported in `span` too (1 + its spans; the health checks have none).
    assert sorted(report["filtered_events"], key=lambda line: line["category"]) == [
        {"reason": "health-check", "category": "span", "quantity": 3},
        {"reason": "health-check", "category": "transaction", "quantity": 3},
    ]
    assert {"reason": "no_errors", "category": "error", "quantity": 1} in report[
        "rate_limited_events"
    ]
    assert sorted(report["discarded_events"], key=lambda line: line["category"]) == [
        {"reason": "sample_rate", "category": "span", "quantity": 2},
        {"reason": "sample_rate", "category": "transaction", "quantity": 1},
    ]
    assert isinstance(report["timestamp"], int)
    assert f"sentry_key={KEY}" in recorder.received[0].headers["X-Sentry-Auth"]


async def test_metrics_on_a_separate_internal_address(relay_factory) -> None:  # type: ignore[no-untyped-def]
    import aiohttp

    from tests.support.redis_server import free_port

    port = free_port()
    relay = await relay_factory(listen={"metrics": f"127.0.0.1:{port}"})
    assert (await relay.get("/metrics")).status == 404
    await relay.post("/api/42/store/", data=orjson.dumps(EVENT), headers=auth_header())
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/metrics") as resp,
    ):
        assert resp.status == 200
        assert 'relay_requests_total{endpoint="store",status="200"}' in await resp.text()


async def test_cors_headers_only_for_browsers(relay: TestClient) -> None:
    plain = await relay.post("/api/42/envelope/", data=b"{}")
    assert plain.status == 401
    assert "Access-Control-Allow-Origin" not in plain.headers
    browser = await relay.post(
        "/api/42/envelope/", data=b"{}", headers={"Origin": "https://shop.example.com"}
    )
    assert browser.headers["Access-Control-Allow-Origin"] == "https://shop.example.com"
    assert browser.headers["Vary"] == "Origin"
