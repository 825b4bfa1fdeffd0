"""Which items a rate limit drops, end to end, as Sentry's relay decides it.

Native crash reports make the envelope's event; NEL reports are errors; user feedback
takes its screenshot; a profile without its transaction meets the transaction limit;
UI profile chunks are limited apart; client reports of rate-limited drops name every
category the item counted in.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient

from relay.keys import INGEST, UPSTREAM_LIMITS
from tests.support.relay import RelayFactory, auth_header
from tests.support.upstream import RecordingUpstream, Reply
from tests.web.test_other_endpoints import _minidump_upload

EVENT_ID = "ab" * 16
MINIDUMP = b"MDMP\x93\xa7\x00\x00" + b"\x00" * 56


def _item(head: dict[str, Any], payload: bytes) -> bytes:
    return orjson.dumps({**head, "length": len(payload)}) + b"\n" + payload + b"\n"


def _envelope(*items: bytes) -> bytes:
    return orjson.dumps({"event_id": EVENT_ID}) + b"\n" + b"".join(items)


EVENT = _item({"type": "event"}, orjson.dumps({"event_id": EVENT_ID, "message": "boom"}))
DUMP = _item(
    {"type": "attachment", "filename": "upload.dmp", "attachment_type": "event.minidump"},
    MINIDUMP,
)
PROFILE = _item(
    {"type": "profile"}, orjson.dumps({"event_id": "cd" * 16, "platform": "python", "version": "1"})
)


def _quota(category: str) -> dict[str, Any]:
    return {
        "id": f"q-{category}",
        "categories": [category],
        "scope": "project",
        "limit": 0,
        "reason": f"{category}_quota",
    }


async def _relay(factory: RelayFactory, *categories: str) -> TestClient:
    return await factory(
        policy={"quotas": [_quota(c) for c in categories]},
        upstream={"client_reports_interval": 100},
    )


async def _post(relay: TestClient, body: bytes) -> Any:
    return await relay.post("/api/42/envelope/", data=body, headers=auth_header())


async def _with_upstream_limit(relay: TestClient, recorder: RecordingUpstream, header: str) -> None:
    """The upstream answers 429 with `header`; the relay caches it."""
    recorder.answer(Reply(429, {"X-Sentry-Rate-Limits": header}))
    assert (await _post(relay, _envelope(EVENT))).status == 200
    async with asyncio.timeout(5):
        while not len(relay.app[UPSTREAM_LIMITS]):
            await asyncio.sleep(0.01)


def _reported(relay: TestClient) -> dict[tuple[str, str, str], int]:
    counts: dict[tuple[str, str, str], int] = {}
    for per_target in relay.app[INGEST].client_reports._counts.values():
        counts.update(per_target)
    return counts


async def test_an_attachment_quota_keeps_the_minidump_that_makes_the_event(
    relay_factory: RelayFactory, recorder: RecordingUpstream
) -> None:
    relay = await _relay(relay_factory, "attachment")
    resp = await _post(relay, _envelope(EVENT, DUMP))
    assert resp.status == 200
    assert "X-Sentry-Rate-Limits" not in resp.headers  # no plain attachment to limit
    await recorder.wait_for(1)
    items = [(i.type, i.headers.get("attachment_type")) for i in recorder.envelopes[0].items]
    assert items == [("event", None), ("attachment", "event.minidump")]


@pytest.mark.parametrize(
    "head",
    [
        {"type": "attachment", "attachment_type": "event.minidump", "filename": "u.dmp"},
        {"type": "attachment", "attachment_type": "event.applecrashreport", "filename": "c.crash"},
        {"type": "attachment", "attachment_type": "event.payload", "filename": "__sentry-event"},
        {"type": "unreal_report", "filename": "crash.zip"},
    ],
    ids=["minidump", "apple_crash_report", "native_event_payload", "unreal_report"],
)
async def test_an_error_quota_drops_a_crash_report_without_an_event(
    relay_factory: RelayFactory, recorder: RecordingUpstream, head: dict[str, Any]
) -> None:
    relay = await _relay(relay_factory, "error")
    log = _item({"type": "attachment", "filename": "log.txt"}, b"abc")
    resp = await _post(relay, _envelope(_item(head, MINIDUMP), log))
    assert resp.status == 429, await resp.text()
    assert resp.headers["X-Sentry-Rate-Limits"].split(":")[1] == "error"
    await asyncio.sleep(0.1)
    assert recorder.envelopes == []


async def test_nel_reports_are_limited_as_errors(
    relay_factory: RelayFactory, recorder: RecordingUpstream
) -> None:
    nel = _item(
        {"type": "nel", "content_type": "application/json"},
        orjson.dumps({"type": "network-error", "url": "https://example.com/", "body": {}}),
    )
    relay = await _relay(relay_factory, "security")
    assert (await _post(relay, _envelope(nel))).status == 200
    relay = await _relay(relay_factory, "error")
    assert (await _post(relay, _envelope(nel))).status == 429


async def test_limited_feedback_takes_its_screenshot(
    relay_factory: RelayFactory, recorder: RecordingUpstream
) -> None:
    relay = await _relay(relay_factory, "feedback")
    feedback = _item(
        {"type": "feedback"},
        orjson.dumps({"event_id": EVENT_ID, "contexts": {"feedback": {"message": "broken"}}}),
    )
    shot = _item({"type": "attachment", "filename": "screenshot.png"}, b"\x89PNG\r\n\x1a\n")
    resp = await _post(relay, _envelope(feedback, shot))
    assert resp.status == 429
    await asyncio.sleep(0.1)
    assert recorder.envelopes == []


async def test_a_transaction_quota_drops_a_profile_without_its_transaction(
    relay_factory: RelayFactory, recorder: RecordingUpstream
) -> None:
    relay = await _relay(relay_factory, "transaction")
    assert (await _post(relay, _envelope(PROFILE))).status == 429
    assert _reported(relay) == {("rate_limited_events", "transaction_quota", "profile"): 1}


async def test_a_cached_transaction_limit_drops_a_profile_without_its_transaction(
    relay_factory: RelayFactory, recorder: RecordingUpstream
) -> None:
    relay = await relay_factory()
    await _with_upstream_limit(relay, recorder, "60:transaction:organization:usage")
    assert (await _post(relay, _envelope(PROFILE))).status == 429


async def test_ui_profile_chunks_are_limited_apart(
    relay_factory: RelayFactory, recorder: RecordingUpstream
) -> None:
    def chunk(platform: str) -> bytes:
        return _item({"type": "profile_chunk", "platform": platform}, b'{"version":"2"}')

    relay = await relay_factory()
    await _with_upstream_limit(relay, recorder, "60:profile_chunk_ui:organization:usage")
    assert (await _post(relay, _envelope(chunk("cocoa")))).status == 429
    assert (await _post(relay, _envelope(chunk("python")))).status == 200
    relay = await _relay(relay_factory, "profile_chunk")
    assert (await _post(relay, _envelope(chunk("javascript")))).status == 200
    assert (await _post(relay, _envelope(chunk("node")))).status == 429


async def test_client_reports_name_every_category_a_limited_item_counted_in(
    relay_factory: RelayFactory, recorder: RecordingUpstream
) -> None:
    relay = await _relay(relay_factory, "error", "transaction")
    tx = {
        "event_id": EVENT_ID,
        "type": "transaction",
        "transaction": "/checkout",
        "start_timestamp": 1.0,
        "timestamp": 2.0,
        "contexts": {"trace": {"trace_id": "1" * 32, "span_id": "2" * 16}},
        "spans": [{"span_id": f"{n + 3:016x}", "start_timestamp": 1.0} for n in range(2)],
    }
    attachment = _item({"type": "attachment", "filename": "a.txt"}, b"0123456789")
    assert (await _post(relay, _envelope(EVENT, attachment))).status == 429
    assert (
        await _post(relay, _envelope(_item({"type": "transaction"}, orjson.dumps(tx))))
    ).status == 429
    assert (await _post(relay, _envelope(DUMP))).status == 429
    field = "rate_limited_events"
    assert _reported(relay) == {
        (field, "error_quota", "error"): 2,
        (field, "error_quota", "attachment"): 10 + len(MINIDUMP),
        (field, "error_quota", "attachment_item"): 2,
        (field, "transaction_quota", "transaction"): 1,
        (field, "transaction_quota", "span"): 3,
    }
    # Our own metrics keep one outcome per item, in its primary category.
    metrics = await (await relay.get("/metrics")).text()
    assert 'relay_item_quantity_total{category="transaction",outcome="rate_limited"} 1.0' in metrics
    assert 'relay_item_quantity_total{category="span",outcome="rate_limited"}' not in metrics


async def test_a_log_byte_limit_reports_log_bytes_only(
    relay_factory: RelayFactory, recorder: RecordingUpstream
) -> None:
    relay = await _relay(relay_factory, "log_byte")
    logs = orjson.dumps({"items": [{"timestamp": 1.0, "level": "info", "body": "x"}]})
    log = _item(
        {"type": "log", "item_count": 1, "content_type": "application/vnd.sentry.items.log+json"},
        logs,
    )
    assert (await _post(relay, _envelope(log))).status == 429
    assert _reported(relay) == {("rate_limited_events", "log_byte_quota", "log_byte"): len(logs)}


async def test_a_limited_minidump_upload_reports_its_attachment_item(
    relay_factory: RelayFactory, recorder: RecordingUpstream
) -> None:
    relay = await _relay(relay_factory, "error")
    upload = _minidump_upload()
    headers = {**auth_header(), "Content-Type": "multipart/form-data; boundary=xyzzy"}
    assert (await relay.post("/api/42/minidump/", data=upload, headers=headers)).status == 200
    reported = _reported(relay)
    assert reported[("rate_limited_events", "error_quota", "error")] == 1
    assert reported[("rate_limited_events", "error_quota", "attachment_item")] == 1
    assert ("rate_limited_events", "error_quota", "attachment") in reported
