"""The recording upstream for benchmarks: answers 200 at once and counts what arrives.

    python bench/upstream.py [--port 0]

Prints `listening <port>` when ready. `POST /api/<id>/<endpoint>/` bodies are
inflated when gzip/deflate-encoded (as the relay sends them) and counted as
envelopes, or as `bad` when they do not look like an envelope. `GET /__bench/stats`
answers the counters as JSON. Nothing is stored.
"""

from __future__ import annotations

import argparse
import zlib

from aio import run, serve_app
from aiohttp import web


class Counters:
    def __init__(self) -> None:
        self.requests = 0
        self.envelopes = 0
        self.bytes_in = 0
        self.bytes_inflated = 0
        self.bad = 0


def make_app(counters: Counters) -> web.Application:
    app = web.Application(handler_args={"auto_decompress": False}, client_max_size=256 * 1024**2)
    reply = b'{"id":null}'

    async def ingest(request: web.Request) -> web.Response:
        raw = await request.read()
        counters.requests += 1
        counters.bytes_in += len(raw)
        encoding = request.headers.get("Content-Encoding", "").lower()
        try:
            if encoding in ("gzip", "x-gzip"):
                body = zlib.decompress(raw, 47)
            elif encoding == "deflate":
                body = zlib.decompress(raw)
            else:
                body = raw
        except zlib.error:
            counters.bad += 1
            return web.Response(status=400, body=b'{"detail":"bad encoding"}')
        counters.bytes_inflated += len(body)
        if request.match_info["endpoint"] == "envelope":
            if body[:1] != b"{":
                counters.bad += 1
                return web.Response(status=400, body=b'{"detail":"not an envelope"}')
            counters.envelopes += 1
        return web.Response(body=reply, content_type="application/json")

    async def stats(request: web.Request) -> web.Response:
        return web.json_response(vars(counters))

    app.router.add_post("/api/{project_id}/{endpoint}/", ingest)
    app.router.add_get("/__bench/stats", stats)
    return app


async def serve(port: int) -> None:
    await serve_app(make_app(Counters()), port)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    run(serve(args.port))


if __name__ == "__main__":
    main()
