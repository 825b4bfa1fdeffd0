"""gzip for forwarded bodies: every level writes one plain member any gzip reader takes."""

from __future__ import annotations

import gzip
import zlib

import pytest

from relay.protocol.compress import gzip_compress
from tests.support.corpus import ENVELOPES


@pytest.mark.parametrize("level", range(10))
def test_every_level_round_trips_as_one_plain_member(level: int) -> None:
    data = b"".join(p.read_bytes() for p in ENVELOPES)
    out = gzip_compress(data, level)
    assert out[:4] == b"\x1f\x8b\x08\x00"  # gzip, deflate, no optional header fields
    assert gzip.decompress(out) == data
    reader = zlib.decompressobj(16 + zlib.MAX_WBITS)
    assert reader.decompress(out) == data
    assert reader.eof and reader.unused_data == b""
    if level:
        assert len(out) < len(data) / 2


def test_empty_body() -> None:
    assert gzip.decompress(gzip_compress(b"")) == b""
