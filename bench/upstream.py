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
"""

from __future__ import annotations

import argparse
import asyncio
import time
import zlib
from typing import Any

from aio import run, serve_server
from aiohttp import web


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
REPLY = b'{"id":null}'


def make_server(counters: Counters) -> web.Server:
    """aiohttp's low-level server: no application, router or middleware to run per
    request, so the upstream takes as little as it can of the cores it shares with the
    relay under test (~10% less CPU per request than a routed application, measured
    with wrk against both)."""

    async def ingest(request: web.BaseRequest, endpoint: str) -> web.Response:
        raw = await request.read()
        counters.requests += 1
        counters.bytes_in += len(raw)
        encoding = request.headers.get("Content-Encoding", "").lower()
        try:
            head, inflated = peek(raw, encoding)
        except zlib.error:
            counters.bad += 1
            return web.Response(status=400, body=b'{"detail":"bad encoding"}')
        counters.bytes_inflated += inflated
        if endpoint == "envelope":
            if head[:1] != b"{":
                counters.bad += 1
                return web.Response(status=400, body=b'{"detail":"not an envelope"}')
            counters.envelopes += 1
        return web.Response(body=REPLY, content_type="application/json")

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        parts = request.path.split("/")
        # POST /api/<project_id>/<endpoint>/
        if request.method == "POST" and len(parts) == 5 and parts[1] == "api" and not parts[4]:
            return await ingest(request, parts[3])
        if request.method == "GET" and request.path == "/__bench/stats":
            # cpu_s: this process's CPU time, so the harness can tell what the upstream cost.
            return web.json_response({**vars(counters), "cpu_s": round(time.process_time(), 3)})
        return web.Response(status=404, body=b'{"detail":"not found"}')

    def request_factory(
        message: Any, payload: Any, protocol: Any, writer: Any, task: Any
    ) -> web.BaseRequest:
        loop = asyncio.get_running_loop()
        return web.BaseRequest(
            message, payload, protocol, writer, task, loop, client_max_size=MAX_BODY
        )

    return web.Server(handle, request_factory=request_factory, auto_decompress=False)


async def serve(port: int) -> None:
    await serve_server(make_server(Counters()), port)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    run(serve(args.port))


if __name__ == "__main__":
    main()
