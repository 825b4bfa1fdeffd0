"""The cap on client connections (`listen.max_connections`, `relay.web.connections`).

At the cap the longest idle connections close to make room for a new one; with none
idle, the new one is answered 503 and closed. Connections aiohttp serves count too.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from relay.config import ConfigError, parse_config
from relay.keys import METRICS
from relay.web.connections import SHED_FRACTION, make_room
from tests.web.test_lean import lean_of, port_of, read_answer, request

Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def _open(relay: TestClient, count: int) -> list[Conn]:
    port = port_of(relay)
    conns = [await asyncio.open_connection("127.0.0.1", port) for _ in range(count)]
    await _settle(relay)
    return conns


async def _settle(relay: TestClient) -> None:
    """Until the relay has seen every connection made so far (accepts are callbacks)."""
    for _ in range(10):
        await asyncio.sleep(0.02)


async def _closed(conn: Conn) -> bool:
    """Whether the relay closed this connection (EOF, or a reset)."""
    try:
        return await asyncio.wait_for(conn[0].read(), 2) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def _metric(relay: TestClient, name: str) -> float:
    text = relay.app[METRICS].render().decode()
    line = next(li for li in text.splitlines() if li.startswith(name + " "))
    return float(line.split()[1])


async def test_at_the_cap_the_longest_idle_connection_closes(relay_factory: Any) -> None:
    relay = await relay_factory(listen={"max_connections": 3})
    port = port_of(relay)
    oldest = await asyncio.open_connection("127.0.0.1", port)
    await _settle(relay)
    newer = await _open(relay, 2)
    # One of the newer ones is used (and idle again after its answer): the oldest idle
    # is still the first one.
    newer[0][1].write(request())
    assert b" 200 " in (await read_answer(newer[0][0]))[:20]
    latest = await asyncio.open_connection("127.0.0.1", port)
    await _settle(relay)

    assert await _closed(oldest)
    latest[1].write(request())
    assert b" 200 " in (await read_answer(latest[0]))[:20]
    for conn in newer:
        conn[1].write(request())
        assert b" 200 " in (await read_answer(conn[0]))[:20]
    assert len(lean_of(relay).connections) == 3
    assert _metric(relay, "relay_connections") == 3
    assert _metric(relay, "relay_connections_idle_closed_total") == 1
    assert _metric(relay, "relay_connections_refused_total") == 0
    for _, writer in [oldest, *newer, latest]:
        writer.close()


async def test_with_every_connection_in_a_request_a_new_one_is_refused(
    relay_factory: Any,
) -> None:
    relay = await relay_factory(listen={"max_connections": 2})
    busy = await _open(relay, 2)
    for _, writer in busy:
        writer.write(request()[:40])  # a request begun: not idle
    await _settle(relay)
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(relay))
    answer = await asyncio.wait_for(read_answer(reader), 5)
    assert answer.startswith(b"HTTP/1.1 503 ")
    assert b"Retry-After: 1" in answer
    assert b"too many connections" in answer
    assert await _closed((reader, writer))
    assert _metric(relay, "relay_connections_refused_total") == 1
    # The requests in progress were not touched: they finish and are answered.
    for conn in busy:
        conn[1].write(request()[40:])
        assert b" 200 " in (await read_answer(conn[0]))[:20]
    for _, w in busy:
        w.close()
    writer.close()


async def test_connections_served_by_aiohttp_count_toward_the_cap(relay_factory: Any) -> None:
    relay = await relay_factory(listen={"max_connections": 2})
    port = port_of(relay)
    handed = await asyncio.open_connection("127.0.0.1", port)
    handed[1].write(b"GET /healthz HTTP/1.1\r\nHost: relay\r\n\r\n")
    assert b" 200 " in (await read_answer(handed[0]))[:20]
    lean = lean_of(relay)
    assert lean.handed_off == 1 and not lean.connections
    idle = await _open(relay, 1)
    assert lean.open_count() == 2
    latest = await _open(relay, 1)
    # The fast path's idle connection made room; aiohttp's stays open.
    assert await _closed(idle[0])
    assert not await _closed(handed)
    latest[0][1].write(request())
    assert b" 200 " in (await read_answer(latest[0][0]))[:20]
    for _, writer in [handed, *idle, *latest]:
        writer.close()


async def test_under_the_cap_nothing_is_closed(relay_factory: Any) -> None:
    relay = await relay_factory(listen={"max_connections": 5})
    conns = await _open(relay, 5)
    for conn in conns:
        conn[1].write(request())
        assert b" 200 " in (await read_answer(conn[0]))[:20]
    assert _metric(relay, "relay_connections") == 5
    assert _metric(relay, "relay_connections_idle_closed_total") == 0
    for _, writer in conns:
        writer.close()


class _Conn:
    def __init__(self, since: float | None) -> None:
        self.idle_since = since


def test_room_is_made_a_sixteenth_of_the_cap_at_a_time_longest_idle_first() -> None:
    conns = [_Conn(float(t)) for t in (5, 1, 9, 3)] + [_Conn(None)] * 40
    cap = 2 * SHED_FRACTION
    assert [c.idle_since for c in make_room(conns, cap)] == [1.0, 3.0]
    assert [c.idle_since for c in make_room(conns, 3)] == [1.0]
    assert make_room([_Conn(None)], 3) == []


def test_the_cap_must_be_positive() -> None:
    assert parse_config({}).listen.max_connections == 10000
    with pytest.raises(ConfigError, match=r"listen\.max_connections"):
        parse_config({"listen": {"max_connections": 0}})
