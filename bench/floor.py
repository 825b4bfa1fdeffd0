"""The floor: the least a Python relay on this stack (aiohttp, uvloop) must do per envelope.

    python bench/floor.py --upstream http://127.0.0.1:PORT [--port 0]

Reads the body (still compressed, as it came), forwards it to the same upstream
path with the same auth and encoding through one shared ClientSession, waits for
the answer, and answers 200 `{"id": ...}`. No parsing, no policy, no outbox.
Prints `listening <port>` when ready.

With `BENCH_FLOOR_CLIENT=lean` in the environment (or `--client lean`) it forwards
through the relay's own upstream client (`relay.services.upstream_http`) instead of
aiohttp's: a pass-through on the client the relay uses, so that the relay's own
processing shows against it (`bench/README.md`). The targets are measured against
the default, aiohttp's client.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import AsyncIterator

import aiohttp
import orjson
from aio import run, serve_app
from aiohttp import web

SESSION = web.AppKey("session", aiohttp.ClientSession)
FORWARDED = ("X-Sentry-Auth", "Content-Type", "Content-Encoding")


def _event_id(body: bytes, encoding: str) -> str | None:
    if encoding:
        return None  # compressed: a pass-through does not inflate
    head = body[: body.find(b"\n")] if b"\n" in body else body
    try:
        value = orjson.loads(head).get("event_id")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def make_app(upstream: str, client: str = "aiohttp") -> web.Application:
    app = web.Application(handler_args={"auto_decompress": False}, client_max_size=20 * 1024**2)
    if client == "lean":
        return _lean(app, upstream)

    async def forward(request: web.Request) -> web.Response:
        body = await request.read()
        headers = {k: v for k in FORWARDED if (v := request.headers.get(k)) is not None}
        async with request.app[SESSION].post(
            upstream + request.path, data=body, headers=headers
        ) as resp:
            await resp.read()
            if resp.status != 200:
                return web.Response(status=502, body=b'{"detail":"upstream failed"}')
        event_id = _event_id(body, headers.get("Content-Encoding", ""))
        return web.Response(body=orjson.dumps({"id": event_id}), content_type="application/json")

    async def session_ctx(app: web.Application) -> AsyncIterator[None]:
        connector = aiohttp.TCPConnector(limit=256)
        app[SESSION] = aiohttp.ClientSession(connector=connector, auto_decompress=False)
        yield
        await app[SESSION].close()

    app.cleanup_ctx.append(session_ctx)
    app.router.add_post("/api/{project_id}/{endpoint}/", forward)
    return app


def _lean(app: web.Application, upstream: str) -> web.Application:
    from relay.services.upstream_http import UpstreamHttp

    http = UpstreamHttp()

    async def forward(request: web.Request) -> web.Response:
        body = await request.read()
        headers = {k: v for k in FORWARDED if (v := request.headers.get(k)) is not None}
        reply = await http.post(upstream + request.path, body, headers, 30.0)
        if reply.status != 200:
            return web.Response(status=502, body=b'{"detail":"upstream failed"}')
        event_id = _event_id(body, headers.get("Content-Encoding", ""))
        return web.Response(body=orjson.dumps({"id": event_id}), content_type="application/json")

    async def client_ctx(app: web.Application) -> AsyncIterator[None]:
        yield
        await http.close()

    app.cleanup_ctx.append(client_ctx)
    app.router.add_post("/api/{project_id}/{endpoint}/", forward)
    return app


async def serve(port: int, upstream: str, client: str) -> None:
    await serve_app(make_app(upstream.rstrip("/"), client), port)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--upstream", required=True, help="base URL, e.g. http://127.0.0.1:8000")
    parser.add_argument(
        "--client",
        choices=("aiohttp", "lean"),
        default=os.environ.get("BENCH_FLOOR_CLIENT", "aiohttp"),
        help="the forwarding client (default: aiohttp's, or $BENCH_FLOOR_CLIENT)",
    )
    args = parser.parse_args()
    run(serve(args.port, args.upstream, args.client))


if __name__ == "__main__":
    main()
