from __future__ import annotations

import base64
import json
import uuid
import zlib

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.protocol.envelope import parse_envelope
from relay.protocol.store import (
    StoreError,
    decode_store_body,
    normalize_event_id,
    store_to_envelope,
)

EVENT = {"event_id": "9d3b62a420d34c9ea6173cc867f4e1a3", "message": "hi", "level": "error"}
RAW = json.dumps(EVENT).encode()
CAP = 1 << 20


def test_json_body() -> None:
    assert decode_store_body(RAW, max_decompressed=CAP) == EVENT
    assert decode_store_body(b"  \n" + RAW + b"\n", max_decompressed=CAP) == EVENT


def test_base64_json() -> None:
    assert decode_store_body(base64.b64encode(RAW), max_decompressed=CAP) == EVENT


def test_base64_zlib_json() -> None:
    body = base64.b64encode(zlib.compress(RAW))
    assert decode_store_body(body, max_decompressed=CAP) == EVENT


def test_base64_with_line_breaks() -> None:
    body = base64.encodebytes(zlib.compress(RAW * 1))  # MIME style, newline every 76 chars
    assert decode_store_body(body, max_decompressed=CAP) == EVENT


def test_nan_and_infinity_from_old_python_sdks() -> None:
    body = b'{"extra": {"a": NaN, "b": Infinity, "c": -Infinity, "d": 1}}'
    assert decode_store_body(body, max_decompressed=CAP) == {
        "extra": {"a": None, "b": None, "c": None, "d": 1}
    }


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "empty body"),
        (b"   ", "empty body"),
        (b"[1, 2]", "neither JSON"),
        (base64.b64encode(b"[1, 2]"), "neither JSON"),
        (b"{not json", "invalid JSON"),
        (b"%%%", "neither JSON"),
        (base64.b64encode(b"plain text, not zlib"), "neither JSON"),
        (base64.b64encode(zlib.compress(b"[1]")), "JSON object"),
        (base64.b64encode(zlib.compress(RAW))[:-8], "neither JSON"),
    ],
)
def test_junk(body: bytes, message: str) -> None:
    with pytest.raises(StoreError) as info:
        decode_store_body(body, max_decompressed=CAP)
    assert message in str(info.value)
    assert not info.value.too_large


def test_zlib_bomb_is_too_large() -> None:
    body = base64.b64encode(zlib.compress(bytes(64 << 20), 9))
    with pytest.raises(StoreError) as info:
        decode_store_body(body, max_decompressed=CAP)
    assert info.value.too_large


def test_inflated_size_limit_is_inclusive() -> None:
    raw = json.dumps({"x": "a" * 1000}).encode()
    body = base64.b64encode(zlib.compress(raw))
    assert decode_store_body(body, max_decompressed=len(raw))["x"] == "a" * 1000
    with pytest.raises(StoreError) as info:
        decode_store_body(body, max_decompressed=len(raw) - 1)
    assert info.value.too_large


def test_store_to_envelope_keeps_the_event_id() -> None:
    event = dict(EVENT)
    env = parse_envelope(store_to_envelope(event, event_id=None).serialize())
    assert env.headers == {"event_id": EVENT["event_id"]}
    [item] = env.items
    assert item.type == "event"
    assert item.headers["content_type"] == "application/json"
    assert item.headers["length"] == len(item.payload)
    assert orjson.loads(item.payload) == EVENT


def test_store_to_envelope_generates_an_event_id() -> None:
    event = {"message": "no id"}
    env = store_to_envelope(event, event_id=None)
    eid = env.event_id
    assert eid is not None and len(eid) == 32 and uuid.UUID(eid).version == 4
    assert event["event_id"] == eid
    assert orjson.loads(env.items[0].payload)["event_id"] == eid


def test_store_to_envelope_explicit_id_wins_and_is_normalized() -> None:
    given_id = "12345678-1234-5678-1234-567812345678"
    env = store_to_envelope(dict(EVENT), event_id=given_id.upper())
    assert env.event_id == "12345678123456781234567812345678"
    assert orjson.loads(env.items[0].payload)["event_id"] == env.event_id


def test_store_to_envelope_rejects_bad_ids() -> None:
    with pytest.raises(StoreError):
        store_to_envelope({"event_id": "nope"}, event_id=None)
    with pytest.raises(StoreError):
        store_to_envelope({}, event_id="nope")


@pytest.mark.parametrize(
    ("event_type", "item_type"),
    [
        ("transaction", "transaction"),
        ("error", "event"),
        ("default", "event"),
        (None, "event"),
        ("csp", "security"),
        ("expectct", "security"),
    ],
)
def test_item_type(event_type: str | None, item_type: str) -> None:
    event: dict[str, object] = {"message": "m"}
    if event_type is not None:
        event["type"] = event_type
    assert store_to_envelope(event, event_id=None).items[0].type == item_type


@pytest.mark.parametrize(
    "body",
    [
        b'{"extra": {"big": 123456789012345678901234567890}}',
        b'{"extra": {"big": 123456789012345678901234567890, "nan": NaN}}',
    ],
)
def test_integers_beyond_64_bits_still_serialize(body: bytes) -> None:
    event = decode_store_body(body, max_decompressed=CAP)
    env = store_to_envelope(event, event_id=None)
    assert json.loads(env.items[0].payload)["extra"]["big"] == pytest.approx(1.2345678901e29)


def test_normalize_event_id() -> None:
    assert normalize_event_id("9D3B62A420D34C9EA6173CC867F4E1A3") == EVENT["event_id"]
    assert normalize_event_id("{12345678-1234-5678-1234-567812345678}") is not None
    assert normalize_event_id(42) is None
    assert normalize_event_id("") is None


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=512))
def test_fuzz_only_store_errors(body: bytes) -> None:
    try:
        event = decode_store_body(body, max_decompressed=4096)
    except StoreError:
        return
    assert isinstance(event, dict)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=80, deadline=None)
@given(
    event=st.dictionaries(st.text(max_size=10), json_values, max_size=6),
    shape=st.sampled_from(["json", "b64", "b64zlib"]),
)
def test_property_every_shape_decodes_to_the_same_event(
    event: dict[str, object], shape: str
) -> None:
    raw = orjson.dumps(event)
    body = {
        "json": raw,
        "b64": base64.b64encode(raw),
        "b64zlib": base64.b64encode(zlib.compress(raw)),
    }[shape]
    assert decode_store_body(body, max_decompressed=CAP) == event
