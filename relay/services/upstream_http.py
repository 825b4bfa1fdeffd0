"""The forwarder's HTTP/1.1 client: one POST per envelope over kept-alive connections.

The forwarder needs little of HTTP: send a body to a URL with a few headers, and read
the status and two headers of the answer (`X-Sentry-Rate-Limits`, `Retry-After`). It
does that for every envelope, so this client does only that, on asyncio protocols,
with `httptools` (llhttp) parsing the answers: the request is written in one call,
and the answer is read as it arrives, without a task, a response object or a body
buffer per request. It takes a fifth of the CPU per request of aiohttp's client
(`bench/README.md`), which was the largest part of the relay's own cost per envelope.

- Connections are pooled per origin (scheme, host, port), most recently used first,
  and closed after `keepalive_s` idle (before servers usually close theirs). A
  connection the server closes while idle leaves the pool at once.
- `https` verifies the server's certificate against the system's CAs
  (`ssl.create_default_context()`), with SNI.
- A request on a reused connection that the server closes before any byte of an
  answer is sent once more on a new connection (the server closed an idle connection
  as the request left). Any other failure is the forwarder's to retry.
- Answer bodies are read and discarded; `1xx` answers are skipped; an answer without
  a length that ends with the connection counts once its headers are complete.
- `timeout_s` bounds the whole request, connecting included.
- With a proxy (`relay.protocol.proxy`), `http` requests go to it with the whole URL as
  their target, and `https` connections are tunnels it opens with `CONNECT`, TLS inside
  them end to end (inside TLS to the proxy itself, for an `https://` proxy). A proxy
  that refuses (`407` and the like) fails the request as an `UpstreamHttpError`, never
  as the upstream's answer. Hosts in its `no_proxy` are reached directly.

Errors: `UpstreamHttpError` (a `ConnectionError`) for connections that fail, close,
or carry something that is not HTTP; `TimeoutError` when the time runs out.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, cast

import httptools

from relay.protocol.proxy import MAX_TUNNEL_HEAD, Proxy, tunnel_status
from relay.protocol.url import InvalidUrl, parse_http_url

if TYPE_CHECKING:
    from relay.config import UpstreamConfig

__all__ = ["Reply", "UpstreamHttp", "UpstreamHttpError"]

#: Idle connections are closed after this many seconds (servers often allow 60-75).
KEEPALIVE_S = 15.0
#: Idle connections kept per origin.
MAX_IDLE_PER_ORIGIN = 64


class UpstreamHttpError(ConnectionError):
    """The request failed on the way: no connection, a closed one, or an answer that is
    not HTTP."""


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    #: `X-Sentry-Rate-Limits`, if the answer had it.
    rate_limits: str | None = None
    #: `Retry-After`, if the answer had it.
    retry_after: str | None = None


@dataclass(frozen=True, slots=True)
class _Url:
    origin: tuple[str, str, int]
    #: The request line's target: path and query.
    target: str
    #: The `Host` header's value.
    host: str
    #: The request line's target through a proxy: the whole URL (`http` only).
    absolute: str


@lru_cache(maxsize=1024)
def _parse_url(url: str) -> _Url:
    try:
        parsed = parse_http_url(url)
    except InvalidUrl as exc:
        raise UpstreamHttpError(f"URL {url!r} {exc}") from None
    host = parsed.netloc
    target = parsed.target
    return _Url((parsed.scheme, parsed.host, parsed.port), target, host, f"http://{host}{target}")


def _header_block(headers: dict[str, str]) -> str:
    lines = []
    for name, value in headers.items():
        if "\r" in value or "\n" in value or "\r" in name or "\n" in name or ":" in name:
            raise UpstreamHttpError(f"header {name!r} cannot be sent as it is")
        lines.append(f"{name}: {value}\r\n")
    return "".join(lines)


class _Connection(asyncio.Protocol):
    """One kept-alive connection: at most one request at a time."""

    def __init__(self, client: UpstreamHttp, origin: tuple[str, str, int]) -> None:
        self.client = client
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        #: The request in progress's answer.
        self.waiter: asyncio.Future[Reply] | None = None
        self.answered_bytes = 0
        self.status = 0
        self.informational = False
        self.headers_done = False
        self.rate_limits: str | None = None
        self.retry_after: str | None = None
        self.idle_since = 0.0
        self.closed = False

    # -- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self.waiter is None:
            self.close()  # an answer nobody asked for: the connection is not usable
            return
        self.answered_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(UpstreamHttpError(f"the upstream's answer is not HTTP/1.1: {exc}"))
            self.close()

    def eof_received(self) -> bool | None:
        self.closed = True  # never reused from here on
        return False  # close the transport: `connection_lost` follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.transport = None
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            if self.headers_done and not self.informational:
                # An answer delimited by the end of the connection: its status is known.
                self._answer(keep=False)
            else:
                reason = f": {exc}" if exc else ""
                waiter.set_exception(
                    UpstreamHttpError(f"connection closed before the answer{reason}")
                )
        self.client._forget(self)

    # -- httptools callbacks ----------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        lowered = name.lower()
        if lowered == b"x-sentry-rate-limits":
            # A list: several header lines are one value joined with commas.
            text = value.decode("latin-1")
            self.rate_limits = text if self.rate_limits is None else f"{self.rate_limits},{text}"
        elif lowered == b"retry-after" and self.retry_after is None:
            self.retry_after = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.informational = 100 <= self.status < 200
        self.headers_done = True

    def on_message_complete(self) -> None:
        if self.informational:  # 100 Continue and the like: the answer follows
            self.informational = self.headers_done = False
            self.rate_limits = self.retry_after = None
            return
        self._answer(keep=self.parser.should_keep_alive())

    # -- requests ---------------------------------------------------------------------

    def send(self, data: list[bytes], waiter: asyncio.Future[Reply]) -> None:
        assert self.transport is not None
        self.waiter = waiter
        self.answered_bytes = 0
        self.status = 0
        self.informational = self.headers_done = False
        self.rate_limits = self.retry_after = None
        self.transport.writelines(data)

    def _answer(self, *, keep: bool) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is None:  # a second answer to one request
            self.close()
            return
        reply = Reply(self.status, self.rate_limits, self.retry_after)
        if keep and not self.closed:
            self.client._release(self)
        else:
            self.close()
        if not waiter.done():
            waiter.set_result(reply)

    def _fail(self, exc: BaseException) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class UpstreamHttp:
    """POSTs to upstreams over pooled HTTP/1.1 connections (see the module's docstring).

    Parameters:
        keepalive_s: idle connections older than this are closed instead of reused.
        max_idle_per_origin: idle connections kept per origin.
        ssl_context: for `https`; the system's default verifying context if None.
        proxy: the proxy for the origins it does not bypass; None: every origin directly.
    """

    def __init__(
        self,
        *,
        keepalive_s: float = KEEPALIVE_S,
        max_idle_per_origin: int = MAX_IDLE_PER_ORIGIN,
        ssl_context: ssl.SSLContext | None = None,
        proxy: Proxy | None = None,
    ) -> None:
        self.keepalive_s = keepalive_s
        self.max_idle_per_origin = max_idle_per_origin
        self._ssl = ssl_context
        self.proxy = proxy
        #: Per origin: whether its requests go through `proxy`.
        self._proxied: dict[tuple[str, str, int], bool] = {}
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._open: set[_Connection] = set()
        self._closed = False

    @classmethod
    def from_config(cls, cfg: UpstreamConfig) -> UpstreamHttp:
        """A client with `upstream.proxy`, `no_proxy` and `ca_file` (validated already)."""
        context = None
        if cfg.ca_file is not None:
            context = ssl.create_default_context()
            context.load_verify_locations(cafile=cfg.ca_file)
        proxy = Proxy.parse(cfg.proxy.reveal(), cfg.no_proxy) if cfg.proxy else None
        return cls(ssl_context=context, proxy=proxy)

    async def post(self, url: str, body: bytes, headers: dict[str, str], timeout_s: float) -> Reply:
        """POST `body` to `url` with `headers` (plus Host and Content-Length)."""
        if self._closed:
            raise UpstreamHttpError("the client is closed")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        parsed = _parse_url(url)
        target = parsed.target
        block = _header_block(headers)
        forwarded = False  # sent to the proxy as a whole URL
        if self.proxy is not None and parsed.origin[0] == "http" and self._via(parsed.origin):
            forwarded = True
            target = parsed.absolute
            if self.proxy.authorization:
                block += f"Proxy-Authorization: {self.proxy.authorization}\r\n"
        head = (
            f"POST {target} HTTP/1.1\r\nHost: {parsed.host}\r\n"
            f"Content-Length: {len(body)}\r\n{block}\r\n"
        ).encode("latin-1")
        data = [head, body] if body else [head]
        conn = self._reuse(parsed.origin)
        reply = None
        if conn is not None:
            try:
                reply = await self._exchange(conn, data, deadline)
            except UpstreamHttpError:
                if conn.answered_bytes:
                    raise
                # Closed by the server as the request left: once more, on a new connection.
        if reply is None:
            conn = await self._connect(parsed.origin, deadline)
            reply = await self._exchange(conn, data, deadline)
        if forwarded and reply.status == 407:
            assert self.proxy is not None
            raise UpstreamHttpError(
                f"the proxy {self.proxy.shown} refused the request: 407 (check the user and "
                "password in upstream.proxy)"
            )
        return reply

    async def close(self) -> None:
        """Close every connection; later requests fail."""
        self._closed = True
        for conn in list(self._open):
            conn.close()
        self._idle.clear()

    @property
    def open_connections(self) -> int:
        return len(self._open)

    # -- connections ------------------------------------------------------------------

    def _reuse(self, origin: tuple[str, str, int]) -> _Connection | None:
        idle = self._idle.get(origin)
        if not idle:
            return None
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            transport = conn.transport
            if (
                not conn.closed
                and transport is not None
                and not transport.is_closing()
                and now - conn.idle_since < self.keepalive_s
            ):
                return conn
            conn.close()
        return None

    def _via(self, origin: tuple[str, str, int]) -> bool:
        """Whether requests to `origin` go through the proxy (which is set)."""
        via = self._proxied.get(origin)
        if via is None:
            assert self.proxy is not None
            via = self._proxied[origin] = not self.proxy.bypasses(origin[1])
        return via

    async def _connect(self, origin: tuple[str, str, int], deadline: float) -> _Connection:
        scheme, host, port = origin
        loop = asyncio.get_running_loop()
        context = self._context() if scheme == "https" else None
        proxy = self.proxy if self.proxy is not None and self._via(origin) else None
        try:
            async with asyncio.timeout_at(deadline):
                if proxy is not None and context is not None:
                    protocol = await self._tunnel(proxy, origin, context)
                else:
                    # Straight to the upstream, or to the proxy for an `http` upstream.
                    to_host, to_port, tls = host, port, context
                    if proxy is not None:
                        to_host, to_port = proxy.host, proxy.port
                        tls = self._context() if proxy.tls else None
                    _, protocol = await loop.create_connection(
                        lambda: _Connection(self, origin),
                        to_host,
                        to_port,
                        ssl=tls,
                        server_hostname=to_host if tls is not None else None,
                    )
        except TimeoutError:
            raise  # an OSError too, but the caller's to tell apart
        except OSError as exc:  # refused, unreachable, name not found, TLS (ssl.SSLError)
            if isinstance(exc, UpstreamHttpError):
                raise
            way = f" through the proxy {proxy.shown}" if proxy is not None else ""
            raise UpstreamHttpError(f"cannot connect to {host}:{port}{way}: {exc}") from exc
        if self._closed:
            protocol.close()
            raise UpstreamHttpError("the client is closed")
        self._open.add(protocol)
        return protocol

    def _context(self) -> ssl.SSLContext:
        """The context for `https` upstreams and proxies (the system's CAs by default)."""
        if self._ssl is None:
            self._ssl = ssl.create_default_context()
        return self._ssl

    async def _tunnel(
        self, proxy: Proxy, origin: tuple[str, str, int], context: ssl.SSLContext
    ) -> _Connection:
        """A connection to `origin` through a `CONNECT` tunnel of `proxy`, TLS inside it
        (inside the TLS to the proxy, for an `https://` proxy)."""
        _, host, port = origin
        loop = asyncio.get_running_loop()
        to_proxy = context if proxy.tls else None
        transport, opening = await loop.create_connection(
            _Tunnel,
            proxy.host,
            proxy.port,
            ssl=to_proxy,
            server_hostname=proxy.host if to_proxy is not None else None,
        )
        try:
            transport.write(proxy.connect_request(host, port))
            status = await opening.status
            if not 200 <= status < 300:
                hint = " (check the user and password in upstream.proxy)" if status == 407 else ""
                raise UpstreamHttpError(
                    f"the proxy {proxy.shown} refused to connect to {host}:{port}: {status}{hint}"
                )
            conn = _Connection(self, origin)
            tls = await loop.start_tls(transport, conn, context, server_hostname=host)
        except BaseException:
            opening.status.cancel()  # nobody waits for it any more (no-op when done)
            transport.close()
            raise
        if tls is None:  # the tunnel closed during the handshake
            raise UpstreamHttpError(f"the proxy {proxy.shown} closed the tunnel to {host}:{port}")
        conn.connection_made(tls)
        return conn

    async def _exchange(self, conn: _Connection, data: list[bytes], deadline: float) -> Reply:
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[Reply] = loop.create_future()
        conn.send(data, waiter)
        timer = loop.call_at(deadline, _expire, conn, waiter)
        try:
            return await waiter
        except BaseException:
            conn.close()  # an answer may still be on its way: never reuse it
            raise
        finally:
            timer.cancel()

    def _release(self, conn: _Connection) -> None:
        idle = self._idle.setdefault(conn.origin, [])
        if self._closed or len(idle) >= self.max_idle_per_origin:
            conn.close()
            return
        conn.idle_since = time.monotonic()
        idle.append(conn)

    def _forget(self, conn: _Connection) -> None:
        self._open.discard(conn)
        idle = self._idle.get(conn.origin)
        if idle and conn in idle:
            idle.remove(conn)


class _Tunnel(asyncio.Protocol):
    """A connection to a proxy until its answer to `CONNECT`: `status` resolves to the
    answer's status code once its head is complete."""

    def __init__(self) -> None:
        self.status: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.buf = bytearray()

    def data_received(self, data: bytes) -> None:
        if self.status.done():
            return
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buf) > MAX_TUNNEL_HEAD:
                self._fail("an answer head too long")
            return
        try:
            status = tunnel_status(bytes(self.buf[:end]))
        except ValueError as exc:
            self._fail(str(exc))
            return
        if 200 <= status < 300 and end + 4 != len(self.buf):
            # In an open tunnel the server speaks only after the client's TLS hello:
            # bytes here would be read as TLS. (A refusal's body is ignored.)
            self._fail("bytes after its answer")
            return
        self.status.set_result(status)

    def eof_received(self) -> bool | None:
        self._fail("the connection closed")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(f"the connection closed: {exc}" if exc else "the connection closed")

    def _fail(self, why: str) -> None:
        if not self.status.done():
            self.status.set_exception(UpstreamHttpError(f"no tunnel from the proxy: {why}"))


def _expire(conn: _Connection, waiter: asyncio.Future[Reply]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())
        # Closed now, not when the waiting task runs: an answer arriving in between must
        # not put the connection back in the pool.
        conn.close()
