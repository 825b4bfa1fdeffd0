"""A recording upstream: an aiohttp app that stores what the relay forwards.

It can be told to answer with a sequence of statuses (and headers) first, to
simulate 5xx, 429 or slow upstreams.
"""

from __future__ import annotations

import asyncio
import gzip
import zlib
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from relay.protocol.envelope import Envelope, parse_envelope


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    #: The body as it arrived, before undoing its Content-Encoding.
    raw: bytes = b""

    @property
    def envelope(self) -> Envelope:
        return parse_envelope(self.body)


@dataclass
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


class RecordingUpstream:
    def __init__(self) -> None:
        self.received: list[Received] = []
        self.replies: list[Reply] = []
        self.attempts = 0
        self.arrived = asyncio.Event()
        self.app = web.Application(handler_args={"auto_decompress": False})
        self.app.router.add_route("*", "/{tail:.*}", self._handle)

    def answer(self, *replies: Reply) -> None:
        """Answer the next requests with these replies, then 200 again."""
        self.replies.extend(replies)

    async def _handle(self, request: web.Request) -> web.Response:
        self.attempts += 1
        raw = await request.read()
        if self.replies:
            reply = self.replies.pop(0)
            if reply.delay:
                await asyncio.sleep(reply.delay)
            if reply.status != 200:
                return web.Response(status=reply.status, headers=reply.headers, text="{}")
        encoding = request.headers.get("Content-Encoding", "")
        if encoding == "gzip":
            body = gzip.decompress(raw)
        elif encoding == "deflate":
            body = zlib.decompress(raw)
        else:
            body = raw
        self.received.append(Received(request.path, dict(request.headers), body, raw))
        self.arrived.set()
        return web.json_response({"id": None})

    @property
    def envelopes(self) -> list[Envelope]:
        return [r.envelope for r in self.received if r.path.endswith("/envelope/")]

    def items(self, item_type: str | None = None) -> list[Any]:
        out = []
        for env in self.envelopes:
            for item in env.items:
                if item_type is None or item.type == item_type:
                    out.append(item)
        return out

    async def wait_for(self, count: int, timeout: float = 10.0) -> None:
        """Wait until at least `count` requests were recorded."""
        async with asyncio.timeout(timeout):
            while len(self.received) < count:
                self.arrived.clear()
                await self.arrived.wait()
