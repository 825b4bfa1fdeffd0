"""The ingest fast path: a lean HTTP/1.1 front for the requests SDKs send most.

`POST /api/<id>/envelope/` and `POST /api/<id>/store/` (with or without the slash) with a
`Content-Length` body of at most `MAX_BODY` bytes are parsed here with httptools (llhttp)
and answered through the very endpoint functions and edge layer (`relay.web.edge`) that
aiohttp's routes use: the same checks, errors, CORS headers, metrics and body budget.
What this module adds is only the HTTP around them, without aiohttp's per-request layers
(its request and stream objects, router, middleware chain and response writer), which cost
most of the relay's own server time per envelope.

Every other request hands the whole connection over to aiohttp, for good: another path or
method, a chunked, large or `Expect`-ing body, an upgrade, a head aiohttp would refuse
(too long, too many or repeated singleton headers, no `Host` on HTTP/1.1) or one llhttp
cannot parse. The bytes from that request's first byte go to a fresh aiohttp request
handler, which answers it, and everything after it, exactly as it would have alone. So
an unusual request gets aiohttp's answer, not a second opinion.

Connections: one request at a time (a pipelined request waits, buffered, for the answer
before it); an idle connection, or one that has not sent a whole head, is closed after
`keepalive_timeout`; a body that has not arrived `read_timeout_s` after its head is
answered 408 and the connection closed. On shutdown idle connections close at once and
busy ones after their answer; handlers that are still running are awaited (up to the
shutdown timeout) before the app's resources are torn down, so nothing accepted is lost,
and cancelled after it, unanswered, so that nothing is queued once the forwarder stopped.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from email.utils import formatdate
from typing import Any, NamedTuple, cast

import httptools
from aiohttp import web
from aiohttp.helpers import parse_content_type
from aiohttp.http import SERVER_SOFTWARE
from aiohttp.tcp_helpers import tcp_keepalive
from multidict import CIMultiDict, CIMultiDictProxy, MultiDict, MultiDictProxy
from yarl import URL

from relay.keys import CONNECTIONS, REGISTRY
from relay.logs import log_unexpected
from relay.web import connections as cap
from relay.web.edge import answer
from relay.web.errors import RequestTimeout, error_response
from relay.web.ingest import envelope_endpoint, store_endpoint

log = logging.getLogger("relay.web")

#: Largest body the fast path takes (larger ones go to aiohttp's streaming reader). It is
#: also about the most one connection buffers here before it pauses reading.
MAX_BODY = 64 * 1024
#: Largest request line and headers taken here: aiohttp refuses lines over 8,190 bytes.
MAX_HEAD = 8190
#: Most headers taken here (aiohttp refuses more than 128).
MAX_HEADERS = 64
#: Lower-case header names the head check looks at: those aiohttp refuses to see twice in
#: one request (False), and those that send a request to aiohttp (True).
SPECIAL: dict[bytes, bool] = {
    b"content-length": False,
    b"content-location": False,
    b"content-range": False,
    b"content-type": False,
    b"etag": False,
    b"host": False,
    b"max-forwards": False,
    b"server": False,
    b"user-agent": False,
    b"transfer-encoding": True,
    b"expect": True,
}
#: The request targets taken here: digits for the project (its range is the endpoint's
#: to check), printable ASCII for the query, no percent-encoding in the path.
TARGET = re.compile(rb"/api/([0-9]{1,20})/(envelope|store)/?(?:\?([\x21-\x22\x24-\x7e]*))?")

Endpoint = Callable[[Any], Awaitable[web.StreamResponse]]
ENDPOINTS: dict[bytes, tuple[Endpoint, str]] = {
    b"envelope": (envelope_endpoint, "envelope"),
    b"store": (store_endpoint, "store"),
}

_EMPTY_QUERY: MultiDictProxy[str] = MultiDictProxy(MultiDict())


class Head(NamedTuple):
    """A request the fast path takes, as its head describes it."""

    endpoint: Endpoint
    #: The endpoint's name in the request metrics.
    label: str
    project: str
    path: str
    query: str
    headers: CIMultiDictProxy[str]
    version: str
    keep_alive: bool
    #: Bytes of the request line and headers, and of the whole request.
    head_length: int
    total: int


class _Date:
    """The `Date` header's value, formatted once per second."""

    second = 0
    value = ""

    @classmethod
    def now(cls) -> str:
        second = int(time.time())
        if second != cls.second:
            cls.value = formatdate(second, usegmt=True)
            cls.second = second
        return cls.value


class WholeBody:
    """A request body that has arrived whole, as `read_body` reads a request's content."""

    __slots__ = ("_data",)

    def __init__(self, data: bytes) -> None:
        self._data = data

    def is_eof(self) -> bool:
        return True

    def read_nowait(self, n: int = -1) -> bytes:
        data = self._data
        if n < 0 or n >= len(data):
            self._data = b""
            return data
        self._data = data[n:]
        return data[:n]

    async def iter_chunked(self, n: int) -> AsyncIterator[bytes]:
        while self._data:
            yield self.read_nowait(n)


class LeanRequest:
    """What the ingest endpoints read of a request, for one taken by the fast path."""

    __slots__ = (
        "_content_type",
        "_query",
        "_raw_query",
        "app",
        "content",
        "content_length",
        "headers",
        "match_info",
        "path",
        "remote",
    )

    method = "POST"

    def __init__(
        self,
        app: web.Application,
        project_id: str,
        path: str,
        raw_query: str,
        headers: CIMultiDictProxy[str],
        body: bytes,
        remote: str | None,
    ) -> None:
        self.app = app
        self.match_info: Mapping[str, str] = {"project_id": project_id}
        self.path = path
        self._raw_query = raw_query
        self._query: MultiDictProxy[str] | None = None
        self.headers = headers
        self.content_length: int | None = len(body)
        self.content = WholeBody(body)
        self.remote = remote
        self._content_type: str | None = None

    @property
    def query(self) -> MultiDictProxy[str]:
        """The query string's fields, decoded as aiohttp decodes them (yarl)."""
        if self._query is None:
            if not self._raw_query:
                self._query = _EMPTY_QUERY
            else:
                url = URL.build(path=self.path, query_string=self._raw_query, encoded=True)
                self._query = url.query
        return self._query

    @property
    def content_type(self) -> str:
        """The media type of `Content-Type`, lower case, as aiohttp parses it."""
        if self._content_type is None:
            raw = self.headers.get("Content-Type")
            self._content_type = (
                "application/octet-stream" if raw is None else parse_content_type(raw)[0]
            )
        return self._content_type


_SERVER = f"Server: {SERVER_SOFTWARE}\r\n"
#: What follows the headers, by (version, keep-alive): aiohttp's `Connection` header.
_ENDINGS = {
    ("1.1", True): "\r\n",
    ("1.1", False): "Connection: close\r\n\r\n",
    ("1.0", True): "Connection: keep-alive\r\n\r\n",
    ("1.0", False): "\r\n",
}


def serialize(response: web.StreamResponse, version: str, keep_alive: bool) -> bytes:
    """The answer's bytes: status line and headers as aiohttp writes them, then the body."""
    body = response.body if isinstance(response, web.Response) else None
    payload = body if isinstance(body, bytes) else b""
    head = f"HTTP/{version} {response.status} {response.reason}\r\n"
    for name, value in response.headers.items():
        if name.lower() != "content-length":
            head += f"{name}: {value}\r\n"
    head += (
        f"Content-Length: {len(payload)}\r\nDate: {_Date.now()}\r\n{_SERVER}"
        f"{_ENDINGS[version, keep_alive]}"
    )
    return head.encode("utf-8", "surrogateescape") + payload


class LeanServer:
    """The fast path's connections on one listener, and the aiohttp server it hands
    the others to. Call it for a new connection's protocol (`loop.create_server`)."""

    def __init__(
        self,
        app: web.Application,
        fallback: web.Server,
        keepalive_timeout: float,
        max_connections: int | None = None,
    ):
        self.app = app
        self.fallback = fallback
        self.keepalive_timeout = keepalive_timeout
        #: The cap on open connections, aiohttp's included (`relay.web.connections`).
        self.max_connections = max_connections
        self.stats = app.get(CONNECTIONS) or cap.ConnectionStats()
        self.stats.counters.append(self.open_count)
        self.connections: set[LeanConnection] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.closing = False
        #: Requests answered here, and connections handed over to aiohttp.
        self.answered = 0
        self.handed_off = 0

    def __call__(self) -> LeanConnection:
        return LeanConnection(self)

    def open_count(self) -> int:
        """Open connections: on the fast path, and handed over to aiohttp."""
        return len(self.connections) + len(self.fallback.connections)

    def admit(self) -> bool:
        """Whether a new connection (not counted yet) may stay. At the cap the longest
        idle connections close to make room; with none idle, the new one is refused."""
        limit = self.max_connections
        if limit is None or self.open_count() < limit:
            return True
        self.stats.warn_once(limit)
        shed = cap.make_room(self.connections, limit)
        for connection in shed:
            self.connections.discard(connection)
            connection.close_if_idle()
        self.stats.idle_closed += len(shed)
        return bool(shed)

    def pre_shutdown(self) -> None:
        """No new requests: idle connections close now, the others after their answer."""
        self.closing = True
        for connection in list(self.connections):
            connection.close_if_idle()

    async def shutdown(self, timeout: float) -> None:
        """Wait for the requests in progress (up to `timeout`), then close what is left."""
        deadline = time.monotonic() + timeout
        while self.tasks or any(c.in_request for c in self.connections):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            if self.tasks:
                await asyncio.wait(set(self.tasks), timeout=min(remaining, 0.1))
            else:
                await asyncio.sleep(min(remaining, 0.02))
        for connection in list(self.connections):
            connection.abort()
        if self.tasks:
            # Past the timeout a handler is cancelled (its client is gone, unanswered), as
            # aiohttp does with its own: left running, it would queue its envelope after the
            # forwarder's last drain, where nothing sends it.
            tasks = set(self.tasks)
            log.warning("%d requests still in progress at shutdown: cancelled", len(tasks))
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


class LeanConnection(asyncio.Protocol):
    """One client connection on the fast path (until it is handed to aiohttp)."""

    def __init__(self, server: LeanServer) -> None:
        self.server = server
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.remote: str | None = None
        self.parser = httptools.HttpRequestParser(self)
        #: The raw bytes from the first byte of the current request on.
        self.buf = bytearray()
        self.url = b""
        self.raw_headers: list[tuple[bytes, bytes]] = []
        #: Set when the current request is decided (handed over, or complete): the
        #: parser's further callbacks for this feed are ignored.
        self.skip = False
        self.hand_off = False
        self.complete = False
        #: The request being read, once its head is taken.
        self.head: Head | None = None
        #: A request's handler is running; bytes that arrive meanwhile wait in `buf`.
        self.busy = False
        self.paused = False
        #: Since when the connection waits for a request's head (None: in a request).
        self.waiting_since: float | None = None
        #: The idle timer: it fires at most once per `keepalive_timeout` and checks
        #: `waiting_since` then, so answering a request does not reschedule it.
        self.timer: asyncio.TimerHandle | None = None
        self.body_timer: asyncio.TimerHandle | None = None

    # -- connection ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        tcp_keepalive(self.transport)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple | list) and peer:
            self.remote = str(peer[0])
        server = self.server
        if server.closing:
            transport.close()
            return
        if not server.admit():
            self._refuse()
            return
        server.connections.add(self)
        self._idle()

    def _refuse(self) -> None:
        """At the cap with no idle connection to close: 503, and this one closes."""
        assert self.transport is not None
        self.server.stats.refused += 1
        response = error_response(
            503, cap.REFUSED_DETAIL, headers={"Retry-After": str(cap.REFUSED_RETRY_AFTER_S)}
        )
        self.transport.write(serialize(response, "1.1", False))
        self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        self.server.connections.discard(self)
        self.transport = None

    @property
    def in_request(self) -> bool:
        """A request is being read or answered."""
        return self.busy or bool(self.buf)

    @property
    def idle_since(self) -> float | None:
        """Since when the connection waits for a request with nothing of it read (loop
        time); None in a request."""
        return None if self.busy or self.buf else self.waiting_since

    def close_if_idle(self) -> None:
        if self.transport is not None and not self.in_request:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def _idle(self) -> None:
        """Waiting for a request: the connection closes if no whole head comes in time."""
        self.waiting_since = self.loop.time()
        if self.timer is None:
            self.timer = self.loop.call_later(self.server.keepalive_timeout, self._idle_check)

    def _idle_check(self) -> None:
        self.timer = None
        since = self.waiting_since
        if since is None or self.transport is None:
            return  # in a request: the answer arms the timer again
        remaining = since + self.server.keepalive_timeout - self.loop.time()
        if remaining > 0:
            self.timer = self.loop.call_later(remaining, self._idle_check)
        else:
            self.transport.close()

    def _cancel_timers(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.body_timer is not None:
            self.body_timer.cancel()
            self.body_timer = None

    # -- reading ---------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.busy:
            self._hold()
            return
        self._feed(data)

    def _hold(self) -> None:
        """While a request is handled, more than `MAX_BODY` waiting: stop reading."""
        if len(self.buf) > MAX_BODY and not self.paused and self.transport is not None:
            self.transport.pause_reading()
            self.paused = True

    def _feed(self, data: bytes | bytearray) -> None:
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserUpgrade, httptools.HttpParserError):
            # Before the request is complete: aiohttp answers it. After: the next one
            # is parsed again from its first byte (a new parser) and decided then.
            if not self.complete:
                self.hand_off = True
        if self.hand_off:
            self._give_to_aiohttp()
        elif self.complete:
            self._dispatch()
        elif self.head is None and len(self.buf) > MAX_HEAD:
            self._give_to_aiohttp()

    def on_url(self, url: bytes) -> None:
        if not self.skip:
            self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.skip:
            self.raw_headers.append((name, value))

    def on_headers_complete(self) -> None:
        if self.skip:
            return
        head = self._take_head()
        if head is None:
            self.skip = self.hand_off = True
            return
        self.head = head
        self.waiting_since = None
        if len(self.buf) < head.total:
            timeout = self.server.app[REGISTRY].current.config.limits.read_timeout_s
            self.body_timer = self.loop.call_later(timeout, self._body_timeout)

    def on_message_complete(self) -> None:
        if not self.skip:
            self.skip = self.complete = True

    def _take_head(self) -> Head | None:
        """The request's head if the fast path takes the request, else None."""
        parser = self.parser
        if parser.get_method() != b"POST" or parser.should_upgrade():
            return None
        match = TARGET.fullmatch(self.url)
        if match is None:
            return None
        version = parser.get_http_version()
        if version not in ("1.1", "1.0"):
            return None
        raw = self.raw_headers
        if len(raw) > MAX_HEADERS:
            return None
        pairs = []
        seen: set[bytes] = set()
        length = 0
        for name, value in raw:
            lower = name.lower()
            to_aiohttp = SPECIAL.get(lower)
            if to_aiohttp is not None:
                if to_aiohttp or lower in seen:
                    return None
                seen.add(lower)
                if lower == b"content-length":
                    value = value.strip(b" \t")
                    if not value.isdigit() or len(value) > 6:
                        return None
                    length = int(value)
            value = value.rstrip(b" \t")  # as aiohttp: llhttp strips the leading OWS only
            pairs.append(
                (name.decode("utf-8", "surrogateescape"), value.decode("utf-8", "surrogateescape"))
            )
        if length > MAX_BODY or (version == "1.1" and b"host" not in seen):
            return None
        # llhttp (strict, as httptools runs it) refuses bare LF and CR, and NUL in values:
        # the head's first empty line is its end.
        buf = self.buf
        end = buf.find(b"\r\n\r\n")
        if end < 0 or not buf.startswith(b"POST /"):
            return None
        head_length = end + 4
        if head_length > MAX_HEAD:
            return None
        project, kind, query = match.groups()
        endpoint, label = ENDPOINTS[kind]
        path = self.url.partition(b"?")[0].decode("ascii")
        return Head(
            endpoint,
            label,
            project.decode("ascii"),
            path,
            (query or b"").decode("ascii"),
            CIMultiDictProxy(CIMultiDict(pairs)),
            version,
            parser.should_keep_alive(),
            head_length,
            head_length + length,
        )

    def _give_to_aiohttp(self) -> None:
        """From the current request on, aiohttp serves this connection."""
        transport = self.transport
        self._cancel_timers()
        self.server.connections.discard(self)
        if transport is None or transport.is_closing():
            return
        data = bytes(self.buf)
        self.buf = bytearray()
        self.server.handed_off += 1
        handler = self.server.fallback()
        self.transport = None
        transport.set_protocol(handler)
        if self.paused:
            transport.resume_reading()
            self.paused = False
        handler.connection_made(transport)
        if data:
            handler.data_received(data)

    def _body_timeout(self) -> None:
        """The body did not arrive in time: 408, and the connection closes after it."""
        self.body_timer = None
        head = self.head
        if head is None or self.busy or self.transport is None:
            return
        self.skip = True
        self.busy = True
        request = self._request(head, b"")
        # Answered before its body was read: what follows on this connection cannot be
        # told apart from that body, so the connection closes after the answer.
        task = self.loop.create_task(
            self._answer(request, _timed_out, head.label, head.version, False)
        )
        self._track(task)

    # -- answering -------------------------------------------------------------------------

    def _request(self, head: Head, body: bytes) -> LeanRequest:
        return LeanRequest(
            self.server.app, head.project, head.path, head.query, head.headers, body, self.remote
        )

    def _dispatch(self) -> None:
        """The current request has arrived whole: its handler runs in a task."""
        head = self.head
        assert head is not None
        if self.body_timer is not None:
            self.body_timer.cancel()
            self.body_timer = None
        total = head.total
        buf = self.buf
        if len(buf) < total:  # llhttp and this count disagree (never seen): aiohttp reads it
            self._give_to_aiohttp()
            return
        body = bytes(buf[head.head_length : total])
        del buf[:total]
        if buf:  # a pipelined request: the parser read into it, so a new one reads it again
            self.parser = httptools.HttpRequestParser(self)
        self.busy = True
        self._hold()
        request = self._request(head, body)
        task = self.loop.create_task(
            self._answer(request, head.endpoint, head.label, head.version, head.keep_alive)
        )
        self._track(task)

    def _track(self, task: asyncio.Task[None]) -> None:
        tasks = self.server.tasks
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def _answer(
        self,
        request: LeanRequest,
        endpoint: Endpoint,
        label: str,
        version: str,
        keep_alive: bool,
    ) -> None:
        try:
            response = await answer(request, endpoint, label)
        except Exception:
            log_unexpected(log, "unhandled error in %s %s", request.method, request.path)
            response = error_response(500, "internal error")
        self._respond(response, version, keep_alive)

    def _respond(self, response: web.StreamResponse, version: str, keep_alive: bool) -> None:
        transport = self.transport
        if transport is None:
            return  # the client left; what it sent was handled all the same
        keep_alive = keep_alive and not self.server.closing
        transport.write(serialize(response, version, keep_alive))
        self.server.answered += 1
        if not keep_alive:
            transport.close()
            return
        self._reset()
        if self.paused:
            transport.resume_reading()
            self.paused = False
        self._idle()
        if self.buf:
            self._feed(self.buf)

    def _reset(self) -> None:
        self.busy = False
        self.skip = False
        self.complete = False
        self.hand_off = False
        self.head = None
        self.url = b""
        self.raw_headers = []


async def _timed_out(request: LeanRequest) -> web.StreamResponse:
    raise RequestTimeout("timed out reading the request body")
