"""The forwarder's HTTP/1.1 client against real servers: aiohttp's, and raw sockets that
answer the way odd or failing upstreams do."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import trustme
from aiohttp import web
from aiohttp.test_utils import TestServer

from relay.services.upstream_http import UpstreamHttp, UpstreamHttpError, _parse_url

HEADERS = {"Content-Type": "application/x-sentry-envelope", "X-Sentry-Auth": "Sentry sentry_key=k"}


@pytest.fixture
async def http() -> AsyncIterator[UpstreamHttp]:
    client = UpstreamHttp()
    yield client
    await client.close()


async def _recording_server(aiohttp_server: Any, **answer: Any) -> tuple[str, list[dict[str, Any]]]:
    seen: list[dict[str, Any]] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(
            {
                "method": request.method,
                "path_qs": request.path_qs,
                "headers": dict(request.headers),
                "body": await request.read(),
                "peer": request.transport.get_extra_info("peername") if request.transport else None,
            }
        )
        return web.Response(**answer)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    server: TestServer = await aiohttp_server(app)
    return str(server.make_url("/api/42/envelope/")), seen


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class RawServers:
    """Plain TCP servers whose handlers speak (or fail to speak) HTTP; `connections`
    counts the connections they accepted."""

    def __init__(self) -> None:
        self.connections = 0
        self.servers: list[asyncio.Server] = []
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self, handler: Handler) -> str:
        """A server running `handler` per connection; its envelope URL."""

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            self.writers.append(writer)
            try:
                await handler(reader, writer)
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        self.servers.append(server)
        port = server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/api/42/envelope/"

    async def close(self) -> None:
        for writer in self.writers:
            writer.close()
        for server in self.servers:
            server.close()
            await server.wait_closed()
        await asyncio.sleep(0.01)


@pytest.fixture
async def raw() -> AsyncIterator[RawServers]:
    servers = RawServers()
    yield servers
    await servers.close()


def answering(answer: bytes, *, close: bool = False) -> Handler:
    """A handler that reads one request and writes `answer` (nothing if empty), then
    closes the connection, or holds it open until the client closes it."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        if answer:
            writer.write(answer)
            await writer.drain()
        if not close:
            await reader.read()

    return handler


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head + await reader.readexactly(length)


async def test_posts_the_body_with_its_headers_and_reads_the_answer(
    aiohttp_server: Any, http: UpstreamHttp
) -> None:
    url, seen = await _recording_server(
        aiohttp_server,
        status=429,
        headers={"X-Sentry-Rate-Limits": "60:error:project", "Retry-After": "60"},
        body=b"too many",
    )
    reply = await http.post(url + "?sentry_version=7", b"{}\n" * 1000, HEADERS, 5.0)
    assert (reply.status, reply.rate_limits, reply.retry_after) == (
        429,
        "60:error:project",
        "60",
    )
    [request] = seen
    assert request["method"] == "POST"
    assert request["path_qs"] == "/api/42/envelope/?sentry_version=7"
    assert request["body"] == b"{}\n" * 1000
    assert request["headers"]["Content-Length"] == "3000"
    assert request["headers"]["Host"] == url.split("/")[2]
    assert request["headers"]["X-Sentry-Auth"] == "Sentry sentry_key=k"
    assert request["headers"]["Content-Type"] == "application/x-sentry-envelope"


async def test_keeps_the_connection_alive_between_requests(
    aiohttp_server: Any, http: UpstreamHttp
) -> None:
    url, seen = await _recording_server(aiohttp_server, status=200, body=b'{"id":"x"}')
    for _ in range(5):
        reply = await http.post(url, b"x", HEADERS, 5.0)
        assert (reply.status, reply.rate_limits, reply.retry_after) == (200, None, None)
    assert len({r["peer"] for r in seen}) == 1
    assert http.open_connections == 1


async def test_concurrent_requests_open_connections_and_pool_them(
    aiohttp_server: Any, http: UpstreamHttp
) -> None:
    url, seen = await _recording_server(aiohttp_server, status=200)
    replies = await asyncio.gather(*(http.post(url, b"%d" % i, HEADERS, 5.0) for i in range(8)))
    assert [r.status for r in replies] == [200] * 8
    assert sorted(r["body"] for r in seen) == sorted(b"%d" % i for i in range(8))
    opened = http.open_connections
    assert 1 < opened <= 8
    await asyncio.gather(*(http.post(url, b"again", HEADERS, 5.0) for _ in range(8)))
    assert http.open_connections == opened  # reused, none opened anew


async def test_a_chunked_answer_is_read_to_its_end(aiohttp_server: Any, http: UpstreamHttp) -> None:
    async def chunked(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(status=202)
        response.enable_chunked_encoding()
        await response.prepare(request)
        for _ in range(3):
            await response.write(b"x" * 5000)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/api/42/envelope/", chunked)
    server: TestServer = await aiohttp_server(app)
    url = str(server.make_url("/api/42/envelope/"))
    assert (await http.post(url, b"a", HEADERS, 5.0)).status == 202
    assert (await http.post(url, b"b", HEADERS, 5.0)).status == 202
    assert http.open_connections == 1


async def test_an_answer_ended_by_closing_the_connection_counts(
    raw: RawServers, http: UpstreamHttp
) -> None:
    url = await raw.start(
        answering(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nno length, ends here", close=True)
    )
    assert (await http.post(url, b"x", HEADERS, 5.0)).status == 200
    assert (await http.post(url, b"x", HEADERS, 5.0)).status == 200
    assert http.open_connections == 0


async def test_an_answer_with_connection_close_is_not_followed_by_another_request(
    raw: RawServers, http: UpstreamHttp
) -> None:
    # The server leaves the closing to the client.
    url = await raw.start(
        answering(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    )
    assert (await http.post(url, b"1", HEADERS, 2.0)).status == 200
    assert (await http.post(url, b"2", HEADERS, 2.0)).status == 200
    assert raw.connections == 2


async def test_repeated_rate_limit_headers_are_one_list(
    raw: RawServers, http: UpstreamHttp
) -> None:
    url = await raw.start(
        answering(
            b"HTTP/1.1 429 Too Many Requests\r\nContent-Length: 0\r\n"
            b"X-Sentry-Rate-Limits: 60:error:project\r\nRetry-After: 60\r\n"
            b"X-Sentry-Rate-Limits: 10:transaction:org\r\nRetry-After: 5\r\n\r\n"
        )
    )
    reply = await http.post(url, b"x", HEADERS, 2.0)
    assert (reply.status, reply.rate_limits, reply.retry_after) == (
        429,
        "60:error:project,10:transaction:org",
        "60",
    )


async def test_interim_answers_are_skipped(raw: RawServers, http: UpstreamHttp) -> None:
    url = await raw.start(
        answering(
            b"HTTP/1.1 100 Continue\r\nX-Sentry-Rate-Limits: 1:error\r\n\r\n"
            b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok"
        )
    )
    reply = await http.post(url, b"x", HEADERS, 5.0)
    assert (reply.status, reply.rate_limits) == (201, None)


async def test_a_connection_closed_while_idle_leaves_the_pool(
    raw: RawServers, http: UpstreamHttp
) -> None:
    # Answered with keep-alive, then closed by the server while idle.
    url = await raw.start(answering(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", close=True))
    assert (await http.post(url, b"x", HEADERS, 5.0)).status == 200
    for _ in range(50):
        if http.open_connections == 0:
            break
        await asyncio.sleep(0.01)
    assert http.open_connections == 0
    assert (await http.post(url, b"x", HEADERS, 5.0)).status == 200
    assert raw.connections == 2


async def test_a_reused_connection_closed_before_any_answer_is_retried_once_on_a_new_one(
    raw: RawServers, http: UpstreamHttp
) -> None:
    """The server closed its idle side as the request left: sent again on a new connection."""
    requests_per_connection: list[int] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        requests_per_connection.append(0)
        await _read_request(reader)
        requests_per_connection[-1] += 1
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        try:
            await _read_request(reader)  # the second request on this connection ...
        except asyncio.IncompleteReadError:
            return
        requests_per_connection[-1] += 1
        writer.close()  # ... is dropped without an answer

    url = await raw.start(handler)
    assert (await http.post(url, b"1", HEADERS, 5.0)).status == 200
    assert (await http.post(url, b"2", HEADERS, 5.0)).status == 200
    assert requests_per_connection == [2, 1]


async def test_a_new_connection_closed_before_any_answer_is_an_error(
    raw: RawServers, http: UpstreamHttp
) -> None:
    url = await raw.start(answering(b"", close=True))
    with pytest.raises(UpstreamHttpError, match="closed before the answer"):
        await http.post(url, b"x", HEADERS, 5.0)
    assert raw.connections == 1  # no retry: the connection was new


async def test_the_timeout_bounds_the_request_and_the_connection_is_not_reused(
    raw: RawServers, http: UpstreamHttp
) -> None:
    url = await raw.start(answering(b""))  # never answers
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(TimeoutError):
        await http.post(url, b"x", HEADERS, 0.2)
    assert 0.15 < loop.time() - started < 2.0
    await asyncio.sleep(0.05)
    assert http.open_connections == 0


async def test_an_answer_that_is_not_http_is_an_error(raw: RawServers, http: UpstreamHttp) -> None:
    url = await raw.start(answering(b"SSH-2.0-OpenSSH_9.6\r\n"))
    with pytest.raises(UpstreamHttpError, match="not HTTP"):
        await http.post(url, b"x", HEADERS, 5.0)
    await asyncio.sleep(0.05)
    assert http.open_connections == 0


async def test_data_on_an_idle_connection_closes_it(raw: RawServers, http: UpstreamHttp) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")  # nobody asked
        await writer.drain()
        await reader.read()

    url = await raw.start(handler)
    assert (await http.post(url, b"x", HEADERS, 5.0)).status == 204
    await asyncio.sleep(0.2)
    assert http.open_connections == 0


async def test_a_refused_connection_is_an_error(unused_tcp_port: int, http: UpstreamHttp) -> None:
    with pytest.raises(UpstreamHttpError, match="cannot connect"):
        await http.post(f"http://127.0.0.1:{unused_tcp_port}/api/1/envelope/", b"", HEADERS, 5.0)


async def test_idle_connections_past_keepalive_are_not_reused(aiohttp_server: Any) -> None:
    url, seen = await _recording_server(aiohttp_server, status=200)
    http = UpstreamHttp(keepalive_s=0.0)
    try:
        await http.post(url, b"1", HEADERS, 5.0)
        await http.post(url, b"2", HEADERS, 5.0)
    finally:
        await http.close()
    assert len({r["peer"] for r in seen}) == 2


async def test_a_cancelled_request_closes_its_connection(
    raw: RawServers, http: UpstreamHttp
) -> None:
    url = await raw.start(answering(b""))
    task = asyncio.create_task(http.post(url, b"x", HEADERS, 5.0))
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.05)
    assert http.open_connections == 0


async def test_headers_that_would_split_the_request_are_refused(
    aiohttp_server: Any, http: UpstreamHttp
) -> None:
    url, seen = await _recording_server(aiohttp_server, status=200)
    with pytest.raises(UpstreamHttpError, match="cannot be sent"):
        await http.post(url, b"x", {"Content-Type": "a\r\nX-Injected: 1"}, 5.0)
    with pytest.raises(UpstreamHttpError, match="must start with http"):
        await http.post("ftp://example.com/x", b"x", HEADERS, 5.0)
    assert seen == []


async def test_a_closed_client_refuses_requests(aiohttp_server: Any) -> None:
    url, _ = await _recording_server(aiohttp_server, status=200)
    http = UpstreamHttp()
    await http.post(url, b"x", HEADERS, 5.0)
    await http.close()
    await asyncio.sleep(0.05)
    assert http.open_connections == 0
    with pytest.raises(UpstreamHttpError, match="closed"):
        await http.post(url, b"x", HEADERS, 5.0)


def test_urls_give_the_request_target_and_host_header() -> None:
    assert _parse_url("https://sentry.example.com/api/1/envelope/") == _parse_url(
        "https://sentry.example.com:443/api/1/envelope/"
    )
    parsed = _parse_url("https://sentry.example.com/api/1/envelope/")
    assert (parsed.origin, parsed.target, parsed.host) == (
        ("https", "sentry.example.com", 443),
        "/api/1/envelope/",
        "sentry.example.com",
    )
    parsed = _parse_url("http://[::1]:9000/sub/api/1/envelope/?a=b")
    assert (parsed.origin, parsed.target, parsed.host) == (
        ("http", "::1", 9000),
        "/sub/api/1/envelope/?a=b",
        "[::1]:9000",
    )
    assert _parse_url("HTTP://Example.com").target == "/"


def test_international_hosts_and_paths_are_sent_in_ascii() -> None:
    parsed = _parse_url("https://Пример.рф:8443/трекер/api/1/envelope/?q=ä")
    assert parsed.origin == ("https", "xn--e1afmkfd.xn--p1ai", 8443)
    assert parsed.host == "xn--e1afmkfd.xn--p1ai:8443"
    assert parsed.target == ("/%D1%82%D1%80%D0%B5%D0%BA%D0%B5%D1%80/api/1/envelope/?q=%C3%A4")
    for bad in ("https://a..\u0431/api/1/envelope/", "https://host:99999/", "https://host:x/"):
        with pytest.raises(UpstreamHttpError, match="cannot be one"):
            _parse_url(bad)


async def test_a_path_beyond_ascii_reaches_the_upstream_as_utf8(
    aiohttp_server: Any, http: UpstreamHttp
) -> None:
    url, seen = await _recording_server(aiohttp_server)
    base = url.removesuffix("/api/42/envelope/")
    reply = await http.post(f"{base}/trackér/api/42/envelope/", b"x", HEADERS, 5.0)
    assert reply.status == 200
    assert seen[0]["path_qs"] == "/track%C3%A9r/api/42/envelope/"  # as it went on the wire


async def test_https_verifies_the_server_certificate(aiohttp_server: Any) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("localhost")
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_context)

    async def handler(request: web.Request) -> web.Response:
        return web.Response(status=200, headers={"X-Sentry-Rate-Limits": "1::org"})

    app = web.Application()
    app.router.add_post("/api/42/envelope/", handler)
    server: TestServer = await aiohttp_server(app, ssl=server_context)
    url = f"https://localhost:{server.port}/api/42/envelope/"

    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    trusting = UpstreamHttp(ssl_context=client_context)
    default = UpstreamHttp()
    try:
        reply = await trusting.post(url, b"x", HEADERS, 5.0)
        assert (reply.status, reply.rate_limits) == (200, "1::org")
        with pytest.raises(UpstreamHttpError, match="CERTIFICATE_VERIFY_FAILED"):
            await default.post(url, b"x", HEADERS, 5.0)
    finally:
        await trusting.close()
        await default.close()
