"""Streaming request-body decompression with a hard cap on the output size.

    DecompressionError(ValueError)     corrupt or truncated compressed data
    ├── TooLarge                       output would exceed `max_bytes` (answer 413)
    └── UnsupportedEncoding            a Content-Encoding we cannot decode, or too many (415)

`make_decompressor(content_encoding, max_bytes)` returns a `Decompressor`; `feed()`
it the body chunk by chunk as it arrives and call `finish()` for the whole output.
`feed_steps()` is `feed()` in small steps, for callers that must not block an event
loop for the whole of a highly compressed chunk. `inflate_whole()` decodes a whole
small gzip or deflate body in a few calls, with the same results where it can decide.
Every stage decodes with a bounded output buffer (zlib `max_length`, brotli
`output_buffer_limit`, zstd in small input slices), so a bomb is stopped after
about `max_bytes` plus one chunk of work, never after materializing its output.

Accepted codings, case-insensitive: `gzip`, `x-gzip`, `deflate` (zlib-wrapped, as
RFC 9110 defines it, or raw deflate, as some clients send), `br`, `zstd`. Sentry
ignores an empty value, `identity` and the charset-like `UTF-8` that some SDKs
send; so do we. A list such as `gzip, br` names codings in the order they were
applied, so they are undone from the last to the first; at most `MAX_CODINGS` of
them (each layer may inflate up to the cap, and a long list would nest as deep).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from typing import Any, Protocol, cast

import brotli
import zstandard
from isal import isal_zlib

__all__ = [
    "MAX_CODINGS",
    "DecompressionError",
    "Decompressor",
    "TooLarge",
    "UnsupportedEncoding",
    "decompress",
    "inflate_whole",
    "make_decompressor",
    "parse_content_encoding",
]

#: Upper bound of output produced by one call into a codec.
CHUNK = 64 * 1024
#: A zstd block (at most 128 KiB of output) needs at least 4 bytes of input.
_ZSTD_MAX_RATIO = 32 * 1024

#: Codings one body may name. Clients apply one (two at most); each layer is one more
#: inflate of up to `max_bytes`.
MAX_CODINGS = 3

_IGNORED = frozenset({"", "identity", "utf-8", "utf8"})
_KNOWN = frozenset({"gzip", "x-gzip", "deflate", "br", "zstd"})


class DecompressionError(ValueError):
    """The body is not valid data in its declared Content-Encoding."""


class TooLarge(DecompressionError):
    """The decompressed body would exceed the configured maximum."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(f"decompressed body exceeds {max_bytes} bytes")
        self.max_bytes = max_bytes


class UnsupportedEncoding(DecompressionError):
    """The Content-Encoding names a coding this relay cannot decode."""

    def __init__(self, encoding: str, why: str | None = None) -> None:
        super().__init__(why or f"unsupported content encoding: {encoding!r}")
        self.encoding = encoding


def parse_content_encoding(value: str | None) -> list[str]:
    """Codings in the order they were applied, without the ignored ones.

    Raises UnsupportedEncoding for a coding that is neither known nor ignored, and for
    more than `MAX_CODINGS` codings.
    """
    if value is None:
        return []
    codings: list[str] = []
    for part in value.split(","):
        name = part.strip().lower()
        if name in _IGNORED:
            continue
        if name not in _KNOWN:
            raise UnsupportedEncoding(part.strip())
        codings.append("gzip" if name == "x-gzip" else name)
    if len(codings) > MAX_CODINGS:
        raise UnsupportedEncoding(value, f"more than {MAX_CODINGS} content codings")
    return codings


class _Stage(Protocol):
    def feed(self, data: bytes) -> Iterator[bytes]: ...

    def finish(self) -> Iterator[bytes]: ...


class _Identity:
    def feed(self, data: bytes) -> Iterator[bytes]:
        for start in range(0, len(data), CHUNK):
            yield data[start : start + CHUNK]

    def finish(self) -> Iterator[bytes]:
        return iter(())


#: zlib-compatible inflate from ISA-L: the same streams and API, about 25% faster.
_inflate = isal_zlib.decompressobj
_INFLATE_ERRORS: tuple[type[BaseException], ...] = (
    zlib.error,
    cast("type[BaseException]", isal_zlib.error),
)


def _deflate_wbits(head: bytes) -> int:
    """Window bits for a `deflate` body that starts with `head` (two bytes at least):
    zlib-wrapped when they form a valid zlib header, raw deflate otherwise."""
    cmf, flg = head[0], head[1]
    wrapped = cmf & 0x0F == 8 and cmf >> 4 <= 7 and (cmf << 8 | flg) % 31 == 0
    return zlib.MAX_WBITS if wrapped else -zlib.MAX_WBITS


class _Zlib:
    """gzip (possibly several members) and deflate (zlib-wrapped or raw)."""

    def __init__(self, coding: str) -> None:
        self._coding = coding
        self._head = b""  # deflate: the first bytes, until the wrapping is known
        self._obj: Any = None
        if coding == "gzip":
            self._obj = _inflate(16 + zlib.MAX_WBITS)
        self._done = False  # the current stream reached its end
        self._seen = False  # an empty body stays empty, whatever its coding
        self.members = 0  # complete gzip members (or deflate streams) decoded

    def _start_deflate(self, head: bytes) -> None:
        self._obj = _inflate(_deflate_wbits(head))

    def feed(self, data: bytes) -> Iterator[bytes]:
        if not data:
            return
        self._seen = True
        if self._obj is None:
            self._head += data
            if len(self._head) < 2:
                return
            data, self._head = self._head, b""
            self._start_deflate(data)
        yield from self._run(data)

    def _run(self, data: bytes) -> Iterator[bytes]:
        obj = self._obj
        assert obj is not None
        while True:
            if self._done:
                if not data:
                    return
                if self._coding != "gzip":
                    raise DecompressionError(f"{self._coding}: data after the end of the stream")
                # Concatenated gzip members form one body (RFC 1952 2.2).
                obj = self._obj = _inflate(16 + zlib.MAX_WBITS)
                self._done = False
            try:
                out = obj.decompress(data, CHUNK)
            except _INFLATE_ERRORS as exc:
                raise DecompressionError(f"{self._coding}: {exc}") from None
            if out:
                yield out
            if obj.eof:
                self._done = True
                self.members += 1
                data = obj.unused_data
                continue
            data = obj.unconsumed_tail
            if not data and len(out) < CHUNK:
                return

    def finish(self) -> Iterator[bytes]:
        if self._seen and not self._done:
            raise DecompressionError(f"{self._coding}: truncated data")
        return iter(())


class _Brotli:
    def __init__(self) -> None:
        self._obj = brotli.Decompressor()
        self._seen = False

    def feed(self, data: bytes) -> Iterator[bytes]:
        if not data:
            return
        self._seen = True
        obj = self._obj
        try:
            if obj.is_finished():
                raise DecompressionError("br: data after the end of the stream")
            out: bytes = obj.process(data, output_buffer_limit=CHUNK)
            # Drain until a call yields nothing. `can_accept_more_data()` does not say that
            # the output is all out: Brotli 1.2 buffers the rest of the input and says True
            # while output is still pending, which would be lost after the last chunk.
            idle = 0
            while True:
                if out:
                    yield out
                    idle = 0
                elif obj.can_accept_more_data():
                    return
                else:  # neither output nor room for input: never twice in a row
                    idle += 1
                    if idle > 1:
                        raise DecompressionError("br: the decoder made no progress")
                if obj.is_finished():
                    return
                out = obj.process(b"", output_buffer_limit=CHUNK)
        except brotli.error as exc:
            raise DecompressionError(f"br: {exc or 'corrupt data'}") from None

    def finish(self) -> Iterator[bytes]:
        if self._seen and not self._obj.is_finished():
            raise DecompressionError("br: truncated data")
        return iter(())


class _Zstd:
    def __init__(self, budget: int) -> None:
        self._dctx = zstandard.ZstdDecompressor()
        self._obj = self._dctx.decompressobj()
        self._budget = budget
        self._produced = 0
        self._seen = False

    def feed(self, data: bytes) -> Iterator[bytes]:
        pos = 0
        size = len(data)
        while pos < size:
            self._seen = True
            # Each slice can expand at most _ZSTD_MAX_RATIO times: keep slices small
            # enough that one call never passes the remaining budget by more than CHUNK.
            room = max(self._budget - self._produced, 0) + CHUNK
            step = max(1, min(room // _ZSTD_MAX_RATIO, CHUNK))
            piece = data[pos : pos + step]
            pos += step
            if self._obj.eof:
                # Concatenated frames form one body, as zstd itself treats them.
                self._obj = self._dctx.decompressobj()
            try:
                out = self._obj.decompress(piece)
            except zstandard.ZstdError as exc:
                raise DecompressionError(f"zstd: {exc}") from None
            if self._obj.eof and self._obj.unused_data:
                rest = self._obj.unused_data
                self._obj = self._dctx.decompressobj()
                data = rest + data[pos:]
                pos, size = 0, len(data)
            self._produced += len(out)
            if out:
                yield out

    def finish(self) -> Iterator[bytes]:
        if self._seen and not self._obj.eof:
            raise DecompressionError("zstd: truncated data")
        return iter(())


class Decompressor:
    """Undo a body's Content-Encoding incrementally, never exceeding `max_bytes`.

    Build it with `make_decompressor`. `feed(chunk)` as chunks arrive (raises
    TooLarge as soon as the output passes the cap, DecompressionError on corrupt
    data); `finish()` checks the stream ended properly and returns the output.
    """

    def __init__(self, codings: list[str], max_bytes: int) -> None:
        """`codings` in the order they were applied; `max_bytes` caps every stage's output."""
        if max_bytes < 0:
            raise ValueError("max_bytes must not be negative")
        self.codings = tuple(codings)
        self.max_bytes = max_bytes
        self._stages: list[_Stage] = [_make_stage(c, max_bytes) for c in reversed(codings)]
        self._stage_sizes = [0] * len(self._stages)
        self._out: list[bytes] = []
        self._size = 0
        self._finished = False

    @property
    def size(self) -> int:
        """Decompressed bytes produced so far."""
        return self._size

    def feed(self, chunk: bytes | memoryview) -> None:
        for _ in self.feed_steps(chunk):
            pass

    def feed_steps(self, chunk: bytes | memoryview) -> Iterator[None]:
        """`feed`, one step at a time: yields after each piece (at most `CHUNK` bytes) that
        any stage produced, so that an event loop can run between steps of a large body."""
        if self._finished:
            raise RuntimeError("feed() after finish()")
        if not self._stages:
            self._emit(bytes(chunk))
            return
        for piece in self._stages[0].feed(bytes(chunk)):
            yield from self._push(1, piece)

    @property
    def single_gzip_member(self) -> bool:
        """After `finish`: the body was `gzip` alone and exactly one complete member, so the
        bytes received are one self-contained encoding of the output and nothing else."""
        stages = self._stages
        return (
            self._finished
            and self.codings == ("gzip",)
            and isinstance(stages[0], _Zlib)
            and stages[0].members == 1
        )

    def finish(self) -> bytes:
        if not self._finished:
            self._finished = True
            for index, stage in enumerate(self._stages):
                for piece in stage.finish():
                    for _ in self._push(index + 1, piece):
                        pass
        return b"".join(self._out)

    def _push(self, index: int, piece: bytes) -> Iterator[None]:
        """Hand `piece`, the output of stage `index - 1`, to stage `index` (or the result)."""
        self._stage_sizes[index - 1] += len(piece)
        if self._stage_sizes[index - 1] > self.max_bytes:
            raise TooLarge(self.max_bytes)
        yield
        if index == len(self._stages):
            self._emit(piece)
            return
        for out in self._stages[index].feed(piece):
            yield from self._push(index + 1, out)

    def _emit(self, piece: bytes) -> None:
        self._size += len(piece)
        if self._size > self.max_bytes:
            raise TooLarge(self.max_bytes)
        if piece:
            self._out.append(piece)


def _make_stage(coding: str, max_bytes: int) -> _Stage:
    if coding in ("gzip", "deflate"):
        return _Zlib(coding)
    if coding == "br":
        return _Brotli()
    if coding == "zstd":
        return _Zstd(max_bytes)
    raise UnsupportedEncoding(coding)  # pragma: no cover - parse_content_encoding filters


def make_decompressor(content_encoding: str | None, max_bytes: int) -> Decompressor:
    """A decompressor for the request's `Content-Encoding` header value (None: absent).

    `max_bytes` is the most decompressed output accepted; raises UnsupportedEncoding
    for a coding we do not know.
    """
    return Decompressor(parse_content_encoding(content_encoding), max_bytes)


def inflate_whole(data: bytes, coding: str, max_bytes: int, max_work: int) -> bytes | None:
    """`data`, a whole body in `coding` (`gzip` or `deflate` alone), decoded without a
    `Decompressor`, or None where one must decide: a second gzip member, data after the
    end of a deflate stream, truncated data, or more than `max_work` bytes of output
    without the end of the stream (which bounds the work of one call: `max_work` plus
    `CHUNK` bytes of output at most).

    Makes the very codec calls that a `Decompressor` fed `data` in one piece makes, so
    it raises TooLarge and DecompressionError where `feed` would, with the same message.
    A gzip body decoded here is exactly one complete member.
    """
    if not data:
        return b""
    if coding == "gzip":
        obj = _inflate(16 + zlib.MAX_WBITS)
    elif len(data) < 2:
        return None
    else:
        obj = _inflate(_deflate_wbits(data))
    pieces: list[bytes] = []
    size = 0
    while True:
        try:
            out: bytes = obj.decompress(data, CHUNK)
        except _INFLATE_ERRORS as exc:
            raise DecompressionError(f"{coding}: {exc}") from None
        size += len(out)
        if size > max_bytes:
            raise TooLarge(max_bytes)
        if obj.eof:
            if obj.unused_data:
                return None
            if not pieces:
                return out
            pieces.append(out)
            return b"".join(pieces)
        data = obj.unconsumed_tail
        if (not data and len(out) < CHUNK) or size > max_work:
            return None
        pieces.append(out)


def decompress(data: bytes, content_encoding: str | None, max_bytes: int) -> bytes:
    """One-shot helper: the whole body decoded, with the same cap and errors."""
    dec = make_decompressor(content_encoding, max_bytes)
    dec.feed(data)
    return dec.finish()
