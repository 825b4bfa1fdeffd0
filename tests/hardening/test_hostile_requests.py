"""Hostile requests against a running relay: each gets a clear 4xx (or a 200 for what is
valid, or is only an unreadable item, dropped as invalid), never a 500, a crash or a hang, and a well-behaved client keeps getting 200 within
a second while the attack runs.

Attacks: compression bombs (gzip, deflate, br, zstd, nested), bodies over every limit,
10,000 items in one envelope, JSON nested thousands of levels deep, huge strings, invalid
UTF-8 and lone surrogates, NaN/Infinity, duplicate keys, CR/LF and other bytes HTTP
forbids in header values, slow-loris bodies, thousands of idle connections.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import io
import resource
import time
import zlib
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import brotli
import orjson
import pytest
import zstandard
from aiohttp.test_utils import TestClient

from relay.keys import METRICS
from relay.protocol.envelope import MAX_JSON_DEPTH
from tests.hardening.conftest import GOOD_ENVELOPE, Responsiveness
from tests.support.relay import KEY, RelayFactory, auth_header
from tests.support.upstream import RecordingUpstream

MiB = 1024 * 1024
#: Limits small enough that every attack is cheap to mount, but far above a real event.
LIMITS = {
    "max_request_bytes": 2 * MiB,
    "max_decompressed_bytes": 8 * MiB,
    "max_event_bytes": 256 * 1024,
    "max_attachment_bytes": 1 * MiB,
    "read_timeout_s": 1,
}
EVENT_ID = "0123456789abcdef0123456789abcdef"


def envelope(payload: bytes, item_type: str = "event", header: bytes | None = None) -> bytes:
    head = header if header is not None else b'{"event_id":"' + EVENT_ID.encode() + b'"}'
    item = orjson.dumps({"type": item_type, "length": len(payload)})
    return head + b"\n" + item + b"\n" + payload + b"\n"


def nested(depth: int, leaf: bytes = b'"x"') -> bytes:
    return b'{"a":' * depth + leaf + b"}" * depth


async def hostile(relay: TestClient, path: str, body: bytes, **headers: str) -> tuple[int, Any]:
    resp = await relay.post(path, data=io.BytesIO(body), headers={**auth_header(), **headers})
    text = await resp.read()
    assert resp.status < 500, (resp.status, text[:300])
    try:
        return resp.status, orjson.loads(text)
    except orjson.JSONDecodeError:
        return resp.status, text


@pytest.fixture
async def small_relay(relay_factory: RelayFactory) -> TestClient:
    return await relay_factory(limits=LIMITS)


# -- compression bombs ----------------------------------------------------------------------------


@functools.cache
def _zeros_block() -> bytes:
    return b"\0" * MiB


def deflate_bomb(total: int, wbits: int) -> bytes:
    """`total` zero bytes as a deflate stream (zlib or gzip framing), built in a few ms:
    one flushed block of 1 MiB of zeros, repeated. Its checksum is wrong, which only a
    decoder that inflates everything would ever notice."""
    comp = zlib.compressobj(9, zlib.DEFLATED, wbits)
    head = comp.compress(_zeros_block()) + comp.flush(zlib.Z_FULL_FLUSH)
    block = comp.compress(_zeros_block()) + comp.flush(zlib.Z_FULL_FLUSH)
    return head + block * (total // MiB - 1) + comp.flush()


@functools.cache
def bomb(coding: str, total: int) -> bytes:
    if coding == "gzip":
        return deflate_bomb(total, 31)
    if coding == "deflate":
        return deflate_bomb(total, 15)
    if coding == "br":
        return bytes(brotli.compress(b"\0" * total, quality=1))
    if coding == "zstd":
        return bytes(zstandard.ZstdCompressor(level=1).compress(b"\0" * total))
    raise AssertionError(coding)


BOMBS: dict[str, Callable[[], tuple[str, bytes]]] = {
    "gzip": lambda: ("gzip", bomb("gzip", 64 * MiB)),
    "x-gzip": lambda: ("x-gzip", bomb("gzip", 64 * MiB)),
    "deflate": lambda: ("deflate", bomb("deflate", 64 * MiB)),
    "br": lambda: ("br", bomb("br", 64 * MiB)),
    "zstd": lambda: ("zstd", bomb("zstd", 64 * MiB)),
    # Nested: each layer alone is small; only the innermost explodes.
    "gzip-in-br": lambda: ("gzip, br", bytes(brotli.compress(bomb("gzip", 64 * MiB)))),
    "zstd-in-gzip": lambda: ("zstd, gzip", _gzip(bomb("zstd", 64 * MiB))),
    "gzip-in-gzip-in-gzip": lambda: ("gzip, gzip, gzip", _gzip(_gzip(bomb("gzip", 256 * MiB)))),
}


def _gzip(data: bytes) -> bytes:
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)
    return comp.compress(data) + comp.flush()


@pytest.mark.parametrize("name", list(BOMBS))
async def test_compression_bombs_are_refused_with_413(
    small_relay: TestClient, name: str, recorder: RecordingUpstream
) -> None:
    coding, body = BOMBS[name]()
    assert len(body) < LIMITS["max_request_bytes"]
    async with Responsiveness(small_relay) as probe:
        for path in ("/api/42/envelope/", "/api/42/store/"):
            for _ in range(3):
                status, answer = await hostile(
                    small_relay, path, body, **{"Content-Encoding": coding}
                )
                assert status == 413, answer
                assert "too large" in answer["detail"]
    probe.check()


async def test_concurrent_bombs_under_the_default_limits(relay: TestClient) -> None:
    """Four bombs at once, each inflating to the default cap (100 MiB): the relay refuses
    them all and still answers a well-behaved client within a second meanwhile."""
    body = bomb("gzip", 160 * MiB)
    async with Responsiveness(relay) as probe:
        answers = await asyncio.gather(
            *(
                hostile(relay, "/api/42/envelope/", body, **{"Content-Encoding": "gzip"})
                for _ in range(4)
            )
        )
    assert [status for status, _ in answers] == [413] * 4, answers
    probe.check()


async def test_store_zlib_bomb_without_content_encoding(small_relay: TestClient) -> None:
    body = base64.b64encode(deflate_bomb(64 * MiB, 15))
    status, answer = await hostile(small_relay, "/api/42/store/", body)
    assert status == 413, answer


@pytest.mark.parametrize(
    ("coding", "body", "expected"),
    [
        ("compress", b"x", 415),
        ("gzip", b"not gzip at all", 400),
        ("br", b"\xff" * 100, 400),
        ("zstd", b"\x28\xb5\x2f\xfd" + b"\xff" * 20, 400),
        ("gzip", _gzip(b"x")[:-5], 400),  # truncated
        ("deflate", zlib.compress(b"abc") + b"trailing junk", 400),
        (", ".join(["gzip"] * 200), b"x", 415),  # more codings than MAX_CODINGS
        ("identity, UTF-8, ", GOOD_ENVELOPE, 200),
    ],
)
async def test_broken_encodings_get_clear_answers(
    small_relay: TestClient, coding: str, body: bytes, expected: int
) -> None:
    status, answer = await hostile(
        small_relay, "/api/42/envelope/", body, **{"Content-Encoding": coding}
    )
    assert status == expected, answer


# -- bodies over every limit -------------------------------------------------------------------------


async def test_bodies_over_every_limit(
    relay_factory: RelayFactory, recorder: RecordingUpstream
) -> None:
    relay = await relay_factory(limits={**LIMITS, "max_envelope_items": 100})
    async with Responsiveness(relay) as probe:
        # Declared too large: refused before the body is read.
        resp = await relay.post(
            "/api/42/envelope/",
            data=io.BytesIO(b"x" * (LIMITS["max_request_bytes"] + 1)),
            headers=auth_header(),
        )
        assert resp.status == 413

        # Chunked, no Content-Length: refused while streaming.
        async def chunks() -> Any:
            for _ in range(40):
                yield b"x" * (64 * 1024)

        resp = await relay.post("/api/42/envelope/", data=chunks(), headers=auth_header())
        assert resp.status == 413

        # An event item over max_event_bytes, alone in its envelope.
        big_event = orjson.dumps({"message": "x" * LIMITS["max_event_bytes"]})
        status, _ = await hostile(relay, "/api/42/envelope/", envelope(big_event))
        assert status == 413
        status, _ = await hostile(
            relay, "/api/42/store/", base64.b64encode(zlib.compress(big_event))
        )
        assert status == 413

        # An attachment over max_attachment_bytes (compressed, so the request is small).
        attachment = envelope(b"a" * (LIMITS["max_attachment_bytes"] + 1), "attachment")
        status, _ = await hostile(
            relay, "/api/42/envelope/", _gzip(attachment), **{"Content-Encoding": "gzip"}
        )
        assert status == 413

        # More items than max_envelope_items.
        many = b"{}\n" + b'{"type":"session"}\n{}\n' * 101
        status, answer = await hostile(relay, "/api/42/envelope/", many)
        assert status == 400 and "too many items" in answer["detail"]

        # The security endpoint and the minidump endpoint share the body caps.
        for path in ("/api/42/security/", "/api/42/minidump/"):
            resp = await relay.post(
                path,
                data=io.BytesIO(b"x" * (LIMITS["max_request_bytes"] + 1)),
                headers=auth_header(),
            )
            assert resp.status == 413
    probe.check()
    # What was refused never went anywhere.
    await asyncio.sleep(0.1)
    assert all(b"xxxxxxxx" not in r.body for r in recorder.received)


async def test_a_header_line_over_the_http_limit(small_relay: TestClient) -> None:
    resp = await small_relay.post(
        "/api/42/envelope/",
        data=GOOD_ENVELOPE,
        headers={**auth_header(), "X-Padding": "p" * 20000},
    )
    assert resp.status in (400, 431)


# -- many items --------------------------------------------------------------------------------------


async def test_ten_thousand_items_in_one_envelope(
    relay_factory: RelayFactory, recorder: RecordingUpstream
) -> None:
    relay = await relay_factory(limits={"max_attachment_items": 10000})
    items = b'{"type":"attachment","length":2,"filename":"a.txt"}\nok\n' * 9999
    body = b'{"event_id":"' + EVENT_ID.encode() + b'"}\n{"type":"event"}\n{"message":"m"}\n' + items
    too_many = body + b'{"type":"attachment","length":2}\nok\n'
    async with Responsiveness(relay) as probe:
        status, answer = await hostile(relay, "/api/42/envelope/", body)
        assert status == 200, answer
        status, answer = await hostile(relay, "/api/42/envelope/", too_many)
        assert status == 400, answer
    probe.check()
    await recorder.wait_for(2)
    sizes = [len(e.items) for e in recorder.envelopes]
    assert 10000 in sizes


# -- deeply nested JSON -------------------------------------------------------------------------------

DEPTHS = [MAX_JSON_DEPTH + 1, 300, 1000, 5000]


def _event_nested(depth: int) -> bytes:
    return b'{"message":"deep","extra":' + nested(depth - 1) + b"}"


#: The targets whose deep JSON is an item's payload (the rest: the request's own).
ITEM_PAYLOADS = frozenset({"event payload", "event list payload", "transaction payload"})
NESTING_TARGETS: dict[str, Callable[[int], tuple[str, bytes, dict[str, str]]]] = {
    "event payload": lambda d: ("/api/42/envelope/", envelope(_event_nested(d)), {}),
    "event list payload": lambda d: (
        "/api/42/envelope/",
        envelope(b'{"message":"deep","extra":{"a":' + b"[" * d + b"]" * d + b"}}"),
        {},
    ),
    "transaction payload": lambda d: (
        "/api/42/envelope/",
        envelope(b'{"type":"transaction","contexts":' + nested(d) + b"}", "transaction"),
        {},
    ),
    "envelope header": lambda d: (
        "/api/42/envelope/",
        envelope(b'{"message":"x"}', header=b'{"trace":' + nested(d) + b"}"),
        {},
    ),
    "item header": lambda d: (
        "/api/42/envelope/",
        b'{}\n{"type":"event","x":' + nested(d) + b'}\n{"message":"x"}\n',
        {},
    ),
    "store body": lambda d: ("/api/42/store/", _event_nested(d), {}),
    "store body with NaN": lambda d: (
        "/api/42/store/",
        b'{"x":NaN,"extra":' + nested(d) + b"}",
        {},
    ),
    "security report": lambda d: (
        "/api/42/security/",
        b'[{"type":"csp-violation","body":' + nested(d) + b"}]",
        {"Content-Type": "application/reports+json"},
    ),
    "csp report": lambda d: (
        "/api/42/security/",
        b'{"csp-report":{"document-uri":"https://a.example/","x":' + nested(d) + b"}}",
        {"Content-Type": "application/csp-report"},
    ),
}


@pytest.mark.parametrize("depth", DEPTHS)
@pytest.mark.parametrize("target", list(NESTING_TARGETS))
async def test_deeply_nested_json_is_refused(
    small_relay: TestClient,
    target: str,
    depth: int,
    no_unhandled_errors: Callable[[], None],
) -> None:
    path, body, headers = NESTING_TARGETS[target](depth)
    status, answer = await hostile(small_relay, path, body, **headers)
    # An item too deep is dropped (`invalid`) and answered 200, as Sentry answers it;
    # a request whose envelope or body cannot be read is 400.
    assert status == (200 if target in ITEM_PAYLOADS else 400), answer
    no_unhandled_errors()


@pytest.mark.parametrize("item_type", ["session", "unknown_type", "client_report", "attachment"])
@pytest.mark.parametrize("depth", [300, 1000])
async def test_deeply_nested_json_in_other_items_never_fails(
    small_relay: TestClient,
    recorder: RecordingUpstream,
    item_type: str,
    depth: int,
    no_unhandled_errors: Callable[[], None],
) -> None:
    """Items the relay does not parse as events may be forwarded or refused, never a 500."""
    body = (
        b'{}\n{"type":"event"}\n{"message":"x"}\n'
        + envelope(nested(depth), item_type).split(b"\n", 1)[1]
    )
    status, answer = await hostile(small_relay, "/api/42/envelope/", body)
    assert status in (200, 400), answer
    no_unhandled_errors()


async def test_nesting_within_the_limit_is_forwarded_intact(
    small_relay: TestClient, recorder: RecordingUpstream
) -> None:
    depth = MAX_JSON_DEPTH - 2
    status, answer = await hostile(small_relay, "/api/42/envelope/", envelope(_event_nested(depth)))
    assert status == 200, answer
    await recorder.wait_for(1)
    event = orjson.loads(recorder.items("event")[0].payload)
    node = event["extra"]
    for _ in range(depth - 2):
        node = node["a"]
    assert node == {"a": "x"}


# -- huge strings --------------------------------------------------------------------------------------


async def test_huge_strings_are_processed_in_bounded_time(
    relay: TestClient, recorder: RecordingUpstream
) -> None:
    size = 1024 * 1024 - 1024  # just under the default max_event_bytes
    cases = [
        orjson.dumps({"message": "a" * size}),
        orjson.dumps({"message": "alice@example.com " * (size // 18)}),
        orjson.dumps({"extra": {"k" * (size // 2): "v"}}),
        orjson.dumps({"extra": {"x": ["4111 1111 1111 1111"] * (size // 24)}}),
        orjson.dumps({"tags": {str(i): "v" for i in range(size // 16)}}),
    ]
    async with Responsiveness(relay) as probe:
        for payload in cases:
            assert len(payload) <= 1024 * 1024
            start = time.perf_counter()
            status, answer = await hostile(relay, "/api/42/envelope/", envelope(payload))
            assert status == 200, answer
            assert time.perf_counter() - start < 3.0
    probe.check(bound=3.0)
    await recorder.wait_for(len(cases))
    forwarded = b"".join(r.body for r in recorder.received)
    assert b"alice@example.com" not in forwarded
    assert b"4111 1111 1111 1111" not in forwarded


# -- invalid UTF-8, surrogates, NaN, duplicate keys ----------------------------------------------------


#: Events that do not parse: answered 200 and dropped with an `invalid` outcome.
DROPPED_AS_INVALID = frozenset(
    {
        "invalid utf-8 in an event",
        "lone surrogate in an event",
        "NaN in an envelope event",
        "1e999 in an envelope event",
    }
)


@pytest.mark.parametrize(
    ("name", "path", "body", "expected"),
    [
        # An item that does not parse is dropped (`invalid`) and answered 200, as by Sentry.
        ("invalid utf-8 in an event", "envelope", envelope(b'{"message":"\xff\xfe"}'), 200),
        ("lone surrogate in an event", "envelope", envelope(b'{"message":"\\ud800"}'), 200),
        ("surrogate pair in an event", "envelope", envelope(b'{"message":"\\ud83d\\ude00"}'), 200),
        (
            "lone surrogate in the envelope header",
            "envelope",
            envelope(b'{"message":"x"}', header=b'{"x":"\\udc00"}'),
            400,
        ),
        ("invalid utf-8 in the envelope header", "envelope", b'{"x":"\xc3"}\n', 400),
        ("lone surrogate in a store event", "store", b'{"message":"\\ud800"}', 400),
        ("lone surrogate next to NaN", "store", b'{"message":"\\udfff","x":NaN}', 400),
        ("invalid utf-8 in a store event", "store", b'{"message":"\xed\xa0\x80"}', 400),
        ("base64 of invalid utf-8", "store", base64.b64encode(b'{"m":"\xff"}'), 400),
        ("NaN in an envelope event", "envelope", envelope(b'{"message":"x","n":NaN}'), 200),
        ("1e999 in an envelope event", "envelope", envelope(b'{"message":"x","n":1e999}'), 200),
        ("NaN and Infinity in a store event", "store", b'{"m":"x","a":NaN,"b":-Infinity}', 200),
        ("1e999 in a store event", "store", b'{"m":"x","n":1e999}', 200),
        ("integer beyond 64 bits", "store", b'{"m":"x","n":123456789012345678901234567890}', 200),
        ("invalid event id", "store", b'{"event_id":"../../etc/passwd","m":"x"}', 400),
        ("event id of the wrong type", "store", b'{"event_id":{"a":1},"m":"x"}', 400),
        ("NUL bytes in an event", "envelope", envelope(b'{"message":"a\\u0000b"}'), 200),
    ],
)
async def test_odd_text_gets_a_clear_answer(
    small_relay: TestClient,
    recorder: RecordingUpstream,
    name: str,
    path: str,
    body: bytes,
    expected: int,
    no_unhandled_errors: Callable[[], None],
) -> None:
    status, answer = await hostile(small_relay, f"/api/42/{path}/", body)
    assert status == expected, (name, answer)
    if name in DROPPED_AS_INVALID:
        metrics = small_relay.app[METRICS].render().decode()
        assert 'outcome="invalid",reason="invalid_json"} 1.0' in metrics, name
    elif expected == 200:
        await recorder.wait_for(1)
        for received in recorder.received:
            for item in received.envelope.items:
                if item.type == "event":
                    orjson.loads(item.payload)  # valid JSON, whatever came in
    no_unhandled_errors()


async def test_store_nan_becomes_null(small_relay: TestClient, recorder: RecordingUpstream) -> None:
    status, _ = await hostile(
        small_relay, "/api/42/store/", b'{"message":"x","extra":{"a":NaN,"b":Infinity}}'
    )
    assert status == 200
    await recorder.wait_for(1)
    event = orjson.loads(recorder.items("event")[0].payload)
    assert event["extra"] == {"a": None, "b": None}


async def test_invalid_utf8_attachments_are_forwarded_as_bytes(
    small_relay: TestClient, recorder: RecordingUpstream
) -> None:
    blob = b"\xff\xfe\x00\xed\xa0\x80 binary \xc3"
    body = (
        b'{}\n{"type":"event"}\n{"message":"x"}\n' + envelope(blob, "attachment").split(b"\n", 1)[1]
    )
    status, _ = await hostile(small_relay, "/api/42/envelope/", body)
    assert status == 200
    await recorder.wait_for(1)
    assert recorder.items("attachment")[0].payload == blob


@pytest.mark.parametrize(
    ("where", "body"),
    [
        (
            "event payload",
            envelope(b'{"message":"mail alice@example.com","message":"fine"}'),
        ),
        (
            "envelope header",
            envelope(
                b'{"message":"x"}',
                header=b'{"trace":{"user_segment":"alice@example.com","trace_id":"a"},'
                b'"trace":{"trace_id":"b"}}',
            ),
        ),
        (
            "item header",
            b'{}\n{"type":"event","note":"alice@example.com","note":"fine"}\n{"message":"x"}\n',
        ),
        (
            "session payload",
            # A session Sentry would count (a UUID, `started` recent), so not dropped as invalid.
            b'{}\n{"type":"event"}\n{"message":"x"}\n'
            b'{"type":"session"}\n{"sid":"%s","started":"%s",'
            b'"did":"alice@example.com","did":"fine","attrs":{"release":"r"}}\n'
            % (EVENT_ID.encode(), datetime.now(UTC).isoformat().encode()),
        ),
        (
            "unknown item payload",
            b'{}\n{"type":"event"}\n{"message":"x"}\n'
            b'{"type":"custom_item"}\n{"user":"alice@example.com","user":"fine"}\n',
        ),
    ],
)
async def test_duplicate_keys_never_smuggle_unscrubbed_values(
    small_relay: TestClient, recorder: RecordingUpstream, where: str, body: bytes
) -> None:
    """The relay scrubs the value a JSON parser keeps (the last duplicate); the bytes it
    forwards must not carry the other one, which another parser might keep."""
    status, answer = await hostile(small_relay, "/api/42/envelope/", body)
    assert status == 200, answer
    await recorder.wait_for(1)
    forwarded = b"".join(r.body for r in recorder.received)
    assert b"alice@example.com" not in forwarded, (where, forwarded)


# -- header values: CR/LF, NUL, non-ASCII bytes --------------------------------------------------------


async def raw_exchange(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        chunks = []
        with contextlib.suppress(TimeoutError, ConnectionResetError):
            async with asyncio.timeout(timeout):
                while chunk := await reader.read(65536):
                    chunks.append(chunk)
        return b"".join(chunks)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionResetError):
            await writer.wait_closed()


def raw_post(
    extra_headers: bytes, body: bytes = GOOD_ENVELOPE, path: bytes = b"/api/42/envelope/"
) -> bytes:
    return (
        b"POST " + path + b" HTTP/1.1\r\nHost: relay\r\n"
        b"X-Sentry-Auth: Sentry sentry_key="
        + KEY.encode()
        + b", sentry_version=7\r\n"
        + extra_headers
        + b"Content-Length: "
        + str(len(body)).encode()
        + b"\r\nConnection: close\r\n\r\n"
        + body
    )


def response_headers(raw: bytes) -> list[tuple[bytes, bytes]]:
    head = raw.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]
    return [tuple(line.split(b":", 1)) for line in head if b":" in line]  # type: ignore[misc]


@pytest.mark.parametrize(
    ("name", "extra", "statuses"),
    [
        ("bare CR in a value", b"Origin: https://a.example\rX-Injected: 1\r\n", (400,)),
        ("bare LF in a value", b"Origin: https://a.example\nX-Injected: 1\r\n", (400,)),
        ("obsolete line folding", b"Origin: https://a.example\r\n X-Injected: 1\r\n", (400,)),
        ("NUL in a value", b"Origin: https://a\x00.example\r\n", (400,)),
        ("non-ASCII Origin", b"Origin: https://\xff\xfe.example\r\n", (200,)),
        ("UTF-8 Origin", "Origin: https://é.example\r\n".encode(), (200,)),
        ("non-ASCII Basic auth", b"Authorization: Basic \x80\xff\r\n", (200,)),
        ("non-ASCII encoding", b"Content-Encoding: \xff\r\n", (415,)),
        ("non-ASCII user agent", b"User-Agent: \xff\xfe\r\n", (200,)),
        ("junk X-Forwarded-For", b"X-Forwarded-For: \xff, 1.2.3.4, ::1%eth0, [::1]:80\r\n", (200,)),
    ],
)
async def test_header_values_are_never_echoed_raw(
    small_relay: TestClient, name: str, extra: bytes, statuses: tuple[int, ...]
) -> None:
    assert small_relay.server.port is not None
    raw = await raw_exchange(small_relay.server.port, raw_post(extra))
    status = int(raw.split(b" ", 2)[1])
    assert status in statuses, (name, raw[:300])
    names = [n.strip().lower() for n, _ in response_headers(raw)]
    assert b"x-injected" not in names
    # The relay is still there.
    resp = await small_relay.post("/api/42/envelope/", data=GOOD_ENVELOPE, headers=auth_header())
    assert resp.status == 200


async def test_request_text_in_error_details_cannot_split_headers(small_relay: TestClient) -> None:
    evil = "evil\r\nX-Injected: 1\r\n\r\n<script>"
    bodies = [
        b'{}\n{"type":' + orjson.dumps(evil) + b',"length":100}\nabc\n',
        envelope(b"{}", header=b'{"dsn":' + orjson.dumps(f"https://{KEY}@h:{evil}/42") + b"}"),
    ]
    for body in bodies:
        resp = await small_relay.post("/api/42/envelope/", data=body, headers=auth_header())
        assert resp.status == 400
        assert "X-Injected" not in resp.headers
        for value in resp.headers.values():
            assert "\r" not in value and "\n" not in value
    resp = await small_relay.post(
        "/api/42/envelope/",
        data=GOOD_ENVELOPE,
        headers={**auth_header(), "Content-Encoding": evil.replace("\r\n", " ")},
    )
    assert resp.status == 415
    assert "X-Injected" not in resp.headers


async def test_nothing_from_the_request_reaches_forwarded_headers_but_the_sdks_name(
    small_relay: TestClient, recorder: RecordingUpstream
) -> None:
    # The SDK's User-Agent and sentry_client are forwarded (as Sentry's Relay forwards
    # them), through the value detectors; nothing else of the request is.
    marker = "zz-marker-zz"
    headers = {
        "X-Sentry-Auth": f"Sentry sentry_key={KEY}, sentry_version=7, sentry_client=sdk/{marker}",
        "User-Agent": f"{marker} (bob@example.org)",
        "Origin": f"https://{marker}.example",
        "Cookie": f"session={marker}",
        "X-Forwarded-For": "203.0.113.9",
        "X-Custom": marker,
        "Content-Type": f"application/x-sentry-envelope; {marker}",
        "Traceparent": marker,
        "Baggage": f"sentry-public_key={marker}",
    }
    body = envelope(
        b'{"message":"x"}',
        header=b'{"event_id":"'
        + EVENT_ID.encode()
        + b'","sdk":{"name":"'
        + marker.encode()
        + b'"}}',
    )
    resp = await small_relay.post("/api/42/envelope/", data=body, headers=headers)
    assert resp.status == 200
    await recorder.wait_for(1)
    forwarded = recorder.received[0].headers
    assert forwarded["User-Agent"] == f"{marker} ([email])"
    assert f"sentry_client=sdk/{marker}" in forwarded["X-Sentry-Auth"]
    for name, value in forwarded.items():
        if name.lower() not in ("user-agent", "x-sentry-auth"):
            assert marker not in value, (name, value)
    allowed = {
        "host",
        "content-type",
        "content-length",
        "content-encoding",
        "x-sentry-auth",
        "user-agent",
        "accept",
        "accept-encoding",
    }
    assert {n.lower() for n in forwarded} <= allowed, forwarded


# -- slow clients and idle connections ----------------------------------------------------------------


async def _slow_loris(port: int, trickle: float, seconds: float) -> tuple[bytes, float]:
    """Send complete headers announcing a body, then a byte every `trickle` seconds."""
    start = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"POST /api/42/envelope/ HTTP/1.1\r\nHost: relay\r\n"
        b"X-Sentry-Auth: Sentry sentry_key=" + KEY.encode() + b"\r\n"
        b"Content-Length: 100000\r\n\r\n"
    )
    answer = b""
    try:
        deadline = start + seconds
        while time.perf_counter() < deadline and not answer:
            with contextlib.suppress(ConnectionError):
                writer.write(b"{")
                await writer.drain()
            with contextlib.suppress(TimeoutError):
                answer = await asyncio.wait_for(reader.read(4096), trickle)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    return answer, time.perf_counter() - start


async def test_slow_loris_bodies_time_out_with_408(small_relay: TestClient) -> None:
    port = small_relay.server.port
    assert port is not None
    async with Responsiveness(small_relay) as probe:
        results = await asyncio.gather(*(_slow_loris(port, 0.1, 6.0) for _ in range(50)))
    probe.check()
    for answer, elapsed in results:
        assert answer.startswith(b"HTTP/1.1 408"), answer[:100]
        assert LIMITS["read_timeout_s"] * 0.9 <= elapsed < LIMITS["read_timeout_s"] + 2.0


def _raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


async def test_thousands_of_idle_connections(small_relay: TestClient) -> None:
    count = 2000
    _raise_fd_limit(2 * count + 1024)
    port = small_relay.server.port
    assert port is not None
    writers: list[asyncio.StreamWriter] = []
    try:
        async with Responsiveness(small_relay) as probe:
            # In batches below the listen backlog, so that the kernel drops no SYN.
            for start in range(0, count, 50):
                opened = await asyncio.gather(
                    *(asyncio.open_connection("127.0.0.1", port) for _ in range(start, start + 50))
                )
                writers.extend(w for _, w in opened)
            # Half of them start a request and stop half-way through the headers.
            for writer in writers[::2]:
                writer.write(b"POST /api/42/envelope/ HTTP/1.1\r\nHost: relay\r\nX-Sen")
            await asyncio.sleep(0.5)
        probe.check(at_least=10)
    finally:
        for writer in writers:
            writer.close()
        await asyncio.gather(*(w.wait_closed() for w in writers), return_exceptions=True)
    resp = await small_relay.get("/readyz")
    assert resp.status == 200


async def test_security_report_batches_are_bounded(small_relay: TestClient) -> None:
    report = {
        "type": "csp-violation",
        "url": "https://a.example/",
        "body": {"documentURL": "https://a.example/", "effectiveDirective": "script-src"},
    }
    headers = {"Content-Type": "application/reports+json"}
    async with Responsiveness(small_relay) as probe:
        status, answer = await hostile(
            small_relay, "/api/42/security/", orjson.dumps([report] * 5000), **headers
        )
    assert status == 400, answer
    probe.check()
    status, answer = await hostile(
        small_relay, "/api/42/security/", orjson.dumps([report] * 20), **headers
    )
    assert status == 200, answer
