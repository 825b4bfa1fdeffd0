"""A loopback TCP proxy in front of a real server, which a test can make misbehave."""

from __future__ import annotations

import asyncio
import contextlib


class TcpProxy:
    """Forwards each connection to `port`. A test sets, before a request:

    - `drop`: how many of the next client writes close their connection instead of
      being forwarded (a connection that breaks just as something is sent on it);
    - `hold`: an event; client writes wait for it before being forwarded.
    """

    def __init__(self, port: int) -> None:
        self.target_port = port
        self.port = 0
        self.connections = 0
        self.drop = 0
        self.hold: asyncio.Event | None = None
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.connections += 1
        me = asyncio.current_task()
        assert me is not None
        self._tasks.add(me)
        server_r, server_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        back = asyncio.create_task(self._pipe(server_r, client_w))
        self._tasks.add(back)
        try:
            while data := await client_r.read(65536):
                if self.drop > 0:
                    self.drop -= 1
                    break
                if self.hold is not None:
                    await self.hold.wait()
                server_w.write(data)
                await server_w.drain()
        finally:
            back.cancel()
            for writer in (client_w, server_w):
                writer.close()
            with contextlib.suppress(BaseException):
                await back
            self._tasks.discard(me)

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
