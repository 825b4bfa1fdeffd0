"""The quota cache in `share` mode (`redis.quota_cache_mode`): shares of a counter's room
accepted without asking Redis, and added to Redis later. The shared limiter tests also run with
it (`redis-cached` in conftest); these are what only it does."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from redis.asyncio import Redis

from relay.config import ConfigError, parse_config
from relay.processing.quotas import CategoryDemand, Counter, Scoping
from relay.services.limiter import LimiterUnavailable, LimitResult, create_limiter
from relay.services.limiter import share as share_module
from relay.services.limiter.redis import RedisLimiter
from relay.services.limiter.share import QuotaShare
from tests.services.limiter.conftest import Clock, quotas, redis_config
from tests.support.redis_server import RedisServer

P42 = Scoping(project_id=42, public_key="abc")
LIMIT_100 = quotas(
    {"id": "n", "categories": ["error"], "scope": "project", "limit": 100, "window": 60}
)


def accepted(results: list[LimitResult]) -> int:
    return sum(1 for r in results if not r.is_rejected("error"))


def cached(url: str, clock: Clock, **kw: Any) -> RedisLimiter:
    kw.setdefault("quota_cache_ratio", 0.5)
    kw.setdefault("quota_cache_mode", "share")
    limiter = create_limiter(redis_config(url, **kw), clock=clock)
    assert isinstance(limiter, RedisLimiter) and limiter.share is not None
    return limiter


async def stored(url: str, prefix: str) -> int:
    """The sum of the limiter's counters in Redis."""
    client = Redis.from_url(url)
    try:
        total = 0
        async for key in client.scan_iter(match=f"{{{prefix}:*"):
            total += int(await client.get(key) or 0)
        return total
    finally:
        await client.aclose()


def redis_down(limiter: RedisLimiter, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Every Redis call of `limiter` fails from now on; returns the real one, to put back."""
    real = limiter._consume

    async def down(demands: list[CategoryDemand]) -> Any:
        raise LimiterUnavailable("redis failed: test")

    monkeypatch.setattr(limiter, "_consume", down)
    return real


# -- the share itself -----------------------------------------------------------------------


def counter(limit: int = 100, increment: int = 1, window_end: int = 1000) -> Counter:
    return Counter("q:n:42", "60", limit, increment, window_end, 60, True, None)


def demand(*counters: Counter) -> CategoryDemand:
    return CategoryDemand("error", 1, list(counters))


def test_a_share_is_a_ratio_of_the_room_the_store_reported() -> None:
    share = QuotaShare(0.5, 1.0, "p", mode="share")
    assert share.take(demand(counter()), 0) is None  # nothing known yet
    share.learn(demand(counter()), True, [0])  # the store counted it: 1 of 100
    values = [share.take(demand(counter()), 0) for _ in range(50)]
    assert values[:49] == [[n] for n in range(1, 50)]  # floor(99 * 0.5) = 49 taken here
    assert values[49] is None
    [push] = share.drain([demand(counter())], 0)
    assert [c.increment for c in push.counters] == [49] and not push.counters[0].gating
    assert share.unsynced == 0
    share.restore([push])
    assert share.unsynced == 49


def test_no_share_while_the_store_is_asked_near_the_limit_or_after_a_rejection() -> None:
    share = QuotaShare(0.5, 0.5, "p", mode="share")
    share.learn(demand(counter()), True, [10])
    assert share.take(demand(counter()), 0) == [11]
    share.drain([demand(counter())], 0)  # a check on its way to the store
    assert share.take(demand(counter()), 0) is None
    share.learn(demand(counter()), True, [60])  # past half the limit: no share
    assert share.take(demand(counter()), 0) is None
    share.learn(demand(counter()), True, [10])
    assert share.take(demand(counter()), 0) is not None
    share.learn(demand(counter(increment=99)), False, [40])  # rejected: no share
    assert share.take(demand(counter()), 0) is None


def test_a_share_holds_for_its_limit_and_window_only() -> None:
    share = QuotaShare(0.5, 1.0, "p", mode="share")
    share.learn(demand(counter()), True, [0])
    assert share.take(demand(counter(limit=200)), 0) is None  # the quota changed
    assert share.take(demand(counter()), 1000) is None  # the window ended
    assert share.take(demand(counter()), 999) == [1]
    assert share.drain_all(1000) == []  # an ended window is not written again
    assert len(share) == 0


def test_a_refund_takes_from_what_is_unsynced_first() -> None:
    share = QuotaShare(0.5, 1.0, "p", mode="share")
    share.learn(demand(counter()), True, [0])
    share.take(demand(counter()), 0)
    share.take(demand(counter()), 0)
    key = counter().key("p")
    assert share.give_back(key, 3) == 1
    assert share.unsynced == 0
    assert share.give_back("other", 2) == 2


# -- against Redis --------------------------------------------------------------------------


async def test_one_process_never_passes_the_limit(redis_server: RedisServer, clock: Clock) -> None:
    limiter = cached(redis_server.url, clock)
    try:
        results = [await limiter.check(P42, [("error", 1)], LIMIT_100) for _ in range(150)]
        assert accepted(results) == 100
        assert results[100].rejected["error"].quota_id == "n"
        assert limiter.share is not None and limiter.share.hits > 50
        await limiter.sync()
        assert await stored(redis_server.url, limiter.prefix) == 100
    finally:
        await limiter.close()


async def test_concurrent_checks_of_one_process_stay_exact(
    redis_server: RedisServer, clock: Clock
) -> None:
    limiter = cached(redis_server.url, clock, quota_cache_ratio=0.9)
    try:
        batches = []
        for _ in range(10):
            batches += await asyncio.gather(
                *(limiter.check(P42, [("error", n % 3 + 1)], LIMIT_100) for n in range(20))
            )
        total = sum(i % 20 % 3 + 1 for i, r in enumerate(batches) if not r.is_rejected("error"))
        assert 95 <= total <= 100
    finally:
        await limiter.close()


async def test_processes_together_pass_the_limit_by_their_shares_at_most(
    redis_server: RedisServer, clock: Clock
) -> None:
    cfg = redis_config(redis_server.url, quota_cache_ratio=0.1, quota_cache_mode="share")
    limiters = [create_limiter(cfg, clock=clock) for _ in range(3)]
    try:
        results = [await limiters[i % 3].check(P42, [("error", 1)], LIMIT_100) for i in range(300)]
        assert 100 <= accepted(results) <= 100 + 3 * 10
        for limiter in limiters:
            await limiter.sync()  # type: ignore[attr-defined]
        assert await stored(redis_server.url, cfg.prefix) == accepted(results)
    finally:
        for limiter in limiters:
            await limiter.close()


async def test_what_is_taken_here_reaches_redis_within_the_sync_interval(
    redis_server: RedisServer, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("relay.services.limiter.redis.SYNC_S", 0.05)
    limiter = cached(redis_server.url, clock)
    try:
        for _ in range(10):
            await limiter.check(P42, [("error", 1)], LIMIT_100)
        assert await stored(redis_server.url, limiter.prefix) == 1  # the first asked Redis
        await asyncio.sleep(0.3)
        assert await stored(redis_server.url, limiter.prefix) == 10
    finally:
        await limiter.close()


async def test_close_and_usage_add_what_is_unsynced(
    redis_server: RedisServer, clock: Clock
) -> None:
    limiter = cached(redis_server.url, clock)
    for _ in range(7):
        await limiter.check(P42, [("error", 1)], LIMIT_100)
    [row] = await limiter.usage([(P42, LIMIT_100)])
    assert row.used == 7
    for _ in range(5):
        await limiter.check(P42, [("error", 1)], LIMIT_100)
    await limiter.close()
    assert await stored(redis_server.url, limiter.prefix) == 12


async def test_a_failed_sync_keeps_the_amounts_for_the_next(
    redis_server: RedisServer, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    limiter = cached(redis_server.url, clock)
    try:
        for _ in range(6):
            await limiter.check(P42, [("error", 1)], LIMIT_100)
        real = redis_down(limiter, monkeypatch)
        await limiter.sync()
        assert limiter.share is not None and limiter.share.unsynced == 5
        assert limiter.redis_errors == 1
        monkeypatch.setattr(limiter, "_consume", real)
        await limiter.sync()
        assert await stored(redis_server.url, limiter.prefix) == 6
    finally:
        await limiter.close()


async def test_budgets_always_ask_redis(redis_server: RedisServer, clock: Clock) -> None:
    compiled = quotas(
        budgets=[
            {
                "id": "spend",
                "scope": "project",
                "amount": 1,
                "currency": "USD",
                "window": "1d",
                "prices": {"error": 0.1},
            }
        ]
    )
    limiter = cached(redis_server.url, clock, quota_cache_ratio=0.9)
    try:
        results = [await limiter.check(P42, [("error", 1)], compiled) for _ in range(15)]
        assert accepted(results) == 10
        assert limiter.share is not None and limiter.share.hits == 0
    finally:
        await limiter.close()


def test_config_bounds() -> None:
    for field, value in (
        ("quota_cache_ratio", 1),
        ("quota_cache_ratio", -0.1),
        ("quota_cache_max", 0),
    ):
        with pytest.raises(ConfigError, match=f"redis.{field}"):
            parse_config({"redis": {"url": "redis://127.0.0.1:6379/0", field: value}}, env={})
    parse_config({"redis": {"url": "redis://127.0.0.1:6379/0", "quota_cache_ratio": 0.1}}, env={})


def test_sync_interval_is_about_a_second() -> None:
    assert 0.1 <= share_module.SYNC_S <= 5


def test_what_is_unsynced_stays_on_top_of_the_stores_answer() -> None:
    share = QuotaShare(0.5, 1.0, "p", mode="share")
    share.learn(demand(counter()), True, [0])
    share.take(demand(counter()), 0)
    share.take(demand(counter()), 0)
    share.learn(demand(counter()), True, [10])  # the store: 10 before, 11 after; 2 unsynced
    assert share.take(demand(counter()), 0) == [13]


async def test_a_check_that_fails_keeps_what_it_was_to_add(
    redis_server: RedisServer, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    limiter = cached(redis_server.url, clock)
    try:
        for _ in range(50):  # one asks Redis, 49 are its share
            await limiter.check(P42, [("error", 1)], LIMIT_100)
        real = redis_down(limiter, monkeypatch)
        result = await limiter.check(P42, [("error", 1)], LIMIT_100)  # asks Redis, fails
        assert result.store_error and not result.rejected  # on_error: allow
        monkeypatch.setattr(limiter, "_consume", real)
        await limiter.sync()
        assert await stored(redis_server.url, limiter.prefix) == 50
    finally:
        await limiter.close()
