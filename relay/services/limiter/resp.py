"""A bare Redis connection for the limiter's flushes: RESP2 over TCP, parsed by hiredis.

A flush writes one batch and reads a known number of answers, one batch in flight at a
time. A round trip through redis-py's asyncio connection (a `PING`, one at a time) cost
135-160 us of CPU on the benchmark host, against ~55 us on a bare protocol: its stream
reader and writer, a timer per answer and the layers between them. This connection is
what the flushes need and no more:

- connecting as redis-py does for a `redis://` URL: `AUTH` (with the username when
  there is one) and `SELECT` (when the database is not 0), in one write;
- `send(data, count, timeout, done)`: one write, then the answers parsed as they
  arrive (hiredis, in `data_received`) and handed to `done`, a plain callback: the
  limiter settles its checks from there, with no task between the answer and the
  checks. `call` is the same, awaited. Error answers come back in place as exceptions,
  as redis-py's pipelines return them, with the classes the limiter tells apart
  (`NOSCRIPT`, `LOADING`);
- one timer per call: when it fires the connection is closed and the call fails with
  redis-py's `TimeoutError`. A closed or failed connection is never used again.

TLS, Unix sockets, Sentinel, RESP3 and client names stay with redis-py
(`bare_target` says which clients this connection can serve).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import hiredis
from redis.asyncio import Redis
from redis.asyncio.connection import Connection
from redis.exceptions import (
    AuthenticationError,
    BusyLoadingError,
    MaxClientsReachedError,
    NoScriptError,
    ResponseError,
)
from redis.exceptions import (
    ConnectionError as RedisConnectionError,
)
from redis.exceptions import (
    TimeoutError as RedisTimeoutError,
)

__all__ = ["BareTarget", "Done", "RespConnection", "bare_target"]

#: What ends a call: its answers in order, or the error that ended it.
Done = Callable[[list[Any] | Exception], None]

#: Connection options that change what connecting says: left to redis-py when set. The
#: others (timeouts, retries, decoding, redis-py's own bookkeeping) change nothing here.
_NEEDS_REDIS_PY = ("client_name", "credential_provider", "redis_connect_func")


@dataclass(frozen=True, slots=True)
class BareTarget:
    """Where and how to connect: the parts of a plain `redis://` URL."""

    host: str
    port: int
    db: int
    username: str | None
    password: str | None


def bare_target(client: object) -> BareTarget | None:
    """The target when `client` is a standalone redis-py client on plain TCP speaking
    RESP2 with options this connection honours; otherwise None (redis-py serves it)."""
    if not isinstance(client, Redis):
        return None
    pool = client.connection_pool
    if pool.connection_class is not Connection:  # TLS, Unix socket, Sentinel
        return None
    kwargs = pool.connection_kwargs
    if kwargs.get("protocol") not in (None, 2, "2"):
        return None
    if any(kwargs.get(key) is not None for key in _NEEDS_REDIS_PY):
        return None
    password = kwargs.get("password")
    username = kwargs.get("username")
    return BareTarget(
        host=str(kwargs.get("host", "localhost")),
        port=int(kwargs.get("port", 6379)),
        db=int(kwargs.get("db", 0) or 0),
        username=str(username) if username else None,
        password=str(password) if password is not None else None,
    )


def _bulk(value: str | int) -> bytes:
    data = str(value).encode("utf-8")
    return b"$%d\r\n%s\r\n" % (len(data), data)


def _command(*args: str | int) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(map(_bulk, args))


def _error(reply: ResponseError) -> ResponseError | RedisConnectionError:
    """An error answer as the class the limiter tells apart (as redis-py names them)."""
    message = str(reply)
    code = message.split(" ", 1)[0]
    if code == "NOSCRIPT":
        return NoScriptError(message)
    if code == "LOADING":
        return BusyLoadingError(message)
    if message == "ERR max number of clients reached":
        return MaxClientsReachedError(message)
    return reply


class RespConnection(asyncio.Protocol):
    """One connection, one call at a time (see the module's docstring)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._transport: asyncio.Transport | None = None
        self._reader = hiredis.Reader(replyError=ResponseError)
        self._done: Done | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._want = 0
        self._replies: list[Any] = []
        self.closed = False

    @classmethod
    async def open(cls, target: BareTarget, timeout: float) -> RespConnection:
        """Connect, authenticate and select the database, all within `timeout` seconds."""
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout):
            _, conn = await loop.create_connection(lambda: cls(loop), target.host, target.port)
        handshake = []
        if target.password is not None:
            if target.username:
                handshake.append(_command("AUTH", target.username, target.password))
            else:
                handshake.append(_command("AUTH", target.password))
        if target.db:
            handshake.append(_command("SELECT", target.db))
        if handshake:
            try:
                replies = await conn.call(b"".join(handshake), len(handshake), timeout)
            except BaseException:
                conn.close()
                raise
            failed = next((r for r in replies if isinstance(r, BaseException)), None)
            if failed is not None:
                conn.close()
                if target.password is not None and replies[0] is failed:
                    raise AuthenticationError(f"redis refused the credentials: {failed}")
                raise RedisConnectionError(f"redis refused the database {target.db}: {failed}")
        return conn

    @property
    def busy(self) -> bool:
        """Whether a call is in flight (its answers not all read yet)."""
        return self._done is not None

    def send(self, data: bytes, count: int, timeout: float, done: Done) -> None:
        """Write `data` (`count` commands). `done` is called once, from the event loop,
        never from here: with the `count` answers in order, or with the error that ended
        the call (the connection closed or failed, or `timeout` seconds passed)."""
        transport = self._transport
        if self.closed or transport is None:
            raise RedisConnectionError("the connection to redis is closed")
        if self._done is not None:
            raise RuntimeError("a call is already in flight on this connection")
        try:
            transport.write(data)
        except Exception as exc:  # closed under us, before `connection_lost` came
            self.close()
            raise RedisConnectionError(f"could not write to redis: {exc}") from exc
        self._done, self._want, self._replies = done, count, []
        self._timer = self._loop.call_later(timeout, self._expire, done)

    async def call(self, data: bytes, count: int, timeout: float) -> list[Any]:
        """`send`, awaited: the `count` answers in order, or the error raised."""
        waiter: asyncio.Future[list[Any]] = self._loop.create_future()
        self.send(data, count, timeout, functools.partial(_resolve, waiter))
        try:
            return await waiter
        except BaseException:
            self.close()  # cancelled or failed: answers may still be on their way
            raise

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._transport is not None:
            self._transport.abort()

    # -- asyncio.Protocol ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        if self._done is None:
            self._fail(RedisConnectionError("redis sent data nobody asked for"))
            return
        reader = self._reader
        reader.feed(data)
        replies = self._replies
        try:
            while len(replies) < self._want:
                reply = reader.gets()
                if reply is False:
                    return
                replies.append(_error(reply) if isinstance(reply, ResponseError) else reply)
            if reader.has_data():
                raise hiredis.ProtocolError("more answers than commands")
        except hiredis.ProtocolError as exc:
            self._fail(RedisConnectionError(f"redis protocol error: {exc}"))
            return
        self._finish(replies)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(RedisConnectionError("redis closed the connection"))

    # -- ending a call --------------------------------------------------------------

    def _finish(self, result: list[Any] | Exception) -> None:
        done, self._done = self._done, None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if done is not None:
            done(result)

    def _fail(self, error: Exception) -> None:
        self.close()  # first: the call's `done` sees a closed connection
        self._finish(error)

    def _expire(self, done: Done) -> None:
        if self._done is done:
            self._fail(RedisTimeoutError("timed out waiting for redis"))


def _resolve(waiter: asyncio.Future[list[Any]], result: list[Any] | Exception) -> None:
    if waiter.done():  # the awaiting task was cancelled
        return
    if isinstance(result, Exception):
        waiter.set_exception(result)
    else:
        waiter.set_result(result)
