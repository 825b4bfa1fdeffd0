"""Sentry's other ingest paths: cron check-ins over HTTP, and the legacy attachment upload."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient

from tests.support.relay import KEY, OTHER_KEY, auth_header
from tests.support.upstream import RecordingUpstream

NIL = "0" * 32
CHECK_IN_ID = "a460c25ff2554577b920fcfacae4e5eb"


async def _check_in(recorder: RecordingUpstream, index: int = 0) -> dict[str, Any]:
    """The check-in item of the `index`th envelope the upstream received."""
    await recorder.wait_for(index + 1)
    received = recorder.received[index]
    assert received.path == "/api/42/envelope/"
    (item,) = received.envelope.items
    assert item.type == "check_in"
    payload: dict[str, Any] = orjson.loads(item.payload)
    return payload


async def test_a_curl_check_in_with_the_key_in_the_path(
    relay: TestClient, recorder: RecordingUpstream
) -> None:
    # Sentry's documented one-liners: `curl ".../cron/<slug>/<key>/?status=in_progress"`.
    resp = await relay.get(f"/api/42/cron/nightly-backup/{KEY}/?status=in_progress")
    assert resp.status == 202, await resp.text()
    assert await resp.read() == b""
    assert await _check_in(recorder) == {
        "check_in_id": NIL,
        "monitor_slug": "nightly-backup",
        "status": "in_progress",
    }
    # Without the SDK's `sentry_client`, the check-in is sent as Sentry's HTTP client.
    assert "sentry_client=relay-http" in recorder.received[0].headers["X-Sentry-Auth"]

    query = f"status=ok&check_in_id={uuid.UUID(CHECK_IN_ID)}&duration=12.5&environment=prod"
    resp = await relay.post(f"/api/42/cron/nightly-backup/{KEY}?{query}")
    assert resp.status == 202, await resp.text()
    assert await _check_in(recorder, 1) == {
        "check_in_id": CHECK_IN_ID,
        "monitor_slug": "nightly-backup",
        "status": "ok",
        "duration": 12.5,
        "environment": "prod",
    }


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        ("/api/42/cron/nightly-backup/?status=error", auth_header()),
        ("/api/42/cron/nightly-backup?status=error", auth_header()),
        (f"/api/42/cron/nightly-backup/?status=error&sentry_key={KEY}", {}),
        (f"/api/42/cron/nightly-backup/{KEY}/?status=error", auth_header()),  # the same key
    ],
    ids=["header", "header-no-slash", "query", "path-and-header"],
)
async def test_a_check_in_with_the_key_in_the_auth(
    relay: TestClient, recorder: RecordingUpstream, path: str, headers: dict[str, str]
) -> None:
    resp = await relay.get(path, headers=headers)
    assert resp.status == 202, await resp.text()
    check_in = await _check_in(recorder)
    assert (check_in["monitor_slug"], check_in["status"]) == ("nightly-backup", "error")
    if headers:  # the SDK's client, when it names one
        assert "sentry_client=test/1.0" in recorder.received[0].headers["X-Sentry-Auth"]
    # Every form of the path is the one `cron` endpoint in the request metrics.
    metrics = await (await relay.get("/metrics")).text()
    assert 'relay_requests_total{endpoint="cron",status="202"} 1.0' in metrics
    assert "cron_key" not in metrics


async def test_a_check_in_as_json_creates_the_monitor(
    relay: TestClient, recorder: RecordingUpstream
) -> None:
    body = {
        "monitor_slug": "ignored: the path's wins",
        "status": "in_progress",
        "monitor_config": {"schedule": {"type": "crontab", "value": "0 * * * *"}},
    }
    resp = await relay.post(
        f"/api/42/cron/hourly/{KEY}/",
        data=orjson.dumps(body),
        headers={"Content-Type": "application/json; charset=utf-8"},
    )
    assert resp.status == 202, await resp.text()
    assert await _check_in(recorder) == {
        **body,
        "monitor_slug": "hourly",
        "check_in_id": NIL,
    }


@pytest.mark.parametrize(
    ("path", "headers", "status"),
    [
        ("/api/42/cron/job/?status=ok", {}, 401),  # no key anywhere
        (f"/api/42/cron/job/{KEY}/?status=ok", auth_header(OTHER_KEY), 401),  # two keys
        (f"/api/42/cron/job/{KEY}/?status=ok&sentry_key={OTHER_KEY}", {}, 401),
        (f"/api/42/cron/job/{OTHER_KEY}/?status=ok", {}, 403),  # project 43's key
        (f"/api/42/cron/job/{KEY}/", {}, 400),  # no status
        (f"/api/42/cron/job/{KEY}/?status=ok&check_in_id=nope", {}, 400),
        (f"/api/42/cron/job/{KEY}/?status=ok&duration=soon", {}, 400),
    ],
)
async def test_a_check_in_that_cannot_be_taken(
    relay: TestClient,
    recorder: RecordingUpstream,
    path: str,
    headers: dict[str, str],
    status: int,
) -> None:
    resp = await relay.get(path, headers=headers)
    assert resp.status == status, await resp.text()
    assert (await resp.json())["detail"]
    await asyncio.sleep(0.1)
    assert recorder.received == []


async def test_check_ins_count_in_the_monitor_quota_and_are_never_answered_429(
    relay_factory: Any, recorder: RecordingUpstream
) -> None:
    quota = {"id": "q", "categories": ["monitor"], "scope": "project", "limit": 1, "window": 60}
    relay = await relay_factory(policy={"quotas": [quota]})
    for _ in range(3):
        resp = await relay.get(f"/api/42/cron/job/{KEY}/?status=ok")
        assert resp.status == 202, await resp.text()
    await recorder.wait_for(1)
    await asyncio.sleep(0.1)
    assert len(recorder.received) == 1
    metrics = await (await relay.get("/metrics")).text()
    assert 'relay_items_total{category="monitor",outcome="rate_limited",reason="q"} 2.0' in metrics


async def test_the_cron_paths_answer_cors_preflight(relay: TestClient) -> None:
    resp = await relay.options(
        f"/api/42/cron/job/{KEY}/",
        headers={"Origin": "https://ops.example.com", "Access-Control-Request-Method": "GET"},
    )
    assert resp.status == 200
    assert resp.headers["Access-Control-Allow-Origin"] == "https://ops.example.com"


def _form(*parts: tuple[str, bytes, str | None, str | None]) -> bytes:
    """A multipart body (boundary `xyzzy`) of (field, value, filename, content type)."""
    out = b""
    for name, value, filename, content_type in parts:
        head = f'--xyzzy\r\nContent-Disposition: form-data; name="{name}"'
        head += f'; filename="{filename}"' if filename else ""
        head += f"\r\nContent-Type: {content_type}" if content_type else ""
        out += (head + "\r\n\r\n").encode() + value + b"\r\n"
    return out + b"--xyzzy--\r\n"


FORM = {"Content-Type": "multipart/form-data; boundary=xyzzy"}
EVENT_ID = "2dd132e467174db48dbaddabd3cbed57"


async def test_the_legacy_attachment_upload_becomes_attachment_items(
    relay: TestClient, recorder: RecordingUpstream
) -> None:
    binary = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\xff\xfe"
    body = _form(
        ("log", b"login failed for alice@example.com\n", "app.log", "text/plain"),
        ("shot", binary, "screen.png", "image/png"),
        ("note", b"a plain field", None, None),
    )
    resp = await relay.post(
        f"/api/42/events/{uuid.UUID(EVENT_ID)}/attachments/",
        data=body,
        headers={**auth_header(), **FORM},
    )
    assert resp.status == 201, await resp.text()
    await recorder.wait_for(1)
    received = recorder.received[0]
    assert received.path == "/api/42/envelope/"
    envelope = received.envelope
    assert envelope.event_id == EVENT_ID
    log, shot = envelope.items
    assert [i.type for i in envelope.items] == ["attachment", "attachment"]
    assert (log.headers["filename"], log.headers["content_type"]) == ("app.log", "text/plain")
    assert log.headers["attachment_type"] == "event.attachment"
    assert b"alice@example.com" not in log.payload  # scrubbed as any text attachment
    assert b"login failed for" in log.payload
    assert (shot.headers["filename"], shot.payload) == ("screen.png", binary)
    assert b"a plain field" not in received.body


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("/api/42/events/not-an-id/attachments/", _form(("f", b"x", "f.txt", None)), 400),
        (f"/api/42/events/{EVENT_ID}/attachments/", _form(("note", b"x", None, None)), 400),
        (f"/api/42/events/{EVENT_ID}/attachments", b"not a form", 400),
    ],
    ids=["event-id", "no-file", "not-a-form"],
)
async def test_an_attachment_upload_that_cannot_be_taken(
    relay: TestClient, recorder: RecordingUpstream, path: str, body: bytes, status: int
) -> None:
    resp = await relay.post(path, data=body, headers={**auth_header(), **FORM})
    assert resp.status == status, await resp.text()
    await asyncio.sleep(0.1)
    assert recorder.received == []


async def test_attachment_uploads_count_in_the_attachment_quota(
    relay_factory: Any, recorder: RecordingUpstream
) -> None:
    quota = {"id": "q", "categories": ["attachment"], "scope": "project", "limit": 10}
    relay = await relay_factory(policy={"quotas": [{**quota, "window": 60}]})
    path = f"/api/42/events/{EVENT_ID}/attachments/"
    headers = {**auth_header(), **FORM}
    resp = await relay.post(path, data=_form(("f", b"12345678", "a.txt", None)), headers=headers)
    assert resp.status == 201, await resp.text()
    resp = await relay.post(path, data=_form(("f", b"12345678", "b.txt", None)), headers=headers)
    assert resp.status == 429
    assert "attachment" in resp.headers["X-Sentry-Rate-Limits"]
    await recorder.wait_for(1)
    await asyncio.sleep(0.1)
    assert len(recorder.received) == 1
