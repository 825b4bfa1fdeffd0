"""The limiter's bare Redis connection (`resp.py`): which targets it serves, connecting
with a password and a database, error answers, and the production loop (uvloop)."""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any

import pytest
import uvloop
from redis.asyncio import Redis
from redis.exceptions import BusyLoadingError, NoScriptError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from relay.processing.quotas import Scoping
from relay.services.limiter import create_limiter
from relay.services.limiter.redis import RedisLimiter, connect
from relay.services.limiter.resp import BareTarget, RespConnection, bare_target
from tests.services.limiter.conftest import Clock, quotas, redis_config
from tests.support.redis_server import RedisServer

P7 = Scoping(project_id=7, public_key="abc")
THREE = quotas(
    {"id": "three", "categories": ["error"], "scope": "project", "limit": 3, "window": 60}
)


def target_of(url: str) -> BareTarget | None:
    return bare_target(connect(redis_config(url))[0])


def test_plain_redis_urls_get_the_bare_connection_and_the_rest_stay_with_redis_py() -> None:
    assert target_of("redis://10.0.0.5:6380/4") == BareTarget("10.0.0.5", 6380, 4, None, None)
    assert target_of("redis://:s3cret@h/0") == BareTarget("h", 6379, 0, None, "s3cret")
    assert target_of("redis://relay:s3cret@h:1/2") == BareTarget("h", 1, 2, "relay", "s3cret")
    assert target_of("rediss://h:6379/0") is None  # TLS
    assert target_of("unix:///run/redis.sock") is None
    assert target_of("redis://h:6379/0?protocol=3") is None  # RESP3
    assert target_of("redis://h:6379/0?client_name=relay") is None
    sentinel = connect(redis_config("redis://h:26379/0", mode="sentinel", sentinel_master="m"))[0]
    assert bare_target(sentinel) is None


async def call(target: BareTarget, *commands: bytes, timeout: float = 2.0) -> list[Any]:
    conn = await RespConnection.open(target, timeout)
    try:
        return await conn.call(b"".join(commands), len(commands), timeout)
    finally:
        conn.close()


def cmd(*args: str) -> bytes:
    parts = [f"${len(a.encode())}\r\n{a}\r\n" for a in args]
    return f"*{len(args)}\r\n{''.join(parts)}".encode()


async def test_password_and_database_are_used_and_wrong_ones_refused() -> None:
    server = RedisServer(extra_args=["--requirepass", "s3cret"]).start()
    try:
        good = BareTarget("127.0.0.1", server.port, 5, None, "s3cret")
        assert await call(good, cmd("SET", "k", "v"), cmd("GET", "k")) == [b"OK", b"v"]
        admin = Redis(port=server.port, password="s3cret", db=5)
        try:
            assert await admin.get("k") == b"v"  # database 5, not 0
        finally:
            await admin.aclose()
        with pytest.raises(RedisConnectionError, match="credentials"):
            await call(BareTarget("127.0.0.1", server.port, 0, None, "wrong"), cmd("PING"))
        with pytest.raises(RedisConnectionError, match="database 99"):
            await call(BareTarget("127.0.0.1", server.port, 99, None, "s3cret"), cmd("PING"))
        # An ACL user: AUTH with the username.
        await call(good, cmd("ACL", "SETUSER", "relay", "on", ">pw", "~*", "+@all"))
        relay = BareTarget("127.0.0.1", server.port, 0, "relay", "pw")
        assert await call(relay, cmd("ACL", "WHOAMI")) == [b"relay"]
    finally:
        server.cleanup()


async def test_error_answers_come_back_in_place(redis_server: RedisServer) -> None:
    target = BareTarget("127.0.0.1", redis_server.port, 0, None, None)
    await call(target, cmd("SET", "resp:text", "x"))
    answers = await call(
        target,
        cmd("EVALSHA", "0" * 40, "0"),
        cmd("INCR", "resp:text"),
        cmd("ECHO", "still in step"),
    )
    assert isinstance(answers[0], NoScriptError)
    assert isinstance(answers[1], ResponseError) and "not an integer" in str(answers[1])
    assert answers[2] == b"still in step"


async def test_a_closed_or_failed_connection_is_not_used_again(
    fresh_redis: RedisServer,
) -> None:
    target = BareTarget("127.0.0.1", fresh_redis.port, 0, None, None)
    conn = await RespConnection.open(target, 2.0)
    assert await conn.call(cmd("PING"), 1, 2.0) == [b"PONG"]
    fresh_redis.stop()
    with pytest.raises(RedisConnectionError):
        await conn.call(cmd("PING"), 1, 2.0)
    assert conn.closed
    with pytest.raises(RedisConnectionError, match="closed"):
        await conn.call(cmd("PING"), 1, 2.0)


def test_the_limiter_on_uvloop_counts_times_out_and_recovers(
    fresh_redis: RedisServer, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The relay runs on uvloop, whose transports differ from asyncio's: the limiter's
    flushes on the bare connection, a Redis that stops answering, and the way back."""
    monkeypatch.setattr("relay.services.limiter.redis.SOCKET_TIMEOUT_S", 0.3)
    proc = fresh_redis.proc
    assert proc is not None

    async def scenario() -> tuple[list[bool], float, bool, list[bool]]:
        limiter = create_limiter(redis_config(fresh_redis.url), clock=clock)
        assert isinstance(limiter, RedisLimiter) and limiter._bare_target is not None
        try:
            before = [
                (await limiter.check(P7, [("error", 1)], THREE)).store_error for _ in range(2)
            ]
            proc.send_signal(signal.SIGSTOP)
            try:
                start = time.monotonic()
                stalled = await limiter.check(P7, [("error", 1)], THREE)
                waited = time.monotonic() - start
            finally:
                proc.send_signal(signal.SIGCONT)
            await asyncio.sleep(1.1)  # past the limiter's pause after a failure
            after = [(await limiter.check(P7, [("error", 1)], THREE)).limited for _ in range(3)]
            return before, waited, stalled.store_error, after
        finally:
            await limiter.close()

    before, waited, stalled_error, after = uvloop.run(scenario())
    assert before == [False, False]
    assert stalled_error and 0.25 <= waited < 1.5
    # 3 allowed: 2 before, maybe 1 by the stalled call once Redis went on; then full.
    assert after in ([False, True, True], [True, True, True])


async def test_no_answer_times_out_and_closes(redis_server: RedisServer) -> None:
    target = BareTarget("127.0.0.1", redis_server.port, 0, None, None)
    conn = await RespConnection.open(target, 2.0)
    start = time.monotonic()
    with pytest.raises(RedisTimeoutError):
        await conn.call(cmd("BLPOP", "resp:never", "0"), 1, 0.2)
    assert 0.15 <= time.monotonic() - start < 1.0
    assert conn.closed


class FakeRedis:
    """A TCP server answering each read with canned bytes: for states a real Redis is
    hard to put in (still loading its data) or never in (answering twice)."""

    def __init__(self, answer: bytes, delay: float = 0.0) -> None:
        self.answer = answer
        self.delay = delay
        self.server: asyncio.Server | None = None
        self.handlers: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> BareTarget:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            self.handlers.add(task)
            try:
                while await reader.read(4096):
                    await asyncio.sleep(self.delay)
                    writer.write(self.answer)
            except ConnectionError:
                pass
            finally:
                writer.close()

        self.server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return BareTarget("127.0.0.1", port, 0, None, None)

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        for task in self.handlers:
            task.cancel()
        await asyncio.gather(*self.handlers, return_exceptions=True)
        await self.server.wait_closed()


async def test_a_redis_still_loading_is_an_outage_not_an_answer() -> None:
    async with FakeRedis(b"-LOADING Redis is loading the dataset in memory\r\n") as target:
        (answer,) = await call(target, cmd("PING"))
    assert isinstance(answer, BusyLoadingError)  # a ConnectionError: the limiter backs off


async def test_more_answers_than_commands_closes_the_connection() -> None:
    async with FakeRedis(b"+PONG\r\n+PONG\r\n") as target:
        conn = await RespConnection.open(target, 2.0)
        with pytest.raises(RedisConnectionError, match="protocol"):
            await conn.call(cmd("PING"), 1, 2.0)
        assert conn.closed  # the next call cannot read the extra answer as its own


async def test_a_cancelled_call_closes_the_connection() -> None:
    async with FakeRedis(b"+PONG\r\n", delay=0.3) as target:
        conn = await RespConnection.open(target, 2.0)
        task = asyncio.create_task(conn.call(cmd("PING"), 1, 2.0))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert conn.closed  # its late answer must not become the next call's
