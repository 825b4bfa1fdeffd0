"""gzip for forwarded bodies.

Levels 1-3 use ISA-L (`isal`), which writes the same gzip format about twice as fast
as zlib at a similar size; level 0 and 4-9 use zlib (0 stores without compressing).
"""

from __future__ import annotations

import zlib

from isal import isal_zlib

__all__ = ["GZIP_MIN_BYTES", "gzip_compress", "gzip_worth"]

_GZIP_WBITS = 16 + zlib.MAX_WBITS
#: Bodies smaller than this are forwarded uncompressed (gzip would cost more than it saves).
GZIP_MIN_BYTES = 1024


def gzip_compress(data: bytes, level: int = 1) -> bytes:
    """One gzip member of `data` (no file name, no optional header fields)."""
    if 1 <= level <= 3:
        return isal_zlib.compress(data, level, wbits=_GZIP_WBITS)
    return zlib.compress(data, level, wbits=_GZIP_WBITS)


def gzip_worth(data: bytes, level: int | None) -> bytes | None:
    """`data` gzipped at `level` for the upstream, or None when it goes as it is: gzip
    is off (`level` None) or `data` is shorter than `GZIP_MIN_BYTES`."""
    if level is None or len(data) < GZIP_MIN_BYTES:
        return None
    return gzip_compress(data, level)
