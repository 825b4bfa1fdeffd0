"""Session Replay items as Sentry handles them: one recording and one video per envelope
(a second is a duplicate, dropped with its own outcome), one `replay` each, and what the
default policy forwards of a replay event, a recording (plain and zlib) and a mobile
replay video holds no planted secret."""

from __future__ import annotations

import random
import zlib
from typing import Any

import msgspec
import orjson
import pytest

from relay.processing import pipeline
from relay.processing.context import RequestContext
from relay.processing.scrub import compile_scrubber
from relay.protocol.envelope import make_envelope, parse_envelope
from tests.processing.scrub.conftest import cfg
from tests.support.relay import RelayFactory, auth_header
from tests.support.upstream import RecordingUpstream

CTX = RequestContext(42, "abc", "203.0.113.9", "sentry.javascript.browser/8.0.0")
REPLAY_ID = "a" * 32

EMAIL = "alice.smith@example.com"
CARD = "4111111111111111"
IBAN = "DE89370400440532013000"
STRIPE = "sk_live_4eC39HqLyjWDarjtT1zdp7dc"
AWS = "AKIAIOSFODNN7EXAMPLE"
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjMifQ.c2lnbmF0dXJlc2lnbg"
DB_PASSWORD = "s3cretDbPw"
PASSWORD = "hunter2secret"
CLIENT_IP = "198.51.100.23"
SECRETS = [EMAIL, CARD, IBAN, STRIPE, AWS, JWT, DB_PASSWORD, PASSWORD, CLIENT_IP]


def replay_event() -> dict[str, Any]:
    return {
        "type": "replay_event",
        "replay_id": REPLAY_ID,
        "event_id": REPLAY_ID,
        "segment_id": 0,
        "replay_type": "session",
        "platform": "javascript",
        "timestamp": 1700000000.0,
        "urls": [f"https://shop.example.com/?email={EMAIL}", f"https://shop/cb?token={JWT}"],
        "user": {"id": "1", "email": EMAIL, "ip_address": CLIENT_IP, "data": {"card": CARD}},
        "request": {
            "url": f"https://shop.example.com/pay?card={CARD}",
            "headers": {"Authorization": f"Bearer {JWT}", "Cookie": f"session={PASSWORD}"},
            "query_string": f"password={PASSWORD}&iban={IBAN}",
        },
        "tags": {"card": CARD, "api_key": STRIPE, "db": f"postgres://app:{DB_PASSWORD}@db/x"},
        "extra": {"iban": IBAN},
    }


def rrweb() -> bytes:
    return orjson.dumps(
        [
            {"type": 4, "timestamp": 1, "data": {"href": f"https://shop/?token={JWT}"}},
            {
                "type": 2,
                "timestamp": 2,
                "data": {
                    "node": {
                        "type": 0,
                        "id": 1,
                        "childNodes": [
                            {"type": 3, "id": 2, "textContent": f"IBAN {IBAN} card {CARD}"},
                            {
                                "type": 2,
                                "id": 3,
                                "tagName": "input",
                                "attributes": {"data-password": PASSWORD},
                                "childNodes": [],
                            },
                        ],
                    },
                    "initialOffset": {"top": 0, "left": 0},
                },
            },
            {"type": 3, "timestamp": 3, "data": {"source": 5, "text": CARD, "id": 3}},
            {
                "type": 5,
                "timestamp": 4,
                "data": {
                    "tag": "performanceSpan",
                    "payload": {
                        "op": "resource.fetch",
                        "description": f"https://api.example.com/x?api_key={STRIPE}",
                        "data": {
                            "request": {
                                "headers": {"authorization": f"Bearer {JWT}"},
                                "body": {"password": PASSWORD},
                            },
                            "response": {"body": f"owner {EMAIL} key {AWS}"},
                        },
                    },
                },
            },
        ]
    )


def recording(*, compress: bool) -> bytes:
    body = rrweb()
    return b'{"segment_id":0}\n' + (zlib.compress(body) if compress else body)


def video() -> bytes:
    return msgspec.msgpack.encode(
        {
            "replay_event": orjson.dumps(replay_event()),
            "replay_recording": recording(compress=True),
            "replay_video": b"\x00\x00\x00\x18ftypmp42" + random.Random(3).randbytes(512),
        }
    )


def envelope(*items: tuple[str, bytes]) -> bytes:
    built = make_envelope({"event_id": REPLAY_ID}, [({"type": t}, p) for t, p in items])
    return built.serialize()


def readable(item_type: str, payload: bytes) -> bytes:
    """What the payload forwarded says, inflated and unpacked."""
    if item_type == "replay_recording":
        head, body = payload.split(b"\n", 1)
        return head + b"\n" + (body if body[:1] in (b"[", b"{") else zlib.decompress(body))
    if item_type == "replay_video":
        parts = msgspec.msgpack.decode(payload)
        assert set(parts) == {"replay_event", "replay_recording", "replay_video"}
        return (
            parts["replay_event"] + b"\n" + readable("replay_recording", parts["replay_recording"])
        )
    return payload


def test_a_second_recording_or_video_is_a_duplicate_counted_once_each() -> None:
    # Sentry takes one `replay_recording` and one `replay_video` per envelope (and refuses
    # an envelope with two, the replay's event with it): the later one goes alone.
    body = envelope(
        ("replay_event", orjson.dumps(replay_event())),
        ("replay_recording", recording(compress=True)),
        ("replay_recording", recording(compress=False)),
        ("replay_video", video()),
        ("replay_video", video()),
    )
    prepared = pipeline.prepare(parse_envelope(body), CTX)
    assert [w.type for w in prepared.kept] == ["replay_event", "replay_recording", "replay_video"]
    assert prepared.kept[1].item.payload == recording(compress=True)
    got = [
        (
            d.work.type,
            d.outcome.kind.value,
            d.outcome.reason,
            d.outcome.category,
            d.outcome.quantity,
        )
        for d in prepared.dropped
    ]
    assert got == [
        ("replay_recording", "invalid", "duplicate_item", "replay", 1),
        ("replay_video", "invalid", "duplicate_item", "replay", 1),
    ]
    assert prepared.quantities() == {"replay": 3}


def test_one_replay_each_for_event_and_recording() -> None:
    body = envelope(
        ("replay_event", orjson.dumps(replay_event())),
        ("replay_recording", recording(compress=True)),
    )
    assert pipeline.prepare(parse_envelope(body), CTX).quantities() == {"replay": 2}
    assert pipeline.prepare(
        parse_envelope(envelope(("replay_video", video()))), CTX
    ).quantities() == {"replay": 1}


@pytest.mark.parametrize(
    "items",
    [
        [("replay_event", "event"), ("replay_recording", "zlib")],
        [("replay_event", "event"), ("replay_recording", "plain")],
        [("replay_video", "video")],
    ],
    ids=["web-zlib", "web-plain", "mobile-video"],
)
async def test_the_default_policy_forwards_no_planted_secret(
    relay_factory: RelayFactory, recorder: RecordingUpstream, items: list[tuple[str, str]]
) -> None:
    payloads = {
        "event": orjson.dumps(replay_event()),
        "zlib": recording(compress=True),
        "plain": recording(compress=False),
        "video": video(),
    }
    body = envelope(*[(t, payloads[kind]) for t, kind in items])
    for secret in SECRETS:
        assert any(secret.encode() in readable(t, payloads[k]) for t, k in items), secret
    relay = await relay_factory()
    headers = {**auth_header(), "X-Forwarded-For": CLIENT_IP}
    assert (await relay.post("/api/42/envelope/", data=body, headers=headers)).status == 200
    await recorder.wait_for(1)
    forwarded = recorder.items()
    assert [i.type for i in forwarded] == [t for t, _ in items]
    for item in forwarded:
        text = readable(item.type, item.payload)
        assert [s for s in SECRETS if s.encode() in text] == [], item.type
        assert b"[Filtered]" in text or b"[email]" in text


@pytest.mark.parametrize("user", [{"id": "1", "ip_address": "{{auto}}"}, {"id": "1"}])
@pytest.mark.parametrize("keep_ip", [True, False])
def test_a_replay_videos_event_gets_the_client_address_as_a_replay_event_does(
    user: dict[str, Any], keep_ip: bool
) -> None:
    # Sentry fills `{{auto}}` (and a mobile or browser replay's missing address) from the
    # request it gets, which comes from the relay: the relay does it, for the replay event
    # inside a video as for a `replay_event` item.
    event = {**replay_event(), "platform": "cocoa", "user": user}
    del event["request"]
    parts = {
        "replay_event": orjson.dumps(event),
        "replay_recording": recording(compress=True),
        "replay_video": b"\x00\x00\x00\x18ftypmp42",
    }
    body = envelope(
        ("replay_event", orjson.dumps(event)), ("replay_video", msgspec.msgpack.encode(parts))
    )
    prepared = pipeline.prepare(parse_envelope(body), CTX)
    policy = cfg(ip_addresses=not keep_ip)
    out = pipeline.finish(prepared, scrubber=compile_scrubber(policy))
    item, video_item = out.items
    inside = msgspec.msgpack.decode(video_item.payload)
    assert inside["replay_video"] == parts["replay_video"]
    expected = {"id": "1", "ip_address": CTX.client_ip} if keep_ip else {"id": "1"}
    assert orjson.loads(item.payload)["user"] == expected
    assert orjson.loads(inside["replay_event"])["user"] == expected
