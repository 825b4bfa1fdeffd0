from __future__ import annotations

import gzip
import os
import struct
import time
import tracemalloc
import zlib
from collections.abc import Callable

import brotli
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.protocol.decompress import (
    DecompressionError,
    TooLarge,
    UnsupportedEncoding,
    decompress,
    inflate_whole,
    make_decompressor,
    parse_content_encoding,
)

GiB = 1 << 30
MiB = 1 << 20
CAP = 10 * MiB

PAYLOAD = b'{"message": "hello", "extra": {"n": 1}}\n' * 2000 + os.urandom(3000)


def _raw_deflate(data: bytes) -> bytes:
    co = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    return co.compress(data) + co.flush()


ENCODERS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": gzip.compress,
    "x-gzip": gzip.compress,
    "deflate": zlib.compress,
    "br": brotli.compress,
    "zstd": zstandard.ZstdCompressor().compress,
}


def _feed_all(encoding: str | None, data: bytes, cap: int, chunk: int = 65536) -> bytes:
    dec = make_decompressor(encoding, cap)
    for start in range(0, len(data), chunk):
        dec.feed(data[start : start + chunk])
    return dec.finish()


@pytest.mark.parametrize("encoding", sorted(ENCODERS))
@pytest.mark.parametrize("chunk", [1, 7, 4096, 1 << 20])
def test_round_trip(encoding: str, chunk: int) -> None:
    data = PAYLOAD if chunk > 1 else PAYLOAD[:5000]
    assert _feed_all(encoding, ENCODERS[encoding](data), CAP, chunk) == data


def test_raw_deflate_is_accepted() -> None:
    assert decompress(_raw_deflate(PAYLOAD), "deflate", CAP) == PAYLOAD


@pytest.mark.parametrize("value", [None, "", "identity", "UTF-8", "utf-8", " Identity "])
def test_identity_values_pass_through(value: str | None) -> None:
    dec = make_decompressor(value, CAP)
    assert dec.codings == ()
    assert decompress(b"plain", value, CAP) == b"plain"


def test_encoding_names_are_case_insensitive() -> None:
    assert decompress(gzip.compress(b"x"), "GZIP", CAP) == b"x"
    assert parse_content_encoding("X-Gzip, BR") == ["gzip", "br"]


def test_chained_encodings_are_undone_in_reverse() -> None:
    body = brotli.compress(gzip.compress(PAYLOAD))  # gzip applied first, then br
    assert decompress(body, "gzip, br", CAP) == PAYLOAD
    body = zstandard.ZstdCompressor().compress(zlib.compress(PAYLOAD))
    assert decompress(body, "deflate,identity, zstd", CAP) == PAYLOAD


@pytest.mark.parametrize("value", ["compress", "lzma", "gzip, snappy", "chunked"])
def test_unknown_encoding(value: str) -> None:
    with pytest.raises(UnsupportedEncoding) as info:
        make_decompressor(value, CAP)
    assert isinstance(info.value, DecompressionError)


@pytest.mark.parametrize("encoding", sorted(ENCODERS))
def test_corrupt_data(encoding: str) -> None:
    with pytest.raises(DecompressionError) as info:
        decompress(b"\x00\xffthis is not compressed at all" * 10, encoding, CAP)
    assert not isinstance(info.value, TooLarge)


@pytest.mark.parametrize("encoding", sorted(ENCODERS))
def test_truncated_data(encoding: str) -> None:
    body = ENCODERS[encoding](PAYLOAD)
    with pytest.raises(DecompressionError):
        decompress(body[: len(body) // 2], encoding, CAP)


@pytest.mark.parametrize("encoding", sorted(ENCODERS))
def test_empty_body_stays_empty(encoding: str) -> None:
    assert decompress(b"", encoding, CAP) == b""


def test_trailing_garbage_after_deflate() -> None:
    with pytest.raises(DecompressionError):
        decompress(zlib.compress(b"abc") + b"junk", "deflate", CAP)


def test_concatenated_members() -> None:
    assert decompress(gzip.compress(b"ab") + gzip.compress(b"cd"), "gzip", CAP) == b"abcd"
    z = zstandard.ZstdCompressor()
    assert decompress(z.compress(b"ab") + z.compress(b"cd"), "zstd", CAP) == b"abcd"


@pytest.mark.parametrize("encoding", [None, *sorted(ENCODERS)])
def test_cap_is_exact(encoding: str | None) -> None:
    data = os.urandom(1000)
    body = data if encoding is None else ENCODERS[encoding](data)
    assert decompress(body, encoding, 1000) == data
    with pytest.raises(TooLarge):
        decompress(body, encoding, 999)


def test_cap_applies_to_intermediate_stages() -> None:
    inner = gzip.compress(bytes(5 * MiB))
    body = gzip.compress(inner)
    with pytest.raises(TooLarge):
        decompress(body, "gzip, gzip", 64 * 1024)


def test_feed_after_finish_is_an_error() -> None:
    dec = make_decompressor("gzip", CAP)
    dec.feed(gzip.compress(b"x"))
    assert dec.finish() == b"x"
    assert dec.finish() == b"x"
    with pytest.raises(RuntimeError):
        dec.feed(b"more")


# --- bombs: 1 GiB of zeros, built cheaply ---------------------------------------

_ONE_MIB_BLOCK: bytes = b""


def _zero_blocks(total: int) -> bytes:
    """Raw deflate of `total` zero bytes: one byte-aligned 1 MiB block repeated."""
    global _ONE_MIB_BLOCK
    if not _ONE_MIB_BLOCK:
        co = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
        _ONE_MIB_BLOCK = co.compress(bytes(MiB)) + co.flush(zlib.Z_FULL_FLUSH)
    return _ONE_MIB_BLOCK * (total // MiB) + b"\x03\x00"  # + empty final block


def _gzip_bomb() -> bytes:
    # The CRC trailer is never reached before the cap; an honest one costs seconds.
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
    return header + _zero_blocks(GiB) + struct.pack("<II", 0, GiB & 0xFFFFFFFF)


def _zlib_bomb() -> bytes:
    adler = ((GiB % 65521) << 16) | 1
    return b"\x78\xda" + _zero_blocks(GiB) + struct.pack(">I", adler)


def _br_bomb() -> bytes:
    c = brotli.Compressor(quality=1)
    zeros = bytes(16 * MiB)
    return b"".join(c.process(zeros) for _ in range(GiB // len(zeros))) + bytes(c.finish())


def _zstd_bomb() -> bytes:
    c = zstandard.ZstdCompressor(level=1).compressobj()
    zeros = bytes(16 * MiB)
    return b"".join(c.compress(zeros) for _ in range(GiB // len(zeros))) + bytes(c.flush())


BOMBS: dict[str, Callable[[], bytes]] = {
    "gzip": _gzip_bomb,
    "deflate": _zlib_bomb,
    "raw-deflate": lambda: _zero_blocks(GiB),
    "br": _br_bomb,
    "zstd": _zstd_bomb,
}


def test_bombs_are_what_they_claim() -> None:
    # Spot check with the standard libraries: each bomb's head inflates to zeros.
    dec = zlib.decompressobj(16 + zlib.MAX_WBITS)
    assert dec.decompress(_gzip_bomb(), 4 * MiB) == bytes(4 * MiB)
    dec = zlib.decompressobj()
    assert dec.decompress(_zlib_bomb(), 4 * MiB) == bytes(4 * MiB)
    assert zstandard.ZstdDecompressor().decompressobj().decompress(_zstd_bomb()[:64])[:10] == bytes(
        10
    )


@pytest.mark.parametrize("kind", sorted(BOMBS))
def test_bomb_raises_too_large_quickly_with_low_memory(kind: str) -> None:
    body = BOMBS[kind]()
    assert len(body) < 2 * MiB
    encoding = "deflate" if kind == "raw-deflate" else kind
    tracemalloc.start()
    started = time.perf_counter()
    try:
        dec = make_decompressor(encoding, CAP)
        with pytest.raises(TooLarge):
            for start in range(0, len(body), 65536):
                dec.feed(body[start : start + 65536])
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert elapsed < 2.0
    assert dec.size <= CAP
    # Output kept is at most the cap; transient buffers add at most a few chunks.
    assert peak < CAP + 4 * MiB + len(body)


# --- properties -----------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    data=st.binary(max_size=4096),
    encoding=st.sampled_from(sorted(ENCODERS)),
    chunk=st.integers(min_value=1, max_value=700),
)
def test_property_round_trip(data: bytes, encoding: str, chunk: int) -> None:
    assert _feed_all(encoding, ENCODERS[encoding](data), CAP, chunk) == data


@settings(max_examples=200, deadline=None)
@given(
    data=st.binary(max_size=2048),
    encoding=st.sampled_from(sorted(ENCODERS)),
    cap=st.integers(min_value=0, max_value=4096),
)
def test_property_random_input_only_raises_decompression_error(
    data: bytes, encoding: str, cap: int
) -> None:
    try:
        out = decompress(data, encoding, cap)
    except DecompressionError:
        return
    assert len(out) <= cap


@settings(max_examples=300, deadline=None)
@given(
    data=st.binary(max_size=400),
    coding=st.sampled_from(["gzip", "deflate"]),
    flip=st.integers(min_value=-1, max_value=500),
    cut=st.integers(min_value=0, max_value=500),
)
def test_inflate_agrees_with_the_standard_library(
    data: bytes, coding: str, flip: int, cut: int
) -> None:
    """The inflater (ISA-L) accepts and rejects exactly what zlib does, with the same output."""
    blob = bytearray(gzip.compress(data) if coding == "gzip" else zlib.compress(data))
    # A damaged zlib header reads as raw deflate here (as some clients send it), which
    # zlib itself refuses: keep the header intact for deflate.
    if (2 if coding == "deflate" else 0) <= flip < len(blob):
        blob[flip] ^= 0xFF
    body = bytes(blob[: max(cut, 1)] if cut < len(blob) else blob)
    try:
        expected: bytes | None = (
            gzip.decompress(body) if coding == "gzip" else zlib.decompress(body)
        )
    except (OSError, EOFError, zlib.error):
        expected = None
    try:
        got: bytes | None = decompress(body, coding, 10**6)
    except DecompressionError:
        got = None
    assert got == expected


# --- inflate_whole: a whole small body in a few direct calls --------------------


def _inflate_whole_or_error(body: bytes, coding: str, cap: int, work: int) -> object:
    try:
        return inflate_whole(body, coding, cap, work)
    except DecompressionError as exc:
        return (type(exc), str(exc))


def _decompress_or_error(body: bytes, coding: str, cap: int) -> object:
    try:
        return decompress(body, coding, cap)
    except DecompressionError as exc:
        return (type(exc), str(exc))


@pytest.mark.parametrize(
    ("coding", "body"),
    [
        ("gzip", gzip.compress(PAYLOAD)),
        ("gzip", gzip.compress(b"")),
        ("gzip", gzip.compress(bytes(300_000))),  # several calls of output
        ("deflate", zlib.compress(PAYLOAD)),
        ("deflate", _raw_deflate(PAYLOAD)),
        ("deflate", zlib.compress(b"")),
        ("gzip", b""),
        ("deflate", b""),
    ],
)
def test_inflate_whole_decodes_what_decompress_decodes(coding: str, body: bytes) -> None:
    assert inflate_whole(body, coding, CAP, CAP) == decompress(body, coding, CAP)


@pytest.mark.parametrize(
    ("coding", "body"),
    [
        ("gzip", gzip.compress(b"ab") + gzip.compress(b"cd")),  # a second member
        ("gzip", gzip.compress(PAYLOAD)[:-1]),  # truncated
        ("gzip", gzip.compress(PAYLOAD)[:5]),
        ("gzip", gzip.compress(b"abc") + b"junk"),
        ("deflate", zlib.compress(b"abc") + b"junk"),  # data after the stream
        ("deflate", b"\x78"),  # too short to tell the wrapping
        ("gzip", gzip.compress(bytes(3 * MiB))),  # more output than the work bound
    ],
)
def test_inflate_whole_leaves_the_rest_to_the_decompressor(coding: str, body: bytes) -> None:
    assert inflate_whole(body, coding, CAP, MiB) is None


def test_inflate_whole_errors_are_those_of_decompress() -> None:
    corrupt = bytearray(gzip.compress(PAYLOAD))
    corrupt[20] ^= 0xFF
    cases = [
        ("gzip", bytes(corrupt), CAP),
        ("gzip", b"\x00\xffthis is not compressed at all" * 10, CAP),
        ("deflate", b"\x00\xffthis is not compressed at all" * 10, CAP),
        ("gzip", gzip.compress(PAYLOAD), len(PAYLOAD) - 1),
        ("gzip", gzip.compress(bytes(300_000)), 200_000),
        ("deflate", zlib.compress(PAYLOAD), 0),
    ]
    for coding, body, cap in cases:
        got = _inflate_whole_or_error(body, coding, cap, CAP)
        assert isinstance(got, tuple)
        assert got == _decompress_or_error(body, coding, cap)


def test_inflate_whole_stops_a_bomb_after_the_work_bound() -> None:
    body = _gzip_bomb()
    tracemalloc.start()
    try:
        assert inflate_whole(body, "gzip", GiB, MiB) is None
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # About the work bound of output (pieces and their join) and copies of the input.
    assert peak < 3 * MiB + 2 * len(body)
    with pytest.raises(TooLarge):
        inflate_whole(body, "gzip", MiB, CAP)


@settings(max_examples=300, deadline=None)
@given(
    data=st.binary(min_size=1, max_size=300),
    size=st.sampled_from([0, 1, 300, 5000, 70_000, 300_000]),
    coding=st.sampled_from(["gzip", "deflate", "raw-deflate"]),
    damage=st.sampled_from(["none", "flip", "cut", "tail"]),
    where=st.integers(min_value=0, max_value=400),
    tail=st.sampled_from([b"\x00", b"junk", b"\x1f\x8b\x08\x00", gzip.compress(b"x")]),
    cap=st.one_of(st.just(CAP), st.integers(min_value=0, max_value=400_000)),
    work=st.sampled_from([0, 1, 65536, 131072, MiB]),
)
def test_property_inflate_whole_agrees_with_decompress(
    data: bytes,
    size: int,
    coding: str,
    damage: str,
    where: int,
    tail: bytes,
    cap: int,
    work: int,
) -> None:
    """Where inflate_whole decides, it decides as the Decompressor fed the same body does."""
    encoded = {"gzip": gzip.compress, "deflate": zlib.compress, "raw-deflate": _raw_deflate}
    body = encoded[coding]((data * (size // len(data) + 1))[:size])
    if damage == "flip":
        body = body[:where] + bytes([body[where % len(body)] ^ 0x55]) + body[where + 1 :]
    elif damage == "cut":
        body = body[:where]
    elif damage == "tail":
        body += tail
    coding = "deflate" if coding == "raw-deflate" else coding
    got = _inflate_whole_or_error(body, coding, cap, work)
    if got is not None:
        assert got == _decompress_or_error(body, coding, cap)
