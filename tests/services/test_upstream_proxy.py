"""The upstream client through a real forward proxy: whole-URL requests for `http`,
`CONNECT` tunnels with TLS inside for `https`, `no_proxy`, and proxies that refuse."""

from __future__ import annotations

import asyncio
import base64
import ssl
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trustme
import uvloop
from aiohttp import web
from aiohttp.test_utils import TestServer

from relay.protocol.proxy import Proxy
from relay.services.upstream_http import UpstreamHttp, UpstreamHttpError
from tests.support.http_proxy import HttpProxy

HEADERS = {"Content-Type": "application/x-sentry-envelope", "X-Sentry-Auth": "Sentry sentry_key=k"}


@pytest.fixture
async def proxy() -> AsyncIterator[HttpProxy]:
    server = await HttpProxy().start()
    yield server
    await server.close()


def _recording_app(seen: list[dict[str, Any]]) -> web.Application:
    async def handler(request: web.Request) -> web.Response:
        seen.append(
            {
                "path_qs": request.path_qs,
                "host": request.headers.get("Host"),
                "proxy_auth": request.headers.get("Proxy-Authorization"),
                "body": await request.read(),
            }
        )
        return web.Response(status=200, headers={"X-Sentry-Rate-Limits": "60::org"})

    app = web.Application()
    app.router.add_post("/api/{project}/envelope/", handler)
    return app


class Tls:
    """A CA the tests trust, and a context for a server named `localhost`."""

    def __init__(self) -> None:
        self.ca = trustme.CA()
        self.server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ca.issue_cert("localhost").configure_cert(self.server)

    def client(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        return context


async def test_http_requests_go_to_the_proxy_with_the_whole_url(
    aiohttp_server: Any, proxy: HttpProxy
) -> None:
    seen: list[dict[str, Any]] = []
    server: TestServer = await aiohttp_server(_recording_app(seen))
    url = f"http://127.0.0.1:{server.port}/api/42/envelope/?sentry_key=k"
    http = UpstreamHttp(proxy=Proxy.parse(proxy.url))
    try:
        first = await http.post(url, b"one", HEADERS, 5.0)
        second = await http.post(url, b"two", HEADERS, 5.0)
    finally:
        await http.close()
    assert (first.status, first.rate_limits) == (200, "60::org")
    assert second.status == 200
    assert [(a.method, a.target) for a in proxy.asked] == [("POST", url), ("POST", url)]
    assert proxy.asked[0].headers["host"] == f"127.0.0.1:{server.port}"
    assert "proxy-authorization" not in proxy.asked[0].headers
    assert [s["body"] for s in seen] == [b"one", b"two"]
    assert seen[0]["path_qs"] == "/api/42/envelope/?sentry_key=k"
    assert proxy.connections == 1  # kept alive between the two


async def test_the_proxy_user_and_password_go_as_basic_proxy_authorization(
    aiohttp_server: Any, proxy: HttpProxy
) -> None:
    seen: list[dict[str, Any]] = []
    server: TestServer = await aiohttp_server(_recording_app(seen))
    expected = "Basic " + base64.b64encode(b"relay:p@ss:word").decode()
    proxy.password = expected
    user_url = proxy.url.replace("http://", "http://relay:p%40ss%3Aword@")
    http = UpstreamHttp(proxy=Proxy.parse(user_url))
    try:
        reply = await http.post(
            f"http://127.0.0.1:{server.port}/api/42/envelope/", b"x", HEADERS, 5
        )
    finally:
        await http.close()
    assert reply.status == 200
    assert proxy.asked[0].headers["proxy-authorization"] == expected
    assert seen[0]["proxy_auth"] is None  # the proxy keeps it


async def test_a_refusing_proxy_is_a_failed_request_not_an_upstream_answer(
    aiohttp_server: Any, proxy: HttpProxy
) -> None:
    seen: list[dict[str, Any]] = []
    server: TestServer = await aiohttp_server(_recording_app(seen))
    proxy.password = "Basic c29tZXRoaW5nIGVsc2U="
    http = UpstreamHttp(proxy=Proxy.parse(proxy.url.replace("http://", "http://relay:hunter2@")))
    try:
        with pytest.raises(UpstreamHttpError, match="refused the request: 407") as caught:
            await http.post(f"http://127.0.0.1:{server.port}/api/42/envelope/", b"x", HEADERS, 5)
    finally:
        await http.close()
    assert "hunter2" not in str(caught.value)
    assert seen == []


async def test_https_goes_through_a_connect_tunnel_with_tls_inside(
    aiohttp_server: Any, proxy: HttpProxy
) -> None:
    tls = Tls()
    seen: list[dict[str, Any]] = []
    server: TestServer = await aiohttp_server(_recording_app(seen), ssl=tls.server)
    url = f"https://localhost:{server.port}/api/42/envelope/"
    http = UpstreamHttp(ssl_context=tls.client(), proxy=Proxy.parse(proxy.url))
    try:
        first = await http.post(url, b"secret envelope", HEADERS, 5.0)
        second = await http.post(url, b"again", HEADERS, 5.0)
    finally:
        await http.close()
    assert (first.status, first.rate_limits, second.status) == (200, "60::org", 200)
    # One tunnel, kept alive: the proxy saw a CONNECT and nothing of the requests.
    assert [(a.method, a.target) for a in proxy.asked] == [("CONNECT", f"localhost:{server.port}")]
    assert proxy.connections == 1
    assert [s["body"] for s in seen] == [b"secret envelope", b"again"]
    assert seen[0]["host"] == f"localhost:{server.port}"


async def test_the_upstream_certificate_is_checked_inside_the_tunnel(
    aiohttp_server: Any, proxy: HttpProxy
) -> None:
    tls = Tls()
    server: TestServer = await aiohttp_server(_recording_app([]), ssl=tls.server)
    http = UpstreamHttp(proxy=Proxy.parse(proxy.url))  # the system's CAs only
    try:
        with pytest.raises(
            UpstreamHttpError, match=r"through the proxy.*CERTIFICATE_VERIFY_FAILED"
        ):
            await http.post(f"https://localhost:{server.port}/api/42/envelope/", b"x", HEADERS, 5)
    finally:
        await http.close()


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ({"refuse": 403}, r"refused to connect to localhost:\d+: 403$"),
        ({"password": "Basic eA=="}, r"refused to connect to localhost:\d+: 407 \(check the user"),
        ({"chatty": b"surprise"}, "no tunnel from the proxy: bytes after its answer"),
    ],
)
async def test_a_tunnel_the_proxy_does_not_open_is_an_error(
    aiohttp_server: Any, proxy: HttpProxy, setup: dict[str, Any], message: str
) -> None:
    tls = Tls()
    seen: list[dict[str, Any]] = []
    server: TestServer = await aiohttp_server(_recording_app(seen), ssl=tls.server)
    for name, value in setup.items():
        setattr(proxy, name, value)
    http = UpstreamHttp(ssl_context=tls.client(), proxy=Proxy.parse(proxy.url))
    try:
        with pytest.raises(UpstreamHttpError, match=message):
            await http.post(f"https://localhost:{server.port}/api/42/envelope/", b"x", HEADERS, 5)
        assert http.open_connections == 0
    finally:
        await http.close()
    assert seen == []


async def test_hosts_in_no_proxy_are_reached_directly(
    aiohttp_server: Any, proxy: HttpProxy
) -> None:
    seen: list[dict[str, Any]] = []
    server: TestServer = await aiohttp_server(_recording_app(seen))
    http = UpstreamHttp(proxy=Proxy.parse(proxy.url, "sentry.example.com, 127.0.0.0/8"))
    try:
        reply = await http.post(
            f"http://127.0.0.1:{server.port}/api/42/envelope/", b"x", HEADERS, 5
        )
    finally:
        await http.close()
    assert reply.status == 200
    assert proxy.asked == [] and proxy.connections == 0
    assert len(seen) == 1


async def test_an_unreachable_proxy_names_itself(unused_tcp_port: int) -> None:
    http = UpstreamHttp(proxy=Proxy.parse(f"http://u:hunter2@127.0.0.1:{unused_tcp_port}"))
    try:
        with pytest.raises(
            UpstreamHttpError, match=f"through the proxy 127.0.0.1:{unused_tcp_port}"
        ) as caught:
            await http.post("https://sentry.example.com/api/42/envelope/", b"x", HEADERS, 5)
    finally:
        await http.close()
    assert "hunter2" not in str(caught.value)


async def test_an_https_proxy_is_reached_over_tls(aiohttp_server: Any) -> None:
    """TLS to the proxy; for an `https` upstream, TLS to the upstream inside it."""
    tls = Tls()
    proxy = await HttpProxy().start(ssl=tls.server)
    seen: list[dict[str, Any]] = []
    plain: TestServer = await aiohttp_server(_recording_app(seen))
    secure: TestServer = await aiohttp_server(_recording_app(seen), ssl=tls.server)
    http = UpstreamHttp(ssl_context=tls.client(), proxy=Proxy.parse(proxy.url))
    try:
        via_forward = await http.post(
            f"http://127.0.0.1:{plain.port}/api/42/envelope/", b"plain", HEADERS, 5
        )
        via_tunnel = await http.post(
            f"https://localhost:{secure.port}/api/42/envelope/", b"secure", HEADERS, 5
        )
    finally:
        await http.close()
        await proxy.close()
    assert (via_forward.status, via_tunnel.status) == (200, 200)
    assert [a.method for a in proxy.asked] == ["POST", "CONNECT"]
    assert [s["body"] for s in seen] == [b"plain", b"secure"]


async def test_an_https_proxy_must_present_a_trusted_certificate() -> None:
    tls = Tls()
    proxy = await HttpProxy().start(ssl=tls.server)
    http = UpstreamHttp(proxy=Proxy.parse(proxy.url))  # the system's CAs only
    try:
        with pytest.raises(UpstreamHttpError, match=r"through the proxy.*CERTIFICATE_VERIFY"):
            await http.post("https://sentry.example.com/api/42/envelope/", b"x", HEADERS, 5)
    finally:
        await http.close()
        await proxy.close()
    assert proxy.asked == []


def test_the_tunnel_works_on_uvloop() -> None:
    """The relay runs on uvloop, whose transports and `start_tls` are its own."""

    async def scenario() -> tuple[list[tuple[int, str | None]], list[str], list[bytes]]:
        tls = Tls()
        seen: list[dict[str, Any]] = []
        server = TestServer(_recording_app(seen))
        await server.start_server(ssl=tls.server)
        url = f"https://localhost:{server.port}/api/42/envelope/"
        replies = []
        methods = []
        for proxy_tls in (None, tls.server):  # an http:// proxy, then TLS in TLS
            proxy = await HttpProxy().start(ssl=proxy_tls)
            http = UpstreamHttp(ssl_context=tls.client(), proxy=Proxy.parse(proxy.url))
            try:
                replies += [await http.post(url, body, HEADERS, 5.0) for body in (b"a", b"b")]
            finally:
                await http.close()
                await proxy.close()
            methods.append([a.method for a in proxy.asked])
        await server.close()
        return [(r.status, r.rate_limits) for r in replies], methods, [s["body"] for s in seen]

    replies, methods, bodies = uvloop.run(scenario())
    assert replies == [(200, "60::org")] * 4
    assert methods == [["CONNECT"], ["CONNECT"]]
    assert bodies == [b"a", b"b", b"a", b"b"]


async def test_a_proxy_that_never_answers_connect_times_out() -> None:
    asked: list[bytes] = []
    ended = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        asked.append(await reader.readuntil(b"\r\n\r\n"))
        await reader.read()  # until the client gives up and closes
        ended.set()
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    http = UpstreamHttp(proxy=Proxy.parse(f"http://127.0.0.1:{port}"))
    try:
        with pytest.raises(TimeoutError):
            await http.post("https://sentry.example.com/api/42/envelope/", b"x", HEADERS, 0.2)
        await asyncio.wait_for(ended.wait(), 2)
    finally:
        await http.close()
        server.close()
        await server.wait_closed()
    assert asked == [
        b"CONNECT sentry.example.com:443 HTTP/1.1\r\nHost: sentry.example.com:443\r\n\r\n"
    ]
    assert http.open_connections == 0


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (b"SSH-2.0-OpenSSH_9.6\r\n\r\n", "no tunnel from the proxy: not an HTTP answer"),
        (b"HTTP/1.1 200 Connection est", "no tunnel from the proxy: the connection closed"),
        (b"", "no tunnel from the proxy: the connection closed"),
        (b"HTTP/1.1 200 OK\r\n" + b"X-Pad: " + b"a" * 20_000, "an answer head too long"),
    ],
)
async def test_a_broken_answer_to_connect_is_an_error(answer: bytes, message: str) -> None:
    async def broken(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(broken, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    http = UpstreamHttp(proxy=Proxy.parse(f"http://127.0.0.1:{port}"))
    try:
        with pytest.raises(UpstreamHttpError, match=message):
            await http.post("https://sentry.example.com/api/42/envelope/", b"x", HEADERS, 5)
        assert http.open_connections == 0
    finally:
        await http.close()
        server.close()
        await server.wait_closed()
