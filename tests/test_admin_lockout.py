"""Failed admin authentication locks the client address out for a while.

The admin routes share the ingest listener, which may face the internet: without a limit
a token could be guessed at full speed.
"""

from __future__ import annotations

import logging
import math

import pytest
from aiohttp.test_utils import TestClient

from relay.web.lockout import (
    ADMIN_LOCKOUT,
    LOCKOUT,
    MAX_FAILURES,
    WINDOW,
    AdminLockout,
    client_key,
)
from tests.support.relay import RelayFactory

TOKEN = "admin-token-7Qm2xV9c"
GOOD = {"Authorization": f"Bearer {TOKEN}"}
BAD = {"Authorization": "Bearer guess"}
USAGE = "/api/relay/usage/"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def _relay(relay_factory: RelayFactory, **overrides: object) -> tuple[TestClient, FakeClock]:
    relay = await relay_factory(admin={"token": TOKEN}, **overrides)
    clock = FakeClock()
    relay.app[ADMIN_LOCKOUT].clock = clock
    return relay, clock


async def _status(relay: TestClient, headers: dict[str, str], path: str = USAGE) -> int:
    resp = await relay.get(path, headers=headers)
    await resp.read()
    return resp.status


def _lockout_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "failed authentications" in r.getMessage()]


async def test_failures_lock_the_address_out_and_a_right_token_is_refused_too(
    relay_factory: RelayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="relay")
    relay, clock = await _relay(relay_factory)
    for i in range(MAX_FAILURES):
        # A missing header fails as a wrong token does; both paths count.
        headers = {} if i % 2 else BAD
        assert await _status(relay, headers, USAGE if i % 3 else "/api/relay/usage") == 401, i
    assert _lockout_lines(caplog) == [
        f"admin: {MAX_FAILURES} failed authentications from 127.0.0.1 within {int(WINDOW)}s:"
        f" its admin requests are refused for {int(LOCKOUT)}s"
    ]
    resp = await relay.get(USAGE, headers=GOOD)
    assert resp.status == 429
    assert resp.headers["Retry-After"] == str(int(LOCKOUT))
    assert "too many failed admin authentications" in (await resp.json())["detail"]
    assert TOKEN not in await resp.text()
    clock.now += 100.5
    for headers in (GOOD, BAD, {}):
        resp = await relay.get(USAGE, headers=headers)
        assert resp.status == 429
        assert resp.headers["Retry-After"] == str(math.ceil(LOCKOUT - 100.5))
    # One warning for the lockout, none for the requests refused during it.
    assert len(_lockout_lines(caplog)) == 1
    # Ingest is not affected.
    assert (await relay.get("/healthz")).status == 200
    clock.now += LOCKOUT
    assert await _status(relay, GOOD) == 200
    # The count starts afresh after a lockout.
    for _ in range(MAX_FAILURES - 1):
        assert await _status(relay, BAD) == 401
    assert await _status(relay, GOOD) == 200
    assert await _status(relay, BAD) == 401
    assert await _status(relay, GOOD) == 429
    assert len(_lockout_lines(caplog)) == 2


async def test_successful_requests_are_not_counted(relay_factory: RelayFactory) -> None:
    relay, _ = await _relay(relay_factory)
    for _ in range(MAX_FAILURES - 1):
        assert await _status(relay, BAD) == 401
        for _ in range(3):
            assert await _status(relay, GOOD) == 200
    assert relay.app[ADMIN_LOCKOUT].lockouts == 0


async def test_failures_are_counted_within_the_window(relay_factory: RelayFactory) -> None:
    relay, clock = await _relay(relay_factory)
    for _ in range(MAX_FAILURES - 1):
        assert await _status(relay, BAD) == 401
    clock.now += WINDOW
    for _ in range(MAX_FAILURES - 1):
        assert await _status(relay, BAD) == 401
    assert await _status(relay, GOOD) == 200


async def test_lockout_is_per_client_address_behind_trusted_proxies(
    relay_factory: RelayFactory,
) -> None:
    relay, _ = await _relay(relay_factory, listen={"trusted_proxies": ["127.0.0.1"]})
    attacker = {"X-Forwarded-For": "203.0.113.7"}
    admin = {"X-Forwarded-For": "198.51.100.2"}
    for _ in range(MAX_FAILURES):
        assert await _status(relay, {**BAD, **attacker}) == 401
    assert await _status(relay, {**GOOD, **attacker}) == 429
    assert await _status(relay, {**GOOD, **admin}) == 200
    # A hop the client wrote itself, left of the proxy's, changes nothing.
    spoofed = {"X-Forwarded-For": "198.51.100.2, 203.0.113.7"}
    assert await _status(relay, {**GOOD, **spoofed}) == 429
    # IPv6 clients are counted by their /64.
    for i in range(MAX_FAILURES):
        xff = {"X-Forwarded-For": f"2001:db8:1:2::{i + 1:x}"}
        assert await _status(relay, {**BAD, **xff}) == 401
    assert await _status(relay, {**GOOD, "X-Forwarded-For": "2001:db8:1:2:ffff::9"}) == 429
    assert await _status(relay, {**GOOD, "X-Forwarded-For": "2001:db8:1:3::1"}) == 200


async def test_an_untrusted_peer_cannot_spread_its_guesses_with_x_forwarded_for(
    relay_factory: RelayFactory,
) -> None:
    relay, _ = await _relay(relay_factory)
    for i in range(MAX_FAILURES):
        assert await _status(relay, {**BAD, "X-Forwarded-For": f"192.0.2.{i + 1}"}) == 401
    assert await _status(relay, {**GOOD, "X-Forwarded-For": "192.0.2.200"}) == 429


async def test_disabled_admin_endpoints_stay_403(relay_factory: RelayFactory) -> None:
    relay = await relay_factory()
    for _ in range(MAX_FAILURES + 2):
        assert await _status(relay, BAD) == 403
    assert relay.app[ADMIN_LOCKOUT].lockouts == 0


def test_client_keys() -> None:
    assert client_key("192.0.2.1") == "192.0.2.1"
    assert client_key("::ffff:192.0.2.1") == "192.0.2.1"
    assert client_key("2001:db8::1") == client_key("2001:db8::ffff:1") == "2001:db8::/64"
    assert client_key("2001:db8:0:1::1") == "2001:db8:0:1::/64"
    assert client_key(None) == client_key("") == client_key("nonsense") == "unknown"


def test_the_table_is_capped_oldest_out() -> None:
    clock = FakeClock()
    table = AdminLockout(max_failures=3, window=60, lockout=300, max_clients=100, clock=clock)
    for _ in range(3):
        assert table.failed("locked") is (_ == 2)
    for i in range(50_000):
        table.failed(f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}")
        assert len(table) <= 100
    assert len(table) == 100
    # The least recently failed went first (the locked address among them); the newest
    # sprayed addresses are still counted.
    assert table.retry_after("locked") is None
    assert table.failed("10.0.195.79") is False
    assert table.failed("10.0.195.79") is True
    assert table.failed("10.0.0.1") is False  # evicted long ago: counted afresh


def test_entries_that_no_longer_count_are_dropped() -> None:
    clock = FakeClock()
    table = AdminLockout(max_failures=3, window=60, lockout=300, clock=clock)
    for i in range(500):
        table.failed(f"192.0.2.{i % 250}")
    for _ in range(3):
        table.failed("locked")
    assert len(table) == 251
    clock.now += 61
    table.failed("198.51.100.1")
    # The lockout still holds; the rest no longer counts.
    assert len(table) == 2
    assert table.retry_after("locked") == 300 - 61
    clock.now += 300
    table.failed("198.51.100.2")
    assert len(table) == 1
    assert table.retry_after("locked") is None
