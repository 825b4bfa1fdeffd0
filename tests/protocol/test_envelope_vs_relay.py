"""The envelope as Sentry's Relay reads it: the vectors of its own parser tests, the item
and envelope headers it reads with a type (an envelope with another value is refused
whole, 400), and the quantities an item counts for.

Whatever Sentry would refuse must be refused here, before it is counted against a quota
and the SDK is told it was accepted; whatever it accepts must pass.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient

from relay.protocol.categories import DataCategory, item_quantities, primary_category
from relay.protocol.envelope import EnvelopeError, parse_envelope
from tests.support.relay import RelayFactory, auth_header
from tests.support.upstream import RecordingUpstream

EVENT_ID = "9ec79c33ec9942ab8353589fcb2e04dc"
HEAD = (
    b'{"event_id":"9ec79c33ec9942ab8353589fcb2e04dc",'
    b'"dsn":"https://e12d836b15bb49d7bbf99e64295d995b:@sentry.io/42"}'
)


# --- the vectors of Sentry's envelope parser tests ----------------------------------


@pytest.mark.parametrize(
    ("body", "items"),
    [
        # header alone, with and without its newline
        (HEAD, []),
        (HEAD + b"\n", []),
        # empty payloads of explicit length: a blank line between items, and at the end
        (
            HEAD + b'\n{"type":"attachment","length":0}\n\n{"type":"attachment","length":0}\n',
            [("attachment", b""), ("attachment", b"")],
        ),
        (
            HEAD + b'\n{"type":"attachment","length":0}\n\n{"type":"attachment","length":0}',
            [("attachment", b""), ("attachment", b"")],
        ),
        # implicit length: up to the newline, or the end
        (HEAD + b'\n{"type":"attachment"}\nhelloworld\n', [("attachment", b"helloworld")]),
        (HEAD + b'\n{"type":"attachment"}\nhelloworld', [("attachment", b"helloworld")]),
        (HEAD + b'\n{"type":"attachment"}', [("attachment", b"")]),
        # a payload of explicit length keeps its BOM and CRLF
        (
            HEAD
            + b'\n{"type":"attachment","length":10,"content_type":"text/plain",'
            + b'"filename":"hello.txt"}\n\xef\xbb\xbfHello\r\n\n'
            + b'{"type":"event","length":41,"content_type":"application/json",'
            + b'"filename":"application.log"}\n{"message":"hello world","level":"error"}\n',
            [
                ("attachment", b"\xef\xbb\xbfHello\r\n"),
                ("event", b'{"message":"hello world","level":"error"}'),
            ],
        ),
        # an item type Sentry does not know is kept
        (
            HEAD + b'\n{"type":"invalid_unknown"}\nhelloworld\n',
            [("invalid_unknown", b"helloworld")],
        ),
        (
            HEAD
            + b'\n{"type":"attachment","length":44,"content_type":"application/json",'
            + b'"attachment_type":"event.view_hierarchy"}\n'
            + b'{"rendering_system":"compose","windows":[]}\n',
            # (the 44th byte is the newline: the payload ends the body)
            [("attachment", b'{"rendering_system":"compose","windows":[]}\n')],
        ),
    ],
)
def test_the_vectors_of_sentrys_parser(body: bytes, items: list[tuple[str, bytes]]) -> None:
    envelope = parse_envelope(body)
    assert envelope.event_id == EVENT_ID
    assert [(i.type, i.payload) for i in envelope.items] == items
    again = parse_envelope(envelope.serialize())
    assert [(i.type, i.payload) for i in again.items] == items


@pytest.mark.parametrize(
    "body",
    [
        HEAD + b'\n{"type":"attachment","length":10}\nhello\n',  # length past the end
        HEAD + b'\n{"type":"attachment","length":2}\nhello\n',  # no newline after it
        HEAD + b'\n{"type":"attachment","length":5}\nhello\r\n',  # CR before the newline
        HEAD + b'\n{"type":"attachment","length":3.0}\nabc\n',
        HEAD + b'\n{"type":"attachment","length":4294967296}\nabc\n',
        HEAD + b'\n{"length":3}\nabc\n',
    ],
)
def test_what_sentrys_parser_refuses(body: bytes) -> None:
    with pytest.raises(EnvelopeError):
        parse_envelope(body)


# --- item headers read with a type ----------------------------------------------------


def _with_item_header(**header: Any) -> bytes:
    line = orjson.dumps({"type": "attachment", **header, "length": 5})
    return HEAD + b"\n" + line + b"\nhello\n"


@pytest.mark.parametrize(
    ("key", "value"),
    [
        # a count of contained items: a 32-bit unsigned integer
        ("item_count", -1),
        ("item_count", 1.5),
        ("item_count", "3"),
        ("item_count", True),
        ("item_count", 2**32),
        # strings
        ("attachment_type", 7),
        ("attachment_type", ["event.minidump"]),
        ("attachment_type", {"a": 1}),
        ("attachment_type", True),
        ("content_type", 1),
        ("filename", ["a.txt"]),
        ("platform", 7),
        # a UUID
        ("routing_hint", "not-a-uuid"),
        ("routing_hint", 12),
        # flags: true or false, nothing else (not even null)
        ("metrics_extracted", "yes"),
        ("spans_extracted", 1),
        ("fully_normalized", None),
        ("sampled", "false"),
    ],
)
def test_an_item_header_of_another_type_is_refused(key: str, value: Any) -> None:
    with pytest.raises(EnvelopeError, match=f"item 0 header {key} "):
        parse_envelope(_with_item_header(**{key: value}))


def test_headers_built_in_the_relay_are_still_read_safely() -> None:
    # Envelopes the relay builds itself are not parsed: a header of another type is
    # still read as absent.
    assert primary_category("profile_chunk", {"platform": ["cocoa"]}) == "profile_chunk"
    assert item_quantities("log", {"item_count": "3"}, 5)[0] == (DataCategory.LOG_ITEM, 1)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("item_count", 0),
        ("item_count", 2**32 - 1),
        ("item_count", None),
        ("attachment_type", None),
        ("attachment_type", "event.attachment"),
        ("attachment_type", "unreal.logs"),
        ("attachment_type", "some.future_type"),  # forwarded as an attachment
        ("content_type", None),
        ("content_type", "Application/JSON"),
        ("filename", None),
        ("filename", ""),
        ("platform", "cocoa"),
        ("routing_hint", "8a4ab00f-fba2-4f7b-a164-b58199d55c95"),
        ("routing_hint", "8a4ab00ffba24f7ba164b58199d55c95"),
        ("routing_hint", None),
        ("metrics_extracted", True),
        ("spans_extracted", False),
        ("fully_normalized", True),
        ("sampled", False),
        # headers Sentry keeps for itself or does not read: any value, forwarded as sent
        ("rate_limited", "whatever"),
        ("source_quantities", {"transactions": "x"}),
        ("sample_rates", [{"id": "x", "rate": "0.5"}]),
        ("meta_length", "n/a"),
    ],
)
def test_an_item_header_sentry_reads_is_kept_byte_for_byte(key: str, value: Any) -> None:
    body = _with_item_header(**{key: value})
    envelope = parse_envelope(body)
    assert envelope.items[0].headers[key] == value
    assert envelope.serialize() == body


# --- the envelope header's sent_at, as Sentry reads it ------------------------------


@pytest.mark.parametrize(
    "sent_at",
    [
        "2026-12-07T04:31:14",  # no offset: Sentry cannot read it as UTC or any zone
        "2026-12-07T04:31:14.123",
        "2026-12-07",
        "2026-12-07T04:31Z",  # no seconds
        "20261207T043114Z",  # ISO 8601's basic format
        "2026-13-07T04:31:14Z",
        "2026-12-07T24:00:00Z",
        "2026-12-07T04:31:14+25:00",
        "2026-12-07T04:31:14.Z",
        "2026-12-07T04:31:14Z trailing",
        "",
    ],
)
def test_a_sent_at_sentry_cannot_read_is_refused(sent_at: str) -> None:
    with pytest.raises(EnvelopeError, match="sent_at"):
        parse_envelope(orjson.dumps({"event_id": EVENT_ID, "sent_at": sent_at}) + b"\n")


@pytest.mark.parametrize(
    "sent_at",
    [
        "2026-12-07T04:31:14Z",
        "2026-12-07T04:31:14.123456789Z",
        "2026-12-07T04:31:14+00:00",
        "2026-12-07T04:31:14-07:30",
        "2026-12-07T04:31:14+0000",
        "2026-12-07 04:31:14Z",
        "2026-12-07t04:31:14z",
        "2026-12-07T04:31:14 UTC",
        "2026-12-07T04:31:14utc",
        "2026-1-7T4:31:14Z",  # numbers need no padding
        " 2026-12-07T04:31:14Z ",
        "2016-12-31T23:59:60Z",  # a leap second
    ],
)
def test_a_sent_at_sentry_reads_is_accepted(sent_at: str) -> None:
    header = orjson.dumps({"event_id": EVENT_ID, "sent_at": sent_at})
    assert parse_envelope(header + b"\n").serialize() == header + b"\n"


# --- end to end: refused before anything is counted or forwarded --------------------


async def _post(relay: TestClient, body: bytes) -> Any:
    return await relay.post("/api/42/envelope/", data=body, headers=auth_header())


@pytest.mark.parametrize(
    "body",
    [
        orjson.dumps({"event_id": EVENT_ID})
        + b'\n{"type":"log","item_count":"2","content_type":"application/vnd.sentry.items.log+json"}'
        + b'\n{"items":[]}\n',
        orjson.dumps({"event_id": EVENT_ID, "sent_at": "2026-12-07T04:31:14.500"})
        + b'\n{"type":"event"}\n{"message":"hi"}\n',
    ],
    ids=["item_count", "sent_at"],
)
async def test_an_envelope_sentry_refuses_is_answered_400_and_not_forwarded(
    relay: TestClient, recorder: RecordingUpstream, body: bytes
) -> None:
    resp = await _post(relay, body)
    assert resp.status == 400, await resp.text()
    await asyncio.sleep(0.1)
    assert recorder.received == []


# --- quantities ----------------------------------------------------------------------


def test_an_empty_attachment_or_log_counts_one_byte() -> None:
    assert item_quantities("attachment", {}, 0) == [
        (DataCategory.ATTACHMENT, 1),
        (DataCategory.ATTACHMENT_ITEM, 1),
    ]
    assert dict(item_quantities("log", {"item_count": 2}, 0)) == {
        DataCategory.LOG_ITEM: 2,
        DataCategory.LOG_BYTE: 1,
    }
    assert item_quantities("attachment", {}, 7)[0] == (DataCategory.ATTACHMENT, 7)


async def test_an_exhausted_attachment_quota_limits_an_empty_attachment(
    relay_factory: RelayFactory, recorder: RecordingUpstream
) -> None:
    quota = {
        "id": "bytes",
        "categories": ["attachment"],
        "scope": "project",
        "limit": 3,
        "window": 60,
        "reason": "attachment_bytes",
    }
    relay = await relay_factory(policy={"quotas": [quota]})

    def attachment(payload: bytes) -> bytes:
        head = {"type": "attachment", "filename": "a.txt", "length": len(payload)}
        return orjson.dumps({}) + b"\n" + orjson.dumps(head) + b"\n" + payload + b"\n"

    assert (await _post(relay, attachment(b"abc"))).status == 200
    await recorder.wait_for(1)
    resp = await _post(relay, attachment(b""))
    assert resp.status == 429, await resp.text()
    assert resp.headers["X-Sentry-Rate-Limits"].split(":")[1] == "attachment"
    await asyncio.sleep(0.1)
    assert len(recorder.received) == 1
