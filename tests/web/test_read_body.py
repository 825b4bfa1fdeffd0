"""read_body: a whole small body takes the short way, with the streaming decoder's results.

Every case runs twice, with the short way on and off (`relay.web.body.FAST_PATH`), and
both must give the same body, the same gzip bytes kept, the same error (status and
message) and the same budget charge.
"""

from __future__ import annotations

import asyncio
import gzip
import struct
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import brotli
import pytest
from aiohttp import StreamReader, web
from aiohttp.base_protocol import BaseProtocol
from aiohttp.test_utils import make_mocked_request
from hypothesis import given, settings
from hypothesis import strategies as st

import relay.web.body as body_module
from relay.web.body import CHUNK, FAST_OUTPUT_LIMIT, BodyBudget, read_body
from relay.web.errors import ApiError

KiB = 1024
MiB = 1024 * KiB
PAYLOAD = b'{"event_id":"9d3b62a420d34c9ea6173cc867f4e1a3"}\n{"type":"event"}\n' + (
    b'{"message":"hello","extra":{"n":1,"list":[1,2,3]}}\n' * 100
)


@dataclass(frozen=True)
class Limits:
    max_bytes: int = 20 * MiB
    max_decompressed: int = 100 * MiB
    budget: int = 200 * MiB
    used: int = 0  # of the budget, by other requests
    fast_output: int = FAST_OUTPUT_LIMIT


Outcome = tuple[Any, ...]


@contextmanager
def _way(fast: bool, fast_output: int) -> Iterator[None]:
    saved = body_module.FAST_PATH, body_module.FAST_OUTPUT_LIMIT
    body_module.FAST_PATH, body_module.FAST_OUTPUT_LIMIT = fast, fast_output
    try:
        yield
    finally:
        body_module.FAST_PATH, body_module.FAST_OUTPUT_LIMIT = saved


async def _read(
    body: bytes, encoding: str | None, limits: Limits, *, fast: bool, with_length: bool
) -> tuple[Outcome, int]:
    """read_body's result or error for a body that arrived whole, and what it charged."""
    loop = asyncio.get_running_loop()
    stream = StreamReader(BaseProtocol(loop), 1 << 30, loop=loop)  # never pauses reading
    stream.feed_data(body)
    stream.feed_eof()
    headers = {"Content-Length": str(len(body))} if with_length else {}
    if encoding is not None:
        headers["Content-Encoding"] = encoding
    request = make_mocked_request("POST", "/api/42/envelope/", headers=headers, payload=stream)
    budget = BodyBudget(limits.budget)
    budget.used = limits.used
    outcome: Outcome
    with _way(fast, limits.fast_output):
        try:
            decoded, kept = await read_body(
                request,
                max_bytes=limits.max_bytes,
                max_decompressed=limits.max_decompressed,
                timeout=10,
                keep_gzip=True,
                budget=budget,
            )
            outcome = ("ok", decoded, kept)
        except ApiError as exc:
            outcome = (exc.status, exc.detail, exc.headers)
    charged = budget.held(request)
    assert budget.used == limits.used + charged
    budget.release(request)
    assert budget.used == limits.used
    return outcome, charged


async def _both(
    body: bytes, encoding: str | None, limits: Limits = Limits(), *, with_length: bool = True
) -> Outcome:
    """The outcome, after checking that the short way and the streaming decoder agree."""
    fast, fast_charged = await _read(body, encoding, limits, fast=True, with_length=with_length)
    slow, slow_charged = await _read(body, encoding, limits, fast=False, with_length=with_length)
    assert fast == slow
    # A refused charge is all or nothing on the short way, slice by slice on the other:
    # what was held before the 503 may differ (both give it all back).
    if slow[0] != 503:
        assert fast_charged == slow_charged
    if slow[0] == "ok":
        assert fast_charged == len(slow[1])
    return fast


def _gzip_with_header(data: bytes, flg: int, fields: bytes) -> bytes:
    """One gzip member whose header sets FLG and carries `fields` (as FLG says)."""
    head = b"\x1f\x8b\x08" + bytes([flg]) + struct.pack("<I", 0) + b"\x00\xff" + fields
    deflate = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    body = deflate.compress(data) + deflate.flush()
    return head + body + struct.pack("<II", zlib.crc32(data), len(data) & 0xFFFFFFFF)


def _raw_deflate(data: bytes) -> bytes:
    deflate = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    return deflate.compress(data) + deflate.flush()


def _flipped(body: bytes, at: int) -> bytes:
    return body[:at] + bytes([body[at] ^ 0xFF]) + body[at + 1 :]


GZ = gzip.compress(PAYLOAD, mtime=0)
ZEROS_3MIB = gzip.compress(bytes(3 * MiB), mtime=0)  # over the short way's output bound
assert len(ZEROS_3MIB) < CHUNK and 3 * MiB > FAST_OUTPUT_LIMIT


# (id, Content-Encoding, body, limits, what both ways give: "kept" = the body and the
# bytes as received, "ok" = the body alone, or an HTTP status)
CASES: list[tuple[str, str | None, bytes, Limits, str | int]] = [
    ("gzip", "gzip", GZ, Limits(), "kept"),
    ("x-gzip", "x-gzip", GZ, Limits(), "kept"),
    ("gzip-upper", "GZIP", GZ, Limits(), "kept"),
    ("gzip-identity", "gzip, identity", GZ, Limits(), "kept"),
    ("gzip-empty-body", "gzip", b"", Limits(), "ok"),
    ("gzip-empty-member", "gzip", gzip.compress(b"", mtime=0), Limits(), "kept"),
    ("gzip-fname", "gzip", _gzip_with_header(PAYLOAD, 0x08, b"e.json\x00"), Limits(), "ok"),
    ("gzip-fcomment", "gzip", _gzip_with_header(PAYLOAD, 0x10, b"hi\x00"), Limits(), "ok"),
    ("gzip-fextra", "gzip", _gzip_with_header(PAYLOAD, 0x04, b"\x02\x00ab"), Limits(), "ok"),
    ("gzip-ftext", "gzip", _gzip_with_header(PAYLOAD, 0x01, b""), Limits(), "ok"),
    ("two-members", "gzip", gzip.compress(b"ab") + gzip.compress(b"cd"), Limits(), "ok"),
    ("truncated-1", "gzip", GZ[:1], Limits(), 400),
    ("truncated-header", "gzip", GZ[:10], Limits(), 400),
    ("truncated-half", "gzip", GZ[: len(GZ) // 2], Limits(), 400),
    ("truncated-trailer", "gzip", GZ[:-1], Limits(), 400),
    ("corrupt-magic", "gzip", _flipped(GZ, 0), Limits(), 400),
    ("corrupt-data", "gzip", _flipped(GZ, 12), Limits(), 400),
    ("corrupt-crc", "gzip", _flipped(GZ, len(GZ) - 6), Limits(), 400),
    ("corrupt-size", "gzip", _flipped(GZ, len(GZ) - 2), Limits(), 400),
    ("not-gzip", "gzip", PAYLOAD[:500], Limits(), 400),
    ("garbage-after", "gzip", GZ + b"junk", Limits(), 400),
    ("zeros-after", "gzip", GZ + bytes(30), Limits(), 400),
    ("bomb", "gzip", ZEROS_3MIB, Limits(max_decompressed=MiB), 413),
    ("bomb-under-cap", "gzip", ZEROS_3MIB, Limits(max_decompressed=3 * MiB), "kept"),
    ("bomb-over-cap-by-1", "gzip", ZEROS_3MIB, Limits(max_decompressed=3 * MiB - 1), 413),
    ("at-cap", "gzip", GZ, Limits(max_decompressed=len(PAYLOAD)), "kept"),
    ("over-cap", "gzip", GZ, Limits(max_decompressed=len(PAYLOAD) - 1), 413),
    ("raw-at-limit", "gzip", GZ, Limits(max_bytes=len(GZ)), "kept"),
    ("raw-over-limit", "gzip", GZ, Limits(max_bytes=len(GZ) - 1), 413),
    ("budget-exact", "gzip", GZ, Limits(budget=MiB, used=MiB - len(PAYLOAD)), "kept"),
    ("budget-short", "gzip", GZ, Limits(budget=MiB, used=MiB - len(PAYLOAD) + 1), 503),
    ("budget-over-limit", "gzip", GZ, Limits(budget=MiB, used=2 * MiB), 503),
    ("empty-budget-over", "gzip", b"", Limits(budget=MiB, used=2 * MiB), "ok"),
    ("deflate", "deflate", zlib.compress(PAYLOAD), Limits(), "ok"),
    ("raw-deflate", "deflate", _raw_deflate(PAYLOAD), Limits(), "ok"),
    ("deflate-one-byte", "deflate", b"\x78", Limits(), 400),
    ("deflate-after-end", "deflate", zlib.compress(PAYLOAD) + b"x", Limits(), 400),
    ("deflate-corrupt", "deflate", _flipped(zlib.compress(PAYLOAD), 5), Limits(), 400),
    ("deflate-over-cap", "deflate", zlib.compress(PAYLOAD), Limits(max_decompressed=10), 413),
    ("plain", None, PAYLOAD, Limits(), "ok"),
    ("plain-utf8", "UTF-8", PAYLOAD, Limits(), "ok"),
    ("plain-empty", None, b"", Limits(), "ok"),
    ("plain-at-limits", None, PAYLOAD, Limits(len(PAYLOAD), len(PAYLOAD)), "ok"),
    ("plain-over-max-bytes", None, PAYLOAD, Limits(max_bytes=len(PAYLOAD) - 1), 413),
    ("plain-over-cap", None, PAYLOAD, Limits(max_decompressed=len(PAYLOAD) - 1), 413),
    ("plain-big-over-cap", None, bytes(300 * KiB), Limits(max_decompressed=200 * KiB), 413),
    (
        "plain-big-over-cap-budget",
        None,
        bytes(300 * KiB),
        Limits(4 * MiB, 200 * KiB, 100 * KiB),
        503,
    ),
    ("plain-budget-short", None, PAYLOAD, Limits(budget=len(PAYLOAD) - 1), 503),
    ("plain-big", None, bytes(300 * KiB), Limits(), "ok"),
    ("br", "br", brotli.compress(PAYLOAD), Limits(), "ok"),
    ("gzip-br", "gzip, br", brotli.compress(GZ), Limits(), "ok"),
    (
        "gzip-big-input",
        "gzip",
        gzip.compress(bytes(range(256)) * 1000, compresslevel=0),
        Limits(),
        "kept",
    ),
    ("unknown", "compress", GZ, Limits(), 415),
]


@pytest.mark.parametrize(
    ("encoding", "body", "limits", "expected"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
async def test_both_ways_agree(
    encoding: str | None, body: bytes, limits: Limits, expected: str | int
) -> None:
    outcome = await _both(body, encoding, limits)
    if expected == "kept":
        assert outcome == ("ok", outcome[1], body)
    elif expected == "ok":
        assert outcome[0] == "ok"
        assert outcome[2] is None
    else:
        assert outcome[0] == expected
    if encoding in ("gzip", "x-gzip") and outcome[0] == "ok":
        assert outcome[1] == gzip.decompress(body)


async def test_without_content_length_the_size_is_still_checked() -> None:
    for encoding, body in ((None, PAYLOAD), ("gzip", GZ)):
        limits = Limits(max_bytes=len(body) - 1)
        outcome = await _both(body, encoding, limits, with_length=False)
        assert outcome[:2] == (413, f"request body too large: over {len(body) - 1} bytes")


async def test_messages() -> None:
    cap = Limits(max_decompressed=MiB)
    assert (await _both(ZEROS_3MIB, "gzip", cap))[1] == (
        f"decompressed body too large: over {MiB} bytes"
    )
    assert (await _both(GZ[:-1], "gzip"))[1] == "invalid body encoding: gzip: truncated data"
    assert (await _both(_flipped(GZ, len(GZ) - 6), "x-gzip"))[1].startswith(
        "invalid body encoding: gzip: "
    )
    short = await _both(GZ, "gzip", Limits(budget=10))
    assert short == (
        503,
        "the relay holds too many request bodies right now",
        {"Retry-After": "1"},
    )


@pytest.mark.parametrize(
    ("encoding", "body", "limits", "streams"),
    [
        ("gzip", GZ, Limits(), False),
        ("gzip", b"", Limits(), False),
        ("x-gzip", _gzip_with_header(PAYLOAD, 0x08, b"e.json\x00"), Limits(), False),
        ("gzip", _flipped(GZ, 12), Limits(), False),
        ("deflate", _raw_deflate(PAYLOAD), Limits(), False),
        (None, bytes(300 * KiB), Limits(), False),
        ("gzip", ZEROS_3MIB, Limits(max_decompressed=MiB), False),  # 413 on the way
        ("gzip", ZEROS_3MIB, Limits(), True),
        ("gzip", gzip.compress(b"ab") + gzip.compress(b"cd"), Limits(), True),
        ("gzip", GZ[:-1], Limits(), True),
        ("gzip", GZ + b"junk", Limits(), True),
        ("gzip", gzip.compress(bytes(range(256)) * 1000, compresslevel=0), Limits(), True),
        ("br", brotli.compress(PAYLOAD), Limits(), True),
    ],
)
async def test_which_bodies_take_the_streaming_decoder(
    monkeypatch: pytest.MonkeyPatch,
    encoding: str | None,
    body: bytes,
    limits: Limits,
    streams: bool,
) -> None:
    decode = body_module._decode
    calls: list[bytes | None] = []

    async def counting(
        request: web.Request, codings: tuple[str, ...], whole: bytes | None, *args: Any
    ) -> tuple[bytes, bytes | None]:
        calls.append(whole)
        return await decode(request, codings, whole, *args)

    monkeypatch.setattr(body_module, "_decode", counting)
    await _read(body, encoding, limits, fast=True, with_length=True)
    assert calls == ([body] if streams else [])


# --- properties: arbitrary bodies, and damaged encodings of arbitrary data --------------

LIMITS = st.builds(
    Limits,
    max_bytes=st.one_of(st.just(20 * MiB), st.integers(min_value=0, max_value=3000)),
    max_decompressed=st.one_of(st.just(100 * MiB), st.integers(min_value=0, max_value=200_000)),
    budget=st.one_of(st.just(200 * MiB), st.integers(min_value=0, max_value=200_000)),
    used=st.integers(min_value=0, max_value=100_000),
    fast_output=st.sampled_from([0, 1, CHUNK, 2 * CHUNK, FAST_OUTPUT_LIMIT]),
)


@settings(max_examples=150, deadline=None)
@given(
    body=st.binary(max_size=3000),
    encoding=st.sampled_from([None, "gzip", "x-gzip", "deflate", "gzip, identity"]),
    limits=LIMITS,
    with_length=st.booleans(),
)
def test_property_arbitrary_bodies(
    body: bytes, encoding: str | None, limits: Limits, with_length: bool
) -> None:
    asyncio.run(_both(body, encoding, limits, with_length=with_length))


@settings(max_examples=250, deadline=None)
@given(
    data=st.binary(min_size=1, max_size=300),
    size=st.sampled_from([0, 1, 300, 5000, 70_000, 300_000]),
    coding=st.sampled_from(["gzip", "deflate", "raw-deflate"]),
    damage=st.sampled_from(["none", "flip", "cut", "tail", "member", "flags"]),
    where=st.integers(min_value=0, max_value=400),
    tail=st.sampled_from([b"\x00", b"junk", b"\x1f\x8b\x08\x00", gzip.compress(b"x")]),
    limits=LIMITS,
)
def test_property_damaged_encodings(
    data: bytes, size: int, coding: str, damage: str, where: int, tail: bytes, limits: Limits
) -> None:
    plain = (data * (size // len(data) + 1))[:size]
    encoders = {"gzip": gzip.compress, "deflate": zlib.compress, "raw-deflate": _raw_deflate}
    body = encoders[coding](plain)
    if damage == "flip":
        body = _flipped(body, where % len(body))
    elif damage == "cut":
        body = body[:where]
    elif damage == "tail":
        body += tail
    elif damage == "member":
        body += encoders[coding](data)
    elif damage == "flags" and coding == "gzip":
        body = body[:3] + bytes([where & 0xFF]) + body[4:]
    encoding = "deflate" if coding == "raw-deflate" else coding
    asyncio.run(_both(body, encoding, limits))
