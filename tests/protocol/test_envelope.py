from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.protocol.envelope import (
    MAX_JSON_DEPTH,
    EnvelopeError,
    Item,
    exceeds_depth,
    json_exceeds_depth,
    make_envelope,
    parse_envelope,
)
from relay.protocol.ratelimit_header import (
    DEFAULT_RETRY_AFTER,
    MAX_RETRY_AFTER,
    RateLimit,
    format_rate_limits,
    parse_rate_limits,
    parse_retry_after,
)
from tests.support.corpus import ENVELOPES

CORPUS = ENVELOPES
HEAD = b'{"event_id":"9ec79c33ec9942ab8353589fcb2e04dc","dsn":"https://e12d836b15bb49d7bbf99e64295d995b@sentry.io/42"}'


# --- grammar ----------------------------------------------------------------------


def test_corpus_is_present() -> None:
    assert len(CORPUS) >= 7


@pytest.mark.parametrize("path", CORPUS, ids=lambda p: p.name)
def test_corpus_round_trips_byte_for_byte(path: Path) -> None:
    data = path.read_bytes()
    env = parse_envelope(data)
    assert env.items
    assert env.serialize() == data
    for item in env.items:
        assert item.headers["length"] == len(item.payload)


def test_items_with_length() -> None:
    data = HEAD + b'\n{"type":"attachment","length":10,"filename":"a.txt"}\n\xef\xbb\xbfHello\r\n\n'
    env = parse_envelope(data)
    assert env.event_id == "9ec79c33ec9942ab8353589fcb2e04dc"
    assert env.headers["dsn"].startswith("https://")
    [item] = env.items
    assert (item.type, item.payload, item.headers["filename"]) == (
        "attachment",
        b"\xef\xbb\xbfHello\r\n",
        "a.txt",
    )
    assert env.serialize() == data


def test_items_without_length() -> None:
    data = HEAD + b'\n{"type":"event"}\n{"message":"hello"}\n{"type":"session"}\n{"sid":"x"}\n'
    env = parse_envelope(data)
    assert [(i.type, i.payload) for i in env.items] == [
        ("event", b'{"message":"hello"}'),
        ("session", b'{"sid":"x"}'),
    ]
    assert env.serialize() == data


def test_payload_with_length_may_contain_newlines() -> None:
    data = (
        HEAD + b'\n{"type":"attachment","length":6}\na\nb\n\nc\n{"type":"event","length":2}\n{}\n'
    )
    env = parse_envelope(data)
    assert [i.payload for i in env.items] == [b"a\nb\n\nc", b"{}"]
    assert env.serialize() == data


@pytest.mark.parametrize(
    ("data", "payloads"),
    [
        (b"{}\n", []),
        (b"{}", []),
        (b'{}\n{"type":"a","length":0}\n\n', [b""]),
        (b'{}\n{"type":"a","length":0}', [b""]),
        (b'{}\n{"type":"a"}\n\n', [b""]),
        (b'{}\n{"type":"a"}\n', [b""]),
        (b'{}\n{"type":"a"}', [b""]),
        (b'{}\n{"type":"a","length":3}\nabc', [b"abc"]),
        (b'{}\n{"type":"a"}\nabc', [b"abc"]),
        (b'{}\n{"type":"a"}\n\n{"type":"b"}\nx\n', [b"", b"x"]),
        (b'{}\n{"type":"a","length":0}\n\n{"type":"b","length":1}\nx', [b"", b"x"]),
    ],
)
def test_empty_payloads_and_trailing_newlines(data: bytes, payloads: list[bytes]) -> None:
    env = parse_envelope(data)
    assert [i.payload for i in env.items] == payloads
    again = parse_envelope(env.serialize())
    assert [i.payload for i in again.items] == payloads
    assert again.serialize() == env.serialize()
    if data.endswith(b"\n") and data != b'{}\n{"type":"a"}\n':
        # (an implicit-length item ending the body has its empty payload written out)
        assert env.serialize() == data


def test_unknown_types_and_header_keys_are_kept_byte_for_byte() -> None:
    header = b'{ "type" : "future_thing",  "zz":1, "aa":{"nested":[1,2.50,"\\u00e9"]}, "length":3 }'
    env_head = b'{"unknown_key": [1, 2],  "event_id":"9ec79c33ec9942ab8353589fcb2e04dc"}'
    data = env_head + b"\n" + header + b"\nxyz\n"
    env = parse_envelope(data)
    assert env.items[0].type == "future_thing"
    assert env.items[0].headers["aa"] == {"nested": [1, 2.5, "\u00e9"]}
    assert env.serialize() == data


def test_changing_a_header_reserializes_only_that_line() -> None:
    data = HEAD + b'\n{"type":"event", "length":2}\n{}\n{"type":"x", "q":1}\nab\n'
    env = parse_envelope(data)
    env.items[0].set_header("extra", True)
    out = env.serialize()
    assert out.startswith(HEAD + b"\n")
    assert b'{"type":"x", "q":1}\nab\n' in out
    assert parse_envelope(out).items[0].headers == {"type": "event", "length": 2, "extra": True}
    env.set_header("sent_at", "2026-01-01T00:00:00Z")
    assert parse_envelope(env.serialize()).headers["sent_at"] == "2026-01-01T00:00:00Z"
    assert env.pop_header("dsn") is not None
    assert "dsn" not in parse_envelope(env.serialize()).headers


def test_set_payload_updates_length() -> None:
    env = parse_envelope(HEAD + b'\n{"type":"event","length":2}\n{}\n{"type":"b"}\nxy\n')
    env.items[0].set_payload(b'{"a":1}')
    env.items[1].set_payload(b"line1\nline2")  # needs a length now
    again = parse_envelope(env.serialize())
    assert [i.payload for i in again.items] == [b'{"a":1}', b"line1\nline2"]
    assert again.items[0].headers["length"] == 7
    assert again.items[1].headers["length"] == 11


def test_make_envelope() -> None:
    env = make_envelope({"event_id": "a" * 32}, [({"type": "event"}, b"{}"), ({"type": "x"}, b"")])
    again = parse_envelope(env.serialize())
    assert [(i.type, i.headers["length"], i.payload) for i in again.items] == [
        ("event", 2, b"{}"),
        ("x", 0, b""),
    ]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty envelope"),
        (b"   \n  ", "empty envelope"),
        (b"not json\n", "envelope header is not valid JSON"),
        (b"[1]\n", "envelope header must be a JSON object"),
        (b'{}\n{"type":"a","length":10}\nshort', "truncated: length 10, 5 bytes left"),
        (b'{}\n{"type":"a","length":10}\n', "truncated"),
        (b'{}\n{"type":"a","length":2}\nabc\n', "not followed by a newline"),
        (b'{}\n{"type":"a","length":-1}\nabc\n', "invalid length"),
        (b'{}\n{"type":"a","length":"3"}\nabc\n', "invalid length"),
        (b'{}\n{"type":"a","length":true}\na\n', "invalid length"),
        (b'{}\n{"length":1}\na\n', "has no type"),
        (b'{}\n{"type":""}\na\n', "has no type"),
        (b'{}\n{"type":7}\na\n', "has no type"),
        (b'{}\n{"type":"a"\na\n', "item 0 header is not valid JSON"),
        (b'{}\n{"type":"a"}\nx\n[]\n', "item 1 header must be a JSON object"),
        # As Sentry's Relay refuses them: upstream they would be refused after a 200.
        (b'{"event_id":"not-a-uuid"}\n', "event_id is not a UUID: 'not-a-uuid'"),
        (b'{"event_id":12}\n', "event_id is not a UUID: 12"),
        (b'{"sent_at":"yesterday"}\n', "sent_at is not an ISO 8601 timestamp"),
        (b'{"sent_at":1700000000}\n', "sent_at is not an ISO 8601 timestamp"),
        (b'{}\n{"type":"integration"}\nx\n', "item 0 has the type 'integration'"),
    ],
)
def test_errors(data: bytes, message: str) -> None:
    with pytest.raises(EnvelopeError) as info:
        parse_envelope(data)
    assert message in str(info.value)


@pytest.mark.parametrize(
    "header",
    [
        b'{"event_id":"9ec79c33ec9942ab8353589fcb2e04dc","sent_at":"2026-12-07T04:31:14.123Z"}',
        b'{"event_id":"9EC79C33-EC99-42AB-8353-589FCB2E04DC","sent_at":"2026-12-07T04:31:14+00:00"}',
        b'{"event_id":null,"sent_at":null}',
    ],
)
def test_event_ids_and_timestamps_sentry_reads(header: bytes) -> None:
    assert parse_envelope(header + b"\n").serialize() == header + b"\n"


@pytest.mark.parametrize("end", [b"\r", b" ", b"\t", b" \r"])
def test_header_lines_ending_in_whitespace_are_forwarded_on_a_line_of_their_own(
    end: bytes,
) -> None:
    # Sentry refuses a header not followed by a bare newline: such a line is accepted, and
    # forwarded as the parsed header, not as received.
    data = b'{"event_id":"9ec79c33ec9942ab8353589fcb2e04dc"}' + end + b'\n{"type":"event"}'
    data += end + b'\n{"message":"hi"}\n'
    out = parse_envelope(data).serialize()
    assert out == (
        b'{"event_id":"9ec79c33ec9942ab8353589fcb2e04dc"}\n{"type":"event"}\n{"message":"hi"}\n'
    )


def test_whitespace_before_the_header_is_skipped() -> None:
    data = b'\n \r\n{"event_id":"9ec79c33ec9942ab8353589fcb2e04dc"}\n{"type":"event"}\n{}\n'
    parsed = parse_envelope(data)
    assert parsed.event_id == "9ec79c33ec9942ab8353589fcb2e04dc"
    assert parsed.serialize() == data.lstrip()


def test_too_many_items() -> None:
    data = b"{}\n" + b'{"type":"a"}\nx\n' * 11
    assert len(parse_envelope(data, max_items=11).items) == 11
    with pytest.raises(EnvelopeError, match="too many items"):
        parse_envelope(data, max_items=10)


# --- properties -------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
json_values = st.recursive(
    json_scalars,
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
    max_leaves=8,
)
header_dicts = st.dictionaries(
    st.text(max_size=8).filter(lambda k: k not in ("type", "length")), json_values, max_size=4
)


@st.composite
def items(draw: st.DrawFn) -> tuple[dict[str, Any], bytes]:
    headers = draw(header_dicts)
    headers["type"] = draw(st.text(min_size=1, max_size=15))
    payload = draw(st.binary(max_size=64) | st.text(max_size=32).map(str.encode))
    if draw(st.booleans()) or b"\n" in payload:
        headers["length"] = len(payload)
    return headers, payload


@settings(max_examples=200, deadline=None)
@given(env_headers=header_dicts, env_items=st.lists(items(), max_size=5))
def test_property_round_trip(
    env_headers: dict[str, Any], env_items: list[tuple[dict[str, Any], bytes]]
) -> None:
    built = make_envelope(env_headers, [])
    built.items = [Item(dict(h), p) for h, p in env_items]
    data = built.serialize()
    parsed = parse_envelope(data)
    assert parsed.headers == env_headers
    assert [(i.headers, i.payload) for i in parsed.items] == env_items
    assert parsed.serialize() == data  # and byte-for-byte from then on


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_random_bytes_only_raise_envelope_error(data: bytes) -> None:
    try:
        env = parse_envelope(data)
    except EnvelopeError:
        return
    parse_envelope(env.serialize())


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            [
                b"{}",
                b"\n",
                b'{"type":"a"}',
                b'{"type":"a","length":2}',
                b'"length":',
                b"xy",
                b"{",
                b"}",
            ]
        ),
        max_size=12,
    ).map(b"".join)
)
def test_fuzz_envelope_like_bytes_only_raise_envelope_error(data: bytes) -> None:
    try:
        env = parse_envelope(data)
    except EnvelopeError:
        return
    again = parse_envelope(env.serialize())
    assert [(i.headers, i.payload) for i in again.items] == [
        (i.headers, i.payload) for i in env.items
    ]


# --- X-Sentry-Rate-Limits / Retry-After -------------------------------------------


def test_rate_limits_documented_examples() -> None:
    # Examples from Sentry's SDK rate-limiting documentation.
    assert parse_rate_limits("60:transaction:key, 2700:default;error;security:organization") == [
        RateLimit(60.0, ("transaction",), "key"),
        RateLimit(2700.0, ("default", "error", "security"), "organization"),
    ]
    assert parse_rate_limits("60::organization") == [RateLimit(60.0, (), "organization")]
    assert parse_rate_limits("2700:metric_bucket:organization:quota_exceeded:custom") == [
        RateLimit(2700.0, ("metric_bucket",), "organization", "quota_exceeded", ("custom",))
    ]


def test_rate_limits_applies_to() -> None:
    everything, some = parse_rate_limits("60::organization, 10:error;transaction:project")
    assert everything.applies_to("attachment")
    assert some.applies_to("error") and not some.applies_to("session")


@pytest.mark.parametrize(
    "value",
    ["", ",", "garbage", "abc:error:key", "-5:error:key", "inf::org", "nan::org", ":error:key"],
)
def test_rate_limits_broken_entries_are_skipped(value: str) -> None:
    assert parse_rate_limits(value) == []
    assert parse_rate_limits(f"{value}, 5:error:key") == [RateLimit(5.0, ("error",), "key")]


def test_rate_limits_are_bounded_and_default_scope() -> None:
    assert parse_rate_limits("99999999:error") == [RateLimit(MAX_RETRY_AFTER, ("error",))]
    assert parse_rate_limits(" 1.5 : error ; session : project ") == [
        RateLimit(1.5, ("error", "session"), "project")
    ]


def test_format_rate_limits() -> None:
    limits = [
        RateLimit(59.2, ("transaction",), "key"),
        RateLimit(0.0, (), "organization", "quota_exceeded"),
        RateLimit(2700, ("metric_bucket",), "organization", None, ("custom",)),
    ]
    assert format_rate_limits(limits) == (
        "60:transaction:key, 1::organization:quota_exceeded, 2700:metric_bucket:organization::custom"
    )
    assert format_rate_limits([]) == ""


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.builds(
            RateLimit,
            retry_after=st.integers(1, 86400).map(float),
            categories=st.lists(st.sampled_from(["error", "transaction", "span"]), max_size=3).map(
                tuple
            ),
            scope=st.sampled_from(["organization", "project", "key"]),
            reason=st.none() | st.sampled_from(["quota_exceeded", "spike"]),
            namespaces=st.just(()),
        ),
        max_size=4,
    )
)
def test_property_rate_limits_round_trip(limits: list[RateLimit]) -> None:
    assert parse_rate_limits(format_rate_limits(limits)) == limits


def test_retry_after() -> None:
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after(" 2.5 ") == 2.5
    assert parse_retry_after(None) == DEFAULT_RETRY_AFTER
    assert parse_retry_after("") == DEFAULT_RETRY_AFTER
    assert parse_retry_after("soon") == DEFAULT_RETRY_AFTER
    assert parse_retry_after("-3") == DEFAULT_RETRY_AFTER
    assert parse_retry_after("1e12") == MAX_RETRY_AFTER
    now = 1445412480.0  # Wed, 21 Oct 2015 07:28:00 GMT
    assert parse_retry_after("Wed, 21 Oct 2015 07:29:00 GMT", now=now) == 60.0


def test_json_module_agrees_with_corpus_lengths() -> None:
    for path in CORPUS:
        env = parse_envelope(path.read_bytes())
        for item in env.items:
            if item.headers.get("content_type") == "application/json":
                assert isinstance(json.loads(item.payload), dict)
        assert orjson.loads(path.read_bytes().split(b"\n", 1)[0]) == env.headers


@pytest.mark.parametrize("depth", [1, 2, 127, 128, 129, 300])
@pytest.mark.parametrize("outer", ["[", "{"])
def test_json_exceeds_depth_matches_the_walk(depth: int, outer: str) -> None:
    value: Any = 1
    for level in range(depth):
        value = [value] if (level % 2 == 0) == (outer == "[") else {"k": value}
    data = json.dumps(value).encode()  # orjson refuses to write past 254 levels
    assert json_exceeds_depth(data) == exceeds_depth(value) == (depth > MAX_JSON_DEPTH)
    # Brackets inside strings only make the cheap bound say "maybe": the walk decides.
    noisy = {"s": "[" * 500, "v": value}
    assert json_exceeds_depth(json.dumps(noisy).encode()) == exceeds_depth(noisy)
