"""Read a request body with caps: raw size, decompressed size, and time.

aiohttp's own body inflation is switched off (`auto_decompress=False` in the app),
so the only decompression is this streaming one, capped as it goes: a bomb is
refused with 413 after at most `max_decompressed` bytes of output. Decompression
runs in slices of a few milliseconds, so a bomb never stalls the other requests.

The usual SDK request, a small body that arrived whole with the headers, plain or as
gzip (or deflate), takes a shorter way to the same result: it is inflated in a few
direct calls (`inflate_whole`), up to about `FAST_OUTPUT_LIMIT` bytes of output, and
what that way cannot settle (a second gzip member, truncated data, more output) goes
through the streaming decoder from the start.
"""

from __future__ import annotations

import asyncio
import time

from relay.protocol.decompress import (
    DecompressionError,
    Decompressor,
    TooLarge,
    UnsupportedEncoding,
    inflate_whole,
    parse_content_encoding,
)
from relay.web.errors import (
    ApiError,
    BadRequest,
    PayloadTooLarge,
    RequestTimeout,
    ServiceUnavailable,
    UnsupportedMedia,
)
from relay.web.request import IngestRequest

CHUNK = 64 * 1024
#: Longest stretch of decompression work before other requests get their turn.
SLICE_S = 0.005
#: Whole bodies that arrived with the headers skip the streaming decoder when they are
#: plain, or gzip or deflate of at most `CHUNK` bytes (the streaming decoder's slice, so
#: that both charge the budget at the same points). Same results either way; tests
#: switch it off to compare.
FAST_PATH = True
#: Most output the short way inflates before it leaves the body to the streaming
#: decoder: about a millisecond of work, so no body holds the event loop for long.
FAST_OUTPUT_LIMIT = 1024 * 1024
#: Content-Encoding values as SDKs send them, parsed (others go through the parser).
_COMMON_CODINGS: dict[str | None, tuple[str, ...]] = {
    None: (),
    "": (),
    "gzip": ("gzip",),
    "deflate": ("deflate",),
    "br": ("br",),
    "zstd": ("zstd",),
}


class BodyBudget:
    """Decoded body bytes held by the requests in progress, all together, up to `limit`.

    `read_body` charges a request as its body grows; the charge is given back when
    the request is answered (`release`, from the app's middleware). A request whose
    body would pass the limit is answered 503 with `Retry-After`: per-request caps
    bound one body, this bounds what many concurrent ones hold.
    """

    __slots__ = ("_held", "limit", "used")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        #: Bytes held per request in progress, by `id(request)`: the request is alive
        #: until the middleware releases it, so its id cannot be reused before.
        self._held: dict[int, int] = {}

    def charge(self, request: IngestRequest, size: int) -> None:
        """Count `size` more bytes for `request`, or raise ServiceUnavailable."""
        if self.used + size > self.limit:
            raise ServiceUnavailable(
                "the relay holds too many request bodies right now",
                headers={"Retry-After": "1"},
            )
        self.used += size
        held = self._held
        key = id(request)
        held[key] = held.get(key, 0) + size

    def held(self, request: IngestRequest) -> int:
        """Bytes `request` holds now."""
        return self._held.get(id(request), 0)

    def release(self, request: IngestRequest) -> None:
        self.used -= self._held.pop(id(request), 0)


class _Charge:
    """Charges a request's growing decoded body to the budget (if any)."""

    __slots__ = ("budget", "decompressor", "done", "request")

    def __init__(
        self, request: IngestRequest, budget: BodyBudget | None, decompressor: Decompressor
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
    request: IngestRequest,
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
    encoding = request.headers.get("Content-Encoding")
    codings = _COMMON_CODINGS.get(encoding)
    if codings is None:
        try:
            codings = tuple(parse_content_encoding(encoding))
        except UnsupportedEncoding as exc:
            raise UnsupportedMedia(str(exc)) from None
    content = request.content
    if not content.is_eof():
        return await _decode(
            request, codings, None, max_bytes, max_decompressed, timeout, keep_gzip, budget
        )
    # The whole body arrived with the headers (usual for SDK-sized bodies): nothing to
    # wait for, so no read timer and no chunk iteration.
    whole = content.read_nowait(-1)
    size = len(whole)
    if size > max_bytes:
        raise PayloadTooLarge(f"request body too large: over {max_bytes} bytes")
    if FAST_PATH:
        if not codings:
            if size > max_decompressed:
                # The streaming decoder charges the whole slices below the cap, then refuses.
                held = max_decompressed - max_decompressed % CHUNK
                if budget is not None and held:
                    budget.charge(request, held)
                raise PayloadTooLarge(f"decompressed body too large: over {max_decompressed} bytes")
            if budget is not None and size:
                budget.charge(request, size)
            return whole, None
        if size <= CHUNK and len(codings) == 1 and codings[0] in ("gzip", "deflate"):
            coding = codings[0]
            try:
                body = inflate_whole(whole, coding, max_decompressed, FAST_OUTPUT_LIMIT)
            except DecompressionError as exc:
                raise _decode_error(exc, max_decompressed) from None
            if body is not None:
                if budget is not None and body:
                    budget.charge(request, len(body))
                if keep_gzip and coding == "gzip" and _plain_gzip_header(whole):
                    return body, whole
                return body, None
    return await _decode(
        request, codings, whole, max_bytes, max_decompressed, timeout, keep_gzip, budget
    )


def _decode_error(exc: DecompressionError, max_decompressed: int) -> ApiError:
    """The answer to a body that does not decode: 413 past the cap, else 400."""
    if isinstance(exc, TooLarge):
        return PayloadTooLarge(f"decompressed body too large: over {max_decompressed} bytes")
    return BadRequest(f"invalid body encoding: {exc}")


async def _decode(
    request: IngestRequest,
    codings: tuple[str, ...],
    whole: bytes | None,
    max_bytes: int,
    max_decompressed: int,
    timeout: float,
    keep_gzip: bool,
    budget: BodyBudget | None,
) -> tuple[bytes, bytes | None]:
    """`read_body` through the streaming decoder: of `whole`, the body if it had all
    arrived (already checked against `max_bytes`), else of the chunks as they come."""
    decompressor = Decompressor(list(codings), max_decompressed)
    raw: list[bytes] | None = [] if keep_gzip and codings == ("gzip",) else None
    charged = _Charge(request, budget, decompressor)
    try:
        if whole is not None:
            if raw is not None:
                raw.append(whole)
            pause_at = time.perf_counter() + SLICE_S
            view = memoryview(whole)
            for start in range(0, len(whole), CHUNK):  # codecs take bounded input slices
                pause_at = await _inflate(decompressor, view[start : start + CHUNK], pause_at)
                charged.update()
        else:
            received = 0
            pause_at = time.perf_counter() + SLICE_S
            async with asyncio.timeout(timeout):
                async for chunk in request.content.iter_chunked(CHUNK):
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
    except DecompressionError as exc:
        raise _decode_error(exc, max_decompressed) from None
    if raw is None or not decompressor.single_gzip_member:
        return body, None
    original = raw[0] if len(raw) == 1 else b"".join(raw)
    return body, original if _plain_gzip_header(original) else None
