"""A forward HTTP proxy on loopback, as an egress proxy in front of the upstream: it
opens `CONNECT` tunnels and forwards requests whose target is a whole `http://` URL,
and records what it was asked."""

from __future__ import annotations

import asyncio
import contextlib
import ssl as ssl_
from dataclasses import dataclass, field
from urllib.parse import urlsplit


@dataclass
class Asked:
    method: str
    #: The request line's target: `host:port` for CONNECT, else the whole URL.
    target: str
    headers: dict[str, str] = field(default_factory=dict)


class HttpProxy:
    """Set before a request:

    - `password`: a `Proxy-Authorization` value other than this is answered 407;
    - `refuse`: a status answered to every CONNECT (e.g. 403);
    - `chatty`: bytes sent right after the `200` to a CONNECT (a broken proxy).
    """

    def __init__(self) -> None:
        self.port = 0
        self.asked: list[Asked] = []
        self.connections = 0
        self.password: str | None = None
        self.refuse: int | None = None
        self.chatty = b""
        self.tls = False
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []

    @property
    def url(self) -> str:
        if self.tls:
            return f"https://localhost:{self.port}"
        return f"http://127.0.0.1:{self.port}"

    async def start(self, ssl: ssl_.SSLContext | None = None) -> HttpProxy:
        """Listen on loopback; with `ssl`, clients speak TLS to the proxy (`https://`, as
        `localhost`)."""
        self.tls = ssl is not None
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=ssl)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in self._writers:
            writer.close()  # ends each connection's reads: its task finishes by itself
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=2)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        me = asyncio.current_task()
        assert me is not None
        self._tasks.add(me)
        self._writers.append(writer)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    return
                line, *lines = head.decode("latin-1").split("\r\n")
                method, target, _ = line.split(" ", 2)
                headers = {}
                for text in lines:
                    if text:
                        name, _, value = text.partition(":")
                        headers[name.strip().lower()] = value.strip()
                self.asked.append(Asked(method, target, headers))
                if (
                    self.password is not None
                    and headers.get("proxy-authorization") != self.password
                ):
                    await _answer(writer, 407, 'Proxy-Authenticate: Basic realm="egress"\r\n')
                    if method == "CONNECT":
                        return
                    await _skip_body(reader, headers)
                    continue
                if method == "CONNECT":
                    await self._tunnel(reader, writer, target)
                    return
                await self._forward(reader, writer, target, head, headers)
        finally:
            writer.close()
            self._tasks.discard(me)

    async def _tunnel(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, target: str
    ) -> None:
        if self.refuse is not None:
            await _answer(writer, self.refuse)
            return
        host, _, port = target.rpartition(":")
        up_r, up_w = await asyncio.open_connection(host.strip("[]"), int(port))
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n" + self.chatty)
        await writer.drain()
        back = asyncio.create_task(_pipe(up_r, writer))
        try:
            await _pipe(reader, up_w)
        finally:
            back.cancel()
            up_w.close()
            with contextlib.suppress(BaseException):
                await back

    async def _forward(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        target: str,
        head: bytes,
        headers: dict[str, str],
    ) -> None:
        """One request with an absolute target, sent on to its origin on a connection of
        its own, and the answer back."""
        url = urlsplit(target)
        assert url.scheme == "http" and url.hostname, target
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        origin_form = (url.path or "/") + (f"?{url.query}" if url.query else "")
        lines = head.decode("latin-1").split("\r\n")
        lines[0] = lines[0].replace(target, origin_form, 1)
        kept = [ln for ln in lines if not ln.lower().startswith("proxy-authorization:")]
        up_r, up_w = await asyncio.open_connection(url.hostname, url.port or 80)
        try:
            up_w.write("\r\n".join(kept).encode("latin-1") + body)
            await up_w.drain()
            answer = await up_r.readuntil(b"\r\n\r\n")
            length = 0
            for text in answer.decode("latin-1").split("\r\n"):
                if text.lower().startswith("content-length:"):
                    length = int(text.split(":", 1)[1])
            writer.write(answer + await up_r.readexactly(length))
            await writer.drain()
        finally:
            up_w.close()


async def _answer(writer: asyncio.StreamWriter, status: int, extra: str = "") -> None:
    """A refusal with a page, as proxies send them."""
    page = b"<html><body>Access denied by the egress policy.</body></html>\n"
    writer.write(
        f"HTTP/1.1 {status} Proxy Says No\r\n{extra}Content-Type: text/html\r\n"
        f"Content-Length: {len(page)}\r\n\r\n".encode()
        + page
    )
    await writer.drain()


async def _skip_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> None:
    await reader.readexactly(int(headers.get("content-length", "0")))


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    with contextlib.suppress(OSError):
        writer.write_eof()
