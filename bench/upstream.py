"""The recording upstream for benchmarks: answers 200 at once and counts what arrives.

    python bench/upstream.py [--port 0]

Prints `listening <port>` when ready. `POST /api/<id>/<endpoint>/` bodies are
counted as envelopes, or as `bad` when they do not look like one: a compressed
body (gzip or deflate, as the relay sends them) is inflated only as far as its
first bytes, enough to see that it starts with `{` (the envelope header), so the
upstream stays cheap next to the target it measures. `bytes_inflated` is the
size the body inflates to: the gzip trailer's ISIZE field for gzip, a full
inflate for deflate (which the relay does not send). `GET /__bench/stats`
answers the counters as JSON, with the upstream's own CPU seconds (`cpu_s`).
Nothing is stored.

It shares the machine's cores with the relay under test, so it is an HTTP/1.1
server at the lowest level that still parses requests properly: an asyncio
protocol over `httptools` (llhttp), keep-alive and pipelining included, with no
web framework per request. A third to a quarter of the CPU per request of
aiohttp's low-level server (`bench/README.md`).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import time
import zlib
from typing import cast

import httptools
import orjson
from aio import LOOPBACK, run


class Counters:
    def __init__(self) -> None:
        self.requests = 0
        self.envelopes = 0
        self.bytes_in = 0
        self.bytes_inflated = 0
        self.bad = 0


#: Inflated bytes looked at per compressed body.
PEEK_BYTES = 64


def peek(raw: bytes, encoding: str) -> tuple[bytes, int]:
    """The first inflated bytes of a body (at most PEEK_BYTES) and its inflated size.

    Raises zlib.error when the start of a compressed body is not valid.
    """
    if encoding in ("gzip", "x-gzip"):
        head = zlib.decompressobj(47).decompress(raw, PEEK_BYTES)
        # ISIZE: the inflated length modulo 2**32, the last 4 bytes of a gzip member.
        return head, int.from_bytes(raw[-4:], "little") if len(raw) >= 18 else len(head)
    if encoding == "deflate":
        body = zlib.decompress(raw)
        return body[:PEEK_BYTES], len(body)
    return raw[:PEEK_BYTES], len(raw)


#: Bodies larger than this are refused (the relay's own limits are far below it).
MAX_BODY = 256 * 1024**2

_REASONS = {200: b"OK", 400: b"Bad Request", 404: b"Not Found", 413: b"Payload Too Large"}


@functools.lru_cache(maxsize=64)
def _response(status: int, body: bytes, close: bool = False) -> bytes:
    """The bytes of a whole response (built once per distinct answer)."""
    head = b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n" % (
        status,
        _REASONS[status],
        len(body),
        b"Connection: close\r\n" if close else b"",
    )
    return head + body


OK = (200, b'{"id":null}')
NOT_FOUND = (404, b'{"detail":"not found"}')


def answer(
    counters: Counters, method: bytes, path: bytes, encoding: str, raw: bytes
) -> tuple[int, bytes]:
    """The status and body of the answer to one request."""
    parts = path.split(b"?", 1)[0].split(b"/")
    # POST /api/<project_id>/<endpoint>/
    if method == b"POST" and len(parts) == 5 and parts[1] == b"api" and not parts[4]:
        counters.requests += 1
        counters.bytes_in += len(raw)
        try:
            head, inflated = peek(raw, encoding)
        except zlib.error:
            counters.bad += 1
            return 400, b'{"detail":"bad encoding"}'
        counters.bytes_inflated += inflated
        if parts[3] == b"envelope":
            if head[:1] != b"{":
                counters.bad += 1
                return 400, b'{"detail":"not an envelope"}'
            counters.envelopes += 1
        return OK
    if method == b"GET" and parts[1:] == [b"__bench", b"stats"]:
        # cpu_s: this process's CPU time, so the harness can tell what the upstream cost.
        stats = {**vars(counters), "cpu_s": round(time.process_time(), 3)}
        return 200, orjson.dumps(stats)
    return NOT_FOUND


class UpstreamProtocol(asyncio.Protocol):
    """One client connection: requests are parsed as bytes arrive and answered in order."""

    def __init__(self, counters: Counters) -> None:
        self.counters = counters
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.encoding = ""
        self.body: list[bytes] = []
        self.size = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            self._finish(_response(400, b'{"detail":"bad request"}', True), close=True)

    # httptools callbacks

    def on_message_begin(self) -> None:
        self.url = b""
        self.encoding = ""
        self.body = []
        self.size = 0

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"content-encoding":
            self.encoding = value.decode("latin-1").strip().lower()

    def on_body(self, body: bytes) -> None:
        self.size += len(body)
        if self.size > MAX_BODY:
            self._finish(_response(413, b'{"detail":"too large"}', True), close=True)
            raise httptools.HttpParserError("body too large")
        self.body.append(body)

    def on_message_complete(self) -> None:
        raw = self.body[0] if len(self.body) == 1 else b"".join(self.body)
        method = self.parser.get_method()
        status, body = answer(self.counters, method, self.url, self.encoding, raw)
        close = not self.parser.should_keep_alive()
        self._finish(_response(status, body, close), close=close)

    def _finish(self, response: bytes, *, close: bool) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        transport.write(response)
        if close:
            transport.close()


async def start(counters: Counters, port: int = 0) -> asyncio.Server:
    """Listen on loopback `port` (0: any free one) and serve until the server is closed."""
    loop = asyncio.get_running_loop()
    return await loop.create_server(
        lambda: UpstreamProtocol(counters), LOOPBACK, port, backlog=1024
    )


async def serve(port: int) -> None:
    server = await start(Counters(), port)
    print(f"listening {server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    run(serve(args.port))


if __name__ == "__main__":
    main()
