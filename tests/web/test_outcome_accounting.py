"""Every accepted item ends with one outcome, counted in its own quantity.

The paths covered here: a minidump's dump, attachments refused before processing, drops
under a cached upstream limit without a reason code, and a failure in processing with
the disk spool.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest

from relay.keys import INGEST
from relay.processing import pipeline
from tests.support.relay import RelayFactory, auth_header
from tests.support.upstream import RecordingUpstream, Reply
from tests.web.test_other_endpoints import _minidump_upload

EVENT = orjson.dumps({"event_id": "ab" * 16}) + b'\n{"type":"event"}\n{"message":"m"}\n'


def _lines(text: str) -> list[str]:
    return [
        line
        for line in text.splitlines()
        if line.startswith(("relay_items_total{", "relay_item_quantity_total{"))
    ]


async def _metrics(relay: Any) -> list[str]:
    return _lines(await (await relay.get("/metrics")).text())


async def test_a_delivered_minidump_counts_its_dump_as_attachment_bytes(
    relay_factory: RelayFactory, recorder: RecordingUpstream
) -> None:
    relay = await relay_factory()
    upload = _minidump_upload()
    headers = {**auth_header(), "Content-Type": "multipart/form-data; boundary=xyzzy"}
    assert (await relay.post("/api/42/minidump/", data=upload, headers=headers)).status == 200
    await recorder.wait_for(1)
    sent = len(recorder.received[0].body)
    async with asyncio.timeout(5):
        while True:
            got = await _metrics(relay)
            if any('category="attachment",outcome="accepted"' in line for line in got):
                break
            await asyncio.sleep(0.02)
    assert 'relay_items_total{category="error",outcome="accepted",reason="forwarded"} 1.0' in got
    quantity = [
        line for line in got if line.startswith('relay_item_quantity_total{category="attachment"')
    ]
    assert quantity == [
        f'relay_item_quantity_total{{category="attachment",outcome="accepted"}} {float(sent)}'
    ]


async def test_an_attachment_refused_before_processing_counts_its_bytes(
    relay_factory: RelayFactory,
) -> None:
    relay = await relay_factory(upstream={"outbox_max_bytes": 1000})
    attachment = b"x" * 5000
    head = {"type": "attachment", "length": len(attachment), "filename": "a.txt"}
    body = EVENT + orjson.dumps(head) + b"\n" + attachment + b"\n"
    assert (await relay.post("/api/42/envelope/", data=body, headers=auth_header())).status == 503
    got = await _metrics(relay)
    assert 'relay_item_quantity_total{category="attachment",outcome="internal"} 5000.0' in got
    assert 'relay_item_quantity_total{category="error",outcome="internal"} 1.0' in got


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({"X-Sentry-Rate-Limits": "60:error"}, "ratelimit_backoff"),
        ({"Retry-After": "60"}, "ratelimit_backoff"),
        ({"X-Sentry-Rate-Limits": "60:error:organization:quota_exceeded"}, "quota_exceeded"),
    ],
)
async def test_drops_under_a_cached_upstream_limit_are_reported_upstream(
    relay_factory: RelayFactory,
    recorder: RecordingUpstream,
    headers: dict[str, str],
    reason: str,
) -> None:
    """The upstream counted the envelope it answered 429 itself; the ones the relay then
    drops under that limit it never sees, so they go in the client report."""
    relay = await relay_factory(upstream={"client_reports_interval": 100})
    recorder.answer(Reply(429, headers=headers))
    assert (await relay.post("/api/42/envelope/", data=EVENT, headers=auth_header())).status == 200
    async with asyncio.timeout(5):
        while recorder.attempts < 1:
            await asyncio.sleep(0.02)
    await asyncio.sleep(0.1)  # the forwarder has read the 429's limits
    second = await relay.post("/api/42/envelope/", data=EVENT, headers=auth_header())
    assert second.status == 429
    pending = [dict(counts) for counts in relay.app[INGEST].client_reports._counts.values()]
    assert pending == [{("rate_limited_events", reason, "error"): 1}]


async def test_with_the_spool_a_failure_in_processing_gives_the_items_an_outcome(
    relay_factory: RelayFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    relay = await relay_factory(spool={"path": str(tmp_path / "spool")})

    def broken(*_: Any, **__: Any) -> Any:
        raise RuntimeError("a bug in scrubbing")

    monkeypatch.setattr(pipeline, "finish", broken)
    resp = await relay.post("/api/42/envelope/", data=EVENT, headers=auth_header())
    assert resp.status == 200  # as from the backlog: not sent again to fail again
    assert (
        'relay_items_total{category="error",outcome="internal",reason="processing_failed"} 1.0'
        in (await _metrics(relay))
    )


async def test_items_scrubbing_drops_go_in_the_client_report(
    relay_factory: RelayFactory, recorder: RecordingUpstream
) -> None:
    relay = await relay_factory(upstream={"client_reports_interval": 100})
    recording = b'{"segment_id":0}\n[{not json'
    body = (
        EVENT
        + orjson.dumps({"type": "replay_recording", "length": len(recording)})
        + b"\n"
        + recording
        + b"\n"
    )
    assert (await relay.post("/api/42/envelope/", data=body, headers=auth_header())).status == 200
    await recorder.wait_for(1)  # the event went on; the recording was dropped
    pending = [dict(counts) for counts in relay.app[INGEST].client_reports._counts.values()]
    assert pending == [{("discarded_events", "internal_sdk_error", "replay"): 1}]


async def test_envelopes_the_forwarder_gives_up_go_in_the_client_report(
    relay_factory: RelayFactory, recorder: RecordingUpstream
) -> None:
    relay = await relay_factory(
        upstream={"client_reports_interval": 100, "max_attempts": 1, "outage_after": 100}
    )
    recorder.answer(Reply(500))
    assert (await relay.post("/api/42/envelope/", data=EVENT, headers=auth_header())).status == 200
    reports = relay.app[INGEST].client_reports
    async with asyncio.timeout(5):
        while not reports._counts:
            await asyncio.sleep(0.02)
    pending = [dict(counts) for counts in reports._counts.values()]
    assert pending == [{("discarded_events", "queue_overflow", "error"): 1}]
