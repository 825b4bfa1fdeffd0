"""Client-controlled headers and fields of unexpected types or sizes: never a 500, never
an accepted envelope lost afterwards, never a background task stopped."""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient

from relay.outcomes import Outcome, OutcomeKind
from relay.policy.targets import resolve_target
from relay.protocol.categories import MAX_ITEM_COUNT, item_quantities
from relay.services.client_reports import MAX_QUANTITY, ClientReports
from relay.services.outbox import MemoryOutbox, OutboxEntry
from tests.support.relay import KEY, auth_header
from tests.support.upstream import RecordingUpstream

EVENT_ID = "9ec79c33ec9942ab8353589fcb2e04dc"


@pytest.mark.parametrize("kind", [["event.minidump"], {"a": 1}, 7, None, True])
async def test_an_attachment_type_of_any_json_type_is_answered_never_lost(
    relay: TestClient, recorder: RecordingUpstream, kind: Any
) -> None:
    header = orjson.dumps({"type": "attachment", "attachment_type": kind, "length": 5})
    body = (
        orjson.dumps({"event_id": EVENT_ID})
        + b'\n{"type":"event"}\n{"message":"hi"}\n'
        + header
        + b"\nhello\n"
    )
    resp = await relay.post("/api/42/envelope/", data=body, headers=auth_header())
    if kind is not None:
        # Not a string: Sentry refuses the envelope, so it is refused here, not forwarded.
        assert resp.status == 400
        await asyncio.sleep(0.1)
        assert recorder.envelopes == []
        return
    assert resp.status == 200
    await recorder.wait_for(1)
    (envelope,) = recorder.envelopes
    assert [i.type for i in envelope.items] == ["event", "attachment"]


def _form(boundary: str, fields: list[tuple[str, bytes, str | None]]) -> bytes:
    out = b""
    for name, value, filename in fields:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + value
        out += b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


@pytest.mark.parametrize(
    "fields",
    [
        [("sentry[user]", b"bob"), ("sentry[user][email]", b"alice@example.com")],
        [("sentry[user][email]", b"alice@example.com"), ("sentry[user]", b"bob")],
        [("sentry[]", b"bob"), ("sentry[][email]", b"alice@example.com")],
        [("sentry[user][email]", b"bob"), ("sentry[user][email]", b"alice@example.com")],
    ],
)
async def test_minidump_fields_that_collide_are_each_kept_and_scrubbed(
    relay: TestClient, recorder: RecordingUpstream, fields: list[tuple[str, bytes]]
) -> None:
    body = _form(
        "XyZ",
        [("upload_file_minidump", b"MDMP\x00\x01", "a.dmp"), *((n, v, None) for n, v in fields)],
    )
    resp = await relay.post(
        "/api/42/minidump/",
        data=body,
        headers={**auth_header(), "Content-Type": "multipart/form-data; boundary=XyZ"},
    )
    assert resp.status == 200, await resp.text()
    await recorder.wait_for(1)
    (got,) = recorder.received
    assert b"MDMP\x00\x01" in got.body
    assert b"bob" in got.body  # not personal data by the default policy: kept
    assert b"alice@example.com" not in got.body  # scrubbed wherever it stood
    # Every field part still has a value (none emptied by the other's path); the relay
    # adds one, the answered event id (`sentry[event_id]`), first.
    bodies = [chunk.split(b"\r\n\r\n", 1)[1] for chunk in got.body.split(b"--XyZ")[1:-1]]
    assert len(bodies) == 4 and all(b.strip(b"\r\n") for b in bodies), bodies
    assert bodies[0].strip(b"\r\n").decode() == uuid.UUID(await resp.text()).hex


def test_an_item_count_is_capped() -> None:
    (spans,) = item_quantities("span", {"item_count": 2**64 - 1}, 10)
    assert spans[1] == MAX_ITEM_COUNT
    logs = dict(item_quantities("log", {"item_count": 10**30}, 10))
    assert logs["log_item"] == MAX_ITEM_COUNT
    assert item_quantities("span", {"item_count": 3}, 10)[0][1] == 3
    # Session aggregates count their buckets (as Sentry), whatever the numbers in them.
    aggregates = {"aggregates": [{"exited": 2**70}, {"errored": 2**70}]}
    assert item_quantities("sessions", {}, 10, aggregates) == [("session", 2)]


async def test_client_report_lines_stay_within_32_bits_and_a_failed_one_never_stops_them(
    caplog: pytest.LogCaptureFixture,
) -> None:
    target = resolve_target("https://sentry.example.com", None, 42, KEY)
    outbox = MemoryOutbox(100, 10**6)
    reports = ClientReports(outbox, interval=3600)
    # Many envelopes of the most an item counts for add up past what a line holds.
    drop = Outcome(OutcomeKind.RATE_LIMITED, "quota", "log_item", 2**62, 42)
    for _ in range(3):
        reports.record(target, drop)
    assert reports._counts[target.key][("rate_limited_events", "quota", "log_item")] == (
        MAX_QUANTITY
    )
    await reports.flush()
    entry = await asyncio.wait_for(outbox.get(), 1)
    report = orjson.loads(entry.body.split(b"\n")[2])
    assert report["rate_limited_events"][0]["quantity"] == MAX_QUANTITY

    # A report that cannot be built or queued is logged; the next one goes out.
    class Broken(MemoryOutbox):
        async def put(self, entry: OutboxEntry) -> None:
            raise RuntimeError("unexpected")

    failing = ClientReports(Broken(100, 10**6), interval=3600)
    failing.record(target, Outcome(OutcomeKind.FILTERED, "f", "error", 1, 42))
    with caplog.at_level(logging.ERROR, logger="relay.client_reports"):
        await failing.flush()
    assert "client report dropped: it could not be sent" in caplog.text
