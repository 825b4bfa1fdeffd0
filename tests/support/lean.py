"""A test server that serves like production: the fast path in front, aiohttp behind."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from aiohttp.test_utils import TestServer
from yarl import URL

from relay.keys import CONFIG
from relay.web.site import LeanSite, RelayRunner


class LeanTestServer(TestServer):
    """`aiohttp.test_utils.TestServer` with `LeanSite` in place of aiohttp's site."""

    async def _make_runner(self, **kwargs: Any) -> RelayRunner:
        return RelayRunner(self.app, **kwargs)

    async def start_server(
        self, loop: asyncio.AbstractEventLoop | None = None, **kwargs: Any
    ) -> None:
        if self.runner:
            return
        self._loop = loop
        keepalive = float(self.app[CONFIG].listen.keepalive_timeout_s)
        runner = await self._make_runner(
            handler_cancellation=True, keepalive_timeout=keepalive, **kwargs
        )
        self.runner = runner
        await runner.setup()
        sock = self.socket_factory(self.host, self.port or 0, socket.AF_INET)
        self.host, self.port = sock.getsockname()[:2]
        site = LeanSite(
            runner,
            sock=sock,
            keepalive_timeout=keepalive,
            max_connections=self.app[CONFIG].listen.max_connections,
        )
        await site.start()
        self.scheme = "http"
        self._root = URL(f"http://{self.host}:{self.port}")
