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
    Decompressor,
    TooLarge,
    UnsupportedEncoding,
    make_decompressor,
)
from relay.web.errors import (
    BadRequest,
    PayloadTooLarge,
    RequestTimeout,
    ServiceUnavailable,
    UnsupportedMedia,
)

CHUNK = 64 * 1024
#: Longest stretch of decompression work before other requests get their turn.
SLICE_S = 0.005


class BodyBudget:
    """Decoded body bytes held by the requests in progress, all together, up to `limit`.

    `read_body` charges a request as its body grows; the charge is given back when
    the request is answered (`release`, from the app's middleware). A request whose
    body would pass the limit is answered 503 with `Retry-After`: per-request caps
    bound one body, this bounds what many concurrent ones hold.
    """

    __slots__ = ("limit", "used")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def charge(self, request: web.Request, size: int) -> None:
        """Count `size` more bytes for `request`, or raise ServiceUnavailable."""
        if self.used + size > self.limit:
            raise ServiceUnavailable(
                "the relay holds too many request bodies right now",
                headers={"Retry-After": "1"},
            )
        self.used += size
        request[CHARGED] = request.get(CHARGED, 0) + size

    def release(self, request: web.Request) -> None:
        self.used -= request.pop(CHARGED, 0)


#: Bytes a request was charged against the app's `BodyBudget`.
CHARGED = web.RequestKey("relay_body_charged", int)


class _Charge:
    """Charges a request's growing decoded body to the budget (if any)."""

    __slots__ = ("budget", "decompressor", "done", "request")

    def __init__(
        self, request: web.Request, budget: BodyBudget | None, decompressor: Decompressor
    ) -> None:
        self.request = request
        self.budget = budget
        self.decompressor = decompressor
        self.done = 0

    def update(self) -> None:
        if self.budget is not None:
            grown = self.decompressor.size - self.done
            if grown > 0:
                self.budget.charge(self.request, grown)
                self.done += grown


async def _inflate(decompressor: Decompressor, chunk: bytes | memoryview, pause_at: float) -> float:
    """Feed `chunk`; a highly compressed chunk is a lot of work, so every `SLICE_S` the
    other requests get their turn. Returns the next pause time."""
    for _ in decompressor.feed_steps(chunk):
        if time.perf_counter() >= pause_at:
            await asyncio.sleep(0)
            pause_at = time.perf_counter() + SLICE_S
    return pause_at


def _plain_gzip_header(data: bytes) -> bool:
    """A gzip member header with no optional fields (FLG 0): no name, comment or extra
    field that could carry data the decoded body does not show."""
    return data[:4] == b"\x1f\x8b\x08\x00"


async def read_body(
    request: web.Request,
    *,
    max_bytes: int,
    max_decompressed: int,
    timeout: float,
    keep_gzip: bool = False,
    budget: BodyBudget | None = None,
) -> tuple[bytes, bytes | None]:
    """The request body, decompressed; raises ApiError subclasses on any violation.

    With `keep_gzip`, also the bytes as received when they are one plain gzip member
    (`Content-Encoding: gzip`, no optional header fields, nothing after the member):
    then they encode exactly the decoded body and nothing else, and can be forwarded
    as they came when processing changes nothing. Otherwise (and without it) None."""
    length = request.content_length
    if length is not None and length > max_bytes:
        raise PayloadTooLarge(f"request body too large: {length} bytes, limit {max_bytes}")
    try:
        decompressor = make_decompressor(request.headers.get("Content-Encoding"), max_decompressed)
    except UnsupportedEncoding as exc:
        raise UnsupportedMedia(str(exc)) from None
    raw: list[bytes] | None = [] if keep_gzip and decompressor.codings == ("gzip",) else None
    charged = _Charge(request, budget, decompressor)
    content = request.content
    try:
        if content.is_eof():
            # The whole body arrived with the headers (usual for SDK-sized bodies):
            # nothing to wait for, so no read timer and no chunk iteration.
            chunk = content.read_nowait(-1)
            if len(chunk) > max_bytes:
                raise PayloadTooLarge(f"request body too large: over {max_bytes} bytes")
            if raw is not None:
                raw.append(chunk)
            pause_at = time.perf_counter() + SLICE_S
            view = memoryview(chunk)
            for start in range(0, len(chunk), CHUNK):  # codecs take bounded input slices
                pause_at = await _inflate(decompressor, view[start : start + CHUNK], pause_at)
                charged.update()
        else:
            received = 0
            pause_at = time.perf_counter() + SLICE_S
            async with asyncio.timeout(timeout):
                async for chunk in content.iter_chunked(CHUNK):
                    if raw is not None:
                        raw.append(chunk)
                    received += len(chunk)
                    if received > max_bytes:
                        raise PayloadTooLarge(f"request body too large: over {max_bytes} bytes")
                    pause_at = await _inflate(decompressor, chunk, pause_at)
                    charged.update()
        body = decompressor.finish()
        charged.update()
    except TimeoutError:
        raise RequestTimeout("timed out reading the request body") from None
    except TooLarge:
        raise PayloadTooLarge(
            f"decompressed body too large: over {max_decompressed} bytes"
        ) from None
    except DecompressionError as exc:
        raise BadRequest(f"invalid body encoding: {exc}") from None
    if raw is None or not decompressor.single_gzip_member:
        return body, None
    original = raw[0] if len(raw) == 1 else b"".join(raw)
    return body, original if _plain_gzip_header(original) else None
