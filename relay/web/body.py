"""Read a request body with caps: raw size, decompressed size, and time.

aiohttp's own body inflation is switched off (`auto_decompress=False` in the app),
so the only decompression is this streaming one, capped as it goes: a bomb is
refused with 413 after at most `max_decompressed` bytes of output. Decompression
runs in slices of a few milliseconds, so a bomb never stalls the other requests.
"""

from __future__ import annotations

import asyncio
import time

from aiohttp import web

from relay.protocol.decompress import (
    DecompressionError,
    TooLarge,
    UnsupportedEncoding,
    make_decompressor,
)
from relay.web.errors import BadRequest, PayloadTooLarge, RequestTimeout, UnsupportedMedia

CHUNK = 64 * 1024
#: Longest stretch of decompression work before other requests get their turn.
SLICE_S = 0.005


async def read_body(
    request: web.Request, *, max_bytes: int, max_decompressed: int, timeout: float
) -> bytes:
    """The request body, decompressed; raises ApiError subclasses on any violation."""
    length = request.content_length
    if length is not None and length > max_bytes:
        raise PayloadTooLarge(f"request body too large: {length} bytes, limit {max_bytes}")
    try:
        decompressor = make_decompressor(request.headers.get("Content-Encoding"), max_decompressed)
    except UnsupportedEncoding as exc:
        raise UnsupportedMedia(str(exc)) from None
    received = 0
    pause_at = time.perf_counter() + SLICE_S
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.content.iter_chunked(CHUNK):
                received += len(chunk)
                if received > max_bytes:
                    raise PayloadTooLarge(f"request body too large: over {max_bytes} bytes")
                for _ in decompressor.feed_steps(chunk):
                    if time.perf_counter() >= pause_at:
                        # A highly compressed chunk is a lot of work: let other requests run.
                        await asyncio.sleep(0)
                        pause_at = time.perf_counter() + SLICE_S
            return decompressor.finish()
    except TimeoutError:
        raise RequestTimeout("timed out reading the request body") from None
    except TooLarge:
        raise PayloadTooLarge(
            f"decompressed body too large: over {max_decompressed} bytes"
        ) from None
    except DecompressionError as exc:
        raise BadRequest(f"invalid body encoding: {exc}") from None
