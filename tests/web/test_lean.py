"""The ingest fast path (`relay.web.lean`) in front of aiohttp.

The same raw requests go to a relay served like production (fast path in front) and to
one served by aiohttp alone, built from the same config: every answer must be the same
bytes (the `Date` header aside). Then what only the fast path does: which requests it
takes and which it hands over, pipelining, timeouts, clients that leave, and shutdown.
"""

from __future__ import annotations

import asyncio
import gzip
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from relay.app import create_app
from relay.keys import STATE
from relay.web import lean
from relay.web.lean import LeanServer
from tests.support.corpus import CORPUS
from tests.support.lean import LeanTestServer
from tests.support.relay import KEY, make_config, window_clock
from tests.support.upstream import RecordingUpstream

AUTH = f"Sentry sentry_key={KEY}, sentry_version=7, sentry_client=test/1.0"
ENVELOPE = (CORPUS / "error-payment.envelope").read_bytes()
EVENT = orjson.dumps({"event_id": "0123456789abcdef0123456789abcdef", "message": "hi"})


def request(
    target: str = "/api/42/envelope/",
    body: bytes = ENVELOPE,
    *headers: str,
    method: str = "POST",
    version: str = "1.1",
    auth: bool = True,
    length: bool = True,
) -> bytes:
    lines = [f"{method} {target} HTTP/{version}", "Host: relay"]
    if auth:
        lines.append(f"X-Sentry-Auth: {AUTH}")
    lines.extend(headers)
    if length:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


#: Requests the fast path answers itself.
TAKEN = {
    "envelope": request(),
    "no-slash": request("/api/42/envelope"),
    "gzip": request("/api/42/envelope/", gzip.compress(ENVELOPE), "Content-Encoding: gzip"),
    "query-auth": request(f"/api/42/envelope/?sentry_key={KEY}&sentry_version=7", auth=False),
    "query-auth-encoded": request(f"/api/42/envelope/?sentry_key={KEY}&x=a%20b+c", auth=False),
    "no-auth": request(auth=False),
    "unknown-key": request(
        "/api/42/envelope/", ENVELOPE, "X-Sentry-Auth: Sentry sentry_key=" + "f" * 32, auth=False
    ),
    "bad-auth": request("/api/42/envelope/", ENVELOPE, "X-Sentry-Auth: Basic abc", auth=False),
    "project-zero": request("/api/0/envelope/"),
    "project-leading-zero": request("/api/042/envelope/"),
    "project-unknown": request("/api/999/envelope/"),
    "project-huge": request("/api/99999999999999999999/envelope/"),
    "store": request("/api/42/store/", EVENT, "Content-Type: application/json"),
    "store-no-slash": request("/api/42/store", EVENT),
    "store-envelope": request(
        "/api/42/store/", ENVELOPE, "Content-Type: Application/X-Sentry-Envelope; charset=utf-8"
    ),
    "store-bad-json": request("/api/42/store/", b"{nope"),
    "invalid-envelope": request("/api/42/envelope/", b"not an envelope"),
    "empty-body": request("/api/42/envelope/", b""),
    "no-length": request("/api/42/envelope/", b"", length=False),
    "unknown-encoding": request("/api/42/envelope/", ENVELOPE, "Content-Encoding: snappy"),
    "bad-gzip": request("/api/42/envelope/", b"\x1f\x8b\x08\x00garbage", "Content-Encoding: gzip"),
    "browser": request("/api/42/envelope/", ENVELOPE, "Origin: https://app.example"),
    "browser-trailing-space": request(
        "/api/42/envelope/", ENVELOPE, "Origin: https://app.example \t "
    ),
    "browser-no-auth": request(
        "/api/42/envelope/", ENVELOPE, "Origin: https://app.example", auth=False
    ),
    "http-1.0": request(version="1.0"),
    "http-1.0-keep-alive": request(
        "/api/42/envelope/", ENVELOPE, "Connection: keep-alive", version="1.0"
    ),
    "close": request("/api/42/envelope/", ENVELOPE, "Connection: close"),
    "lower-case-names": request(
        "/api/42/envelope/", ENVELOPE, "content-type: application/x-sentry-envelope"
    ),
    "trailing-space": request("/api/42/envelope/", ENVELOPE, "User-Agent: sdk/1.0  \t"),
    "forwarded-for": request("/api/42/envelope/", ENVELOPE, "X-Forwarded-For: 203.0.113.7"),
}

#: Requests the fast path hands over to aiohttp.
HANDED_OVER = {
    "health": b"GET /healthz HTTP/1.1\r\nHost: relay\r\n\r\n",
    "not-found": request("/api/42/nothing/"),
    "options": request("/api/42/envelope/", b"", "Origin: https://app.example", method="OPTIONS"),
    "security": request("/api/42/security/", b"{}", "Content-Type: application/csp-report"),
    "percent-path": request("/api/42/%65nvelope/"),
    "chunked": b"POST /api/42/envelope/ HTTP/1.1\r\nHost: relay\r\nX-Sentry-Auth: "
    + AUTH.encode()
    + b"\r\nTransfer-Encoding: chunked\r\n\r\n"
    + b"%x\r\n" % len(ENVELOPE)
    + ENVELOPE
    + b"\r\n0\r\n\r\n",
    "large": request("/api/42/envelope/", ENVELOPE + b"\n" * (lean.MAX_BODY + 1 - len(ENVELOPE))),
    "no-host": b"POST /api/42/envelope/ HTTP/1.1\r\nX-Sentry-Auth: "
    + AUTH.encode()
    + b"\r\nContent-Length: 2\r\n\r\n{}",
    "two-hosts": request("/api/42/envelope/", ENVELOPE, "Host: other"),
    "two-user-agents": request("/api/42/envelope/", ENVELOPE, "User-Agent: a", "User-Agent: b"),
    "too-many-headers": request("/api/42/envelope/", ENVELOPE, *(f"X-H{i}: v" for i in range(200))),
    "long-head": request("/api/42/envelope/", ENVELOPE, "X-Long: " + "a" * 9000),
    "nul-in-value": request("/api/42/envelope/", ENVELOPE, "X-Bad: a\x00b"),
    "garbage": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 hello\r\n\r\n",
    "bad-length": b"POST /api/42/envelope/ HTTP/1.1\r\nHost: relay\r\nContent-Length: 1x\r\n\r\n{}",
    "http-0.9-ish": b"POST /api/42/envelope/ HTTP/2.0\r\nHost: relay\r\nContent-Length: 2\r\n\r\n{}",
    "expect": request("/api/42/envelope/", ENVELOPE, "Expect: 100-continue"),
    "upgrade": request("/api/42/envelope/", ENVELOPE, "Connection: Upgrade", "Upgrade: h2c"),
}


async def read_answer(reader: asyncio.StreamReader) -> bytes:
    """One HTTP answer (head and Content-Length body), `Date` header removed."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    length = 0
    kept = []
    for line in lines:
        name = line.partition(b":")[0].lower()
        if name == b"content-length":
            length = int(line.partition(b":")[2])
        if name != b"date":
            kept.append(line)
    return b"\r\n".join(kept) + await reader.readexactly(length)


async def exchange(port: int, data: bytes, answers: int = 1) -> list[bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        return [await asyncio.wait_for(read_answer(reader), 5) for _ in range(answers)]
    finally:
        writer.close()


Pair = tuple[TestClient, TestClient]


@pytest.fixture
def pair_factory(upstream_url: str, aiohttp_client: Any) -> Callable[..., Awaitable[Pair]]:
    """A relay served like production and one served by aiohttp alone, same config."""

    async def make(**overrides: Any) -> Pair:
        config = make_config(upstream_url, **overrides)
        served = await aiohttp_client(LeanTestServer(create_app(config, clock=window_clock())))
        plain = await aiohttp_client(TestServer(create_app(config, clock=window_clock())))
        return served, plain

    return make


def lean_of(client: TestClient) -> LeanServer:
    runner = client.server.runner
    assert runner is not None
    return runner.lean_servers[0]  # type: ignore[attr-defined,no-any-return]


def port_of(client: TestClient) -> int:
    port = client.server.port
    assert port is not None
    return port


@pytest.mark.parametrize("name", [*TAKEN, *HANDED_OVER])
async def test_answers_are_aiohttps_own(
    pair_factory: Callable[..., Awaitable[Pair]], name: str
) -> None:
    served, plain = await pair_factory()
    data = TAKEN.get(name) or HANDED_OVER[name]
    fast = lean_of(served)
    got = await exchange(port_of(served), data)
    expected = await exchange(port_of(plain), data)
    assert got == expected
    if name in TAKEN:
        assert (fast.answered, fast.handed_off) == (1, 0)
    else:
        assert (fast.answered, fast.handed_off) == (0, 1)


async def test_body_over_the_request_limit(pair_factory: Callable[..., Awaitable[Pair]]) -> None:
    served, plain = await pair_factory(limits={"max_request_bytes": 1000})
    data = request("/api/42/envelope/", ENVELOPE + b"\n" * 2000)
    got = await exchange(port_of(served), data)
    assert got == await exchange(port_of(plain), data)
    assert got[0].startswith(b"HTTP/1.1 413 ")
    assert lean_of(served).answered == 1


async def test_draining_answers_503(pair_factory: Callable[..., Awaitable[Pair]]) -> None:
    served, plain = await pair_factory()
    served.app[STATE].draining = plain.app[STATE].draining = True
    got = await exchange(port_of(served), request())
    assert got == await exchange(port_of(plain), request())
    assert got[0].startswith(b"HTTP/1.1 503 ")


async def test_envelopes_reach_the_upstream(relay: TestClient, recorder: RecordingUpstream) -> None:
    # The default policy drops the corpus's noise (a /healthz transaction, a connection reset).
    names = [
        p
        for p in sorted(CORPUS.glob("*.envelope"))
        if "healthz" not in p.name and "reset" not in p.name
    ]
    for path in names:
        [answer] = await exchange(port_of(relay), request(body=path.read_bytes()))
        assert answer.startswith(b"HTTP/1.1 200 OK\r\n"), answer
    await recorder.wait_for(len(names))
    assert lean_of(relay).answered == len(names)


async def test_keep_alive_then_hand_over(relay: TestClient) -> None:
    """Requests on one connection: the fast path answers until the first it does not
    take; from there aiohttp answers everything, fast-path requests included."""
    health = HANDED_OVER["health"]
    answers = await exchange(port_of(relay), request() + request() + health + request(), 4)
    assert [a.split(b"\r\n")[0] for a in answers] == [b"HTTP/1.1 200 OK"] * 4
    assert b'"id"' in answers[0] and b'"id"' in answers[3]
    fast = lean_of(relay)
    assert (fast.answered, fast.handed_off) == (2, 1)


async def test_pipelined_requests_in_order(relay: TestClient) -> None:
    bodies = [(CORPUS / f"{n}.envelope").read_bytes() for n in ("check-in", "log", "error-payment")]
    data = b"".join(request(body=b) for b in bodies)
    answers = await exchange(port_of(relay), data, 3)
    assert all(a.startswith(b"HTTP/1.1 200 OK") for a in answers)
    ids = [orjson.loads(a.rpartition(b"\r\n")[2]).get("id") for a in answers]
    expected = [orjson.loads(b.split(b"\n")[0]).get("event_id") for b in bodies]
    assert ids == expected
    assert lean_of(relay).answered == 3


async def test_garbage_after_a_request_goes_to_aiohttp(
    pair_factory: Callable[..., Awaitable[Pair]],
) -> None:
    """A good request followed, in the same packet, by bytes that do not parse: the
    request is answered, and aiohttp answers the rest as it would on a connection of
    its own. (aiohttp alone, given both at once, answers one 400 and drops the good
    request with it.)"""
    served, plain = await pair_factory()
    for tail in (HANDED_OVER["garbage"], b"POST /api/42/envelope/ HTTP/1.1\r\nX:\x01\r\n\r\n"):
        got = await exchange(port_of(served), request() + tail, 2)
        assert got[0] == (await exchange(port_of(plain), request()))[0]
        assert got[1] == (await exchange(port_of(plain), tail))[0]
        assert got[1].startswith(b"HTTP/1.0 400 ")
    fast = lean_of(served)
    assert (fast.answered, fast.handed_off) == (2, 2)


async def test_a_head_that_never_ends_goes_to_aiohttp(
    pair_factory: Callable[..., Awaitable[Pair]],
) -> None:
    """Bytes of an unfinished head are not buffered past `MAX_HEAD`: aiohttp gets them
    (and refuses the line as too long) without waiting for the end."""
    served, plain = await pair_factory()
    data = b"POST /api/42/envelope/ HTTP/1.1\r\nHost: relay\r\nX-Long: " + b"a" * 20000
    got = await exchange(port_of(served), data)
    assert got == await exchange(port_of(plain), data)
    assert got[0].startswith(b"HTTP/1.0 400 ")
    assert lean_of(served).handed_off == 1


async def test_byte_at_a_time(relay: TestClient) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(relay))
    data = request() + HANDED_OVER["health"]
    for i in range(len(data)):
        writer.write(data[i : i + 1])
        await writer.drain()
    answers = [await asyncio.wait_for(read_answer(reader), 5) for _ in range(2)]
    writer.close()
    assert answers[0].startswith(b"HTTP/1.1 200 OK") and b'"id"' in answers[0]
    assert answers[1].startswith(b"HTTP/1.1 200 OK")
    fast = lean_of(relay)
    assert (fast.answered, fast.handed_off) == (1, 1)


async def test_connection_close_and_http_1_0_close(relay: TestClient) -> None:
    for data in (TAKEN["close"], TAKEN["http-1.0"]):
        reader, writer = await asyncio.open_connection("127.0.0.1", port_of(relay))
        writer.write(data)
        await read_answer(reader)
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the relay
        writer.close()


async def test_slow_body_times_out_with_408(relay_factory: Any) -> None:
    relay = await relay_factory(limits={"read_timeout_s": 0.3})
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(relay))
    start = time.monotonic()
    writer.write(request()[:-10])
    answer = await asyncio.wait_for(read_answer(reader), 5)
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert 0.25 < time.monotonic() - start < 3
    assert b"timed out reading the request body" in answer
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()


async def test_idle_and_slow_head_connections_close(relay_factory: Any) -> None:
    relay = await relay_factory(listen={"keepalive_timeout_s": 0.3})
    port = port_of(relay)
    idle_reader, idle = await asyncio.open_connection("127.0.0.1", port)
    slow_reader, slow = await asyncio.open_connection("127.0.0.1", port)
    slow.write(request()[:30])
    used_reader, used = await asyncio.open_connection("127.0.0.1", port)
    used.write(request())
    await read_answer(used_reader)
    for reader in (idle_reader, slow_reader, used_reader):
        assert await asyncio.wait_for(reader.read(), 5) == b""
    for writer in (idle, slow, used):
        writer.close()
    assert not lean_of(relay).connections


async def test_client_that_leaves_still_gets_its_envelope_forwarded(
    relay: TestClient, recorder: RecordingUpstream
) -> None:
    _, writer = await asyncio.open_connection("127.0.0.1", port_of(relay))
    writer.write(request())
    writer.close()
    await recorder.wait_for(1)


async def test_shutdown_waits_for_requests_in_progress(
    upstream_url: str, recorder: RecordingUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    started = asyncio.Event()
    envelope_endpoint, label = lean.ENDPOINTS[b"envelope"]

    async def slow(request: Any) -> Any:
        response = await envelope_endpoint(request)  # accepted: it must reach the upstream
        started.set()
        await asyncio.sleep(0.3)
        return response

    monkeypatch.setitem(lean.ENDPOINTS, b"envelope", (slow, label))
    client = TestClient(LeanTestServer(create_app(make_config(upstream_url))))
    await client.start_server()
    port = port_of(client)
    busy_reader, busy = await asyncio.open_connection("127.0.0.1", port)
    idle_reader, idle = await asyncio.open_connection("127.0.0.1", port)
    busy.write(request())
    await started.wait()
    closing = asyncio.create_task(client.close())
    assert await asyncio.wait_for(idle_reader.read(), 5) == b""  # idle: closed at once
    answer = await asyncio.wait_for(read_answer(busy_reader), 5)
    assert answer.startswith(b"HTTP/1.1 200 OK")
    assert b"Connection: close" in answer
    await closing
    assert len(recorder.received) == 1  # forwarded before the app's resources closed
    busy.close()
    idle.close()


async def test_a_handler_past_the_shutdown_timeout_is_cancelled(
    upstream_url: str, recorder: RecordingUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A handler still running when the shutdown timeout ends is cancelled before the
    app's resources are torn down: it never queues an envelope that nothing would send."""
    started = asyncio.Event()
    reached: list[int] = []
    envelope_endpoint, label = lean.ENDPOINTS[b"envelope"]

    async def stuck(request: Any) -> Any:
        started.set()
        await asyncio.sleep(1.0)  # e.g. a quota check that has not come back
        reached.append(1)
        return await envelope_endpoint(request)

    monkeypatch.setitem(lean.ENDPOINTS, b"envelope", (stuck, label))
    server = LeanTestServer(create_app(make_config(upstream_url)))
    await server.start_server(shutdown_timeout=0.2)
    client = TestClient(server)
    await client.start_server()
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(client))
    writer.write(request())
    await started.wait()
    await asyncio.wait_for(client.close(), 5)
    assert await asyncio.wait_for(reader.read(), 5) == b""  # unanswered: never accepted
    await asyncio.sleep(1.2)  # past the moment the handler would have gone on
    assert reached == []
    assert recorder.received == []
    writer.close()


#: Requests after which aiohttp keeps the connection open, with answers that depend on
#: nothing but the request (no generated ids).
KEEP_OPEN = [
    *(
        TAKEN[n]
        for n in (
            "envelope",
            "no-slash",
            "gzip",
            "query-auth",
            "no-auth",
            "unknown-key",
            "project-zero",
            "store",
            "store-envelope",
            "invalid-envelope",
            "empty-body",
            "browser",
        )
    ),
    *(
        HANDED_OVER[n]
        for n in ("health", "not-found", "options", "percent-path", "chunked", "large")
    ),
]


async def test_mixed_pipelines_in_random_pieces(
    pair_factory: Callable[..., Awaitable[Pair]],
) -> None:
    """Random sequences of requests, cut into random pieces: the fast path's answers
    are aiohttp's, in order, wherever the pieces end and whichever request hands over."""
    rng = random.Random(20261206)
    served, plain = await pair_factory()
    for _ in range(25):
        stream = b"".join(rng.choice(KEEP_OPEN) for _ in range(rng.randint(1, 6)))
        count = stream.count(b" HTTP/1.1\r\n")
        cuts = sorted(rng.sample(range(1, len(stream)), min(rng.randint(0, 8), len(stream) - 1)))
        reader, writer = await asyncio.open_connection("127.0.0.1", port_of(served))
        for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
            writer.write(stream[start:end])
            await writer.drain()
            await asyncio.sleep(0.001)
        got = [await asyncio.wait_for(read_answer(reader), 5) for _ in range(count)]
        writer.close()
        assert got == await exchange(port_of(plain), stream, count)
    fast = lean_of(served)
    assert fast.answered > 0 and fast.handed_off > 0


async def test_a_client_that_sends_ahead_is_paused_and_resumed(
    relay: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a request is handled, what the client sends after it waits in the buffer;
    past `MAX_BODY` the connection stops reading, and reads again after the answer."""
    envelope_endpoint, label = lean.ENDPOINTS[b"envelope"]

    async def slow(request: Any) -> Any:
        await asyncio.sleep(0.05)
        return await envelope_endpoint(request)

    monkeypatch.setitem(lean.ENDPOINTS, b"envelope", (slow, label))
    big = request(body=ENVELOPE + b"\n" * (lean.MAX_BODY - len(ENVELOPE) - 100))
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(relay))
    try:
        for batch in (6, 2):  # the second is only read if the first's pause was lifted
            writer.write(big * batch)
            for _ in range(batch):
                answer = await asyncio.wait_for(read_answer(reader), 5)
                assert answer.startswith(b"HTTP/1.1 200 OK")
    finally:
        writer.close()
    assert lean_of(relay).answered == 8


async def test_a_request_half_sent_at_shutdown_is_answered_503(upstream_url: str) -> None:
    """A connection that is sending a request when shutdown begins is kept until that
    request is answered: 503 (draining), `Connection: close`; then shutdown goes on."""
    client = TestClient(LeanTestServer(create_app(make_config(upstream_url))))
    await client.start_server()
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(client))
    data = request()
    writer.write(data[:40])
    await asyncio.sleep(0.05)
    closing = asyncio.create_task(client.close())
    await asyncio.sleep(0.1)
    assert not closing.done()  # waiting for the request in progress
    writer.write(data[40:])
    answer = await asyncio.wait_for(read_answer(reader), 5)
    assert answer.startswith(b"HTTP/1.1 503 ")
    assert b"Connection: close" in answer and b"shutting down" in answer
    await asyncio.wait_for(closing, 5)
    writer.close()
