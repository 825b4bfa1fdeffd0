"""The Redis limiter's quota cache when Redis fails otherwise than by timing out: nothing
it accepted is rejected for want of Redis, and no broken key keeps other counters'
allowances from going back."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from redis.asyncio import Redis

from relay.processing.quotas import Scoping
from relay.services.limiter import REDIS_UNAVAILABLE, create_limiter
from relay.services.limiter.redis import RedisLimiter
from tests.services.limiter.conftest import Clock, quotas, redis_config
from tests.support.redis_server import RedisServer

P42 = Scoping(project_id=42, public_key="abc")
P43 = Scoping(project_id=43, public_key="def")
ERRORS = {"id": "n", "categories": ["error"], "scope": "project", "limit": 1000, "window": 60}


@pytest.fixture
def clock() -> Clock:
    return Clock(datetime(2026, 3, 10, 12, 30, 15, tzinfo=UTC).timestamp())


def limiter_for(url: str, clock: Clock, mode: str, **kw: object) -> RedisLimiter:
    cfg = redis_config(url, quota_cache_ratio=0.5, quota_cache_mode=mode, **kw)
    limiter = create_limiter(cfg, clock=clock)
    assert isinstance(limiter, RedisLimiter) and limiter.share is not None
    return limiter


async def values(url: str, prefix: str) -> dict[str, int | str]:
    """The limiter's keys in Redis: integers, or the type of a key that holds none."""
    client = Redis.from_url(url)
    try:
        out: dict[str, int | str] = {}
        async for key in client.scan_iter(match=f"{{{prefix}:*"):
            kind = (await client.type(key)).decode()
            out[key.decode()] = int(await client.get(key) or 0) if kind == "string" else kind
        return out
    finally:
        await client.aclose()


async def break_key(url: str, key: str) -> None:
    """Something else writes a list where a counter is."""
    client = Redis.from_url(url)
    try:
        await client.delete(key)
        await client.rpush(key, "not a counter")
    finally:
        await client.aclose()


@pytest.mark.parametrize("mode", ["reserve", "share"])
async def test_on_error_reject_keeps_what_the_quota_cache_accepted(
    fresh_redis: RedisServer, clock: Clock, mode: str
) -> None:
    """An envelope whose error fits the allowance and whose attachment needs Redis, while
    Redis is down: only the attachment is rejected. The error was counted (or will be)
    like any other the cache accepts; rejecting it too dropped it while it stayed
    charged, and a crash upload's retry was charged again."""
    compiled = quotas(
        ERRORS,
        {"id": "a", "categories": ["attachment"], "scope": "project", "limit": 10**9, "window": 60},
    )
    limiter = limiter_for(fresh_redis.url, clock, mode, on_error="reject")
    try:
        for _ in range(3):  # an allowance on the error counter
            assert not (await limiter.check(P42, [("error", 1)], compiled)).limited
        fresh_redis.stop()
        result = await limiter.check(P42, [("error", 1), ("attachment", 100)], compiled)
        assert result.store_error
        assert set(result.rejected) == {"attachment"}
        assert result.rejected["attachment"].quota_id == REDIS_UNAVAILABLE
        assert set(result.consumed) == {"error"}
    finally:
        await limiter.close()


async def test_a_key_of_the_wrong_type_keeps_no_other_allowance_in_redis(
    redis_server: RedisServer, clock: Clock
) -> None:
    """`reserve`: a sync gives back every allowance in one script call. A key that holds no
    integer made the store skip all of them, and a skipped give-back is never made again:
    each sync left everything the process held counted until the windows ended."""
    compiled = quotas(ERRORS)
    limiter = limiter_for(redis_server.url, clock, "reserve")
    try:
        for _ in range(3):
            for scope in (P42, P43):
                assert not (await limiter.check(scope, [("error", 1)], compiled)).limited
        keys = await values(redis_server.url, limiter.prefix)
        [good] = [k for k in keys if ":q:n:42}" in k]
        [bad] = [k for k in keys if ":q:n:43}" in k]
        assert keys[good] > 3  # 3 accepted, and an allowance held
        await break_key(redis_server.url, bad)
        await limiter.sync()
        assert limiter.redis_errors == 1  # the broken one
        assert await values(redis_server.url, limiter.prefix) == {good: 3, bad: "list"}
    finally:
        await limiter.close()


async def test_a_check_failing_on_a_broken_key_gives_back_its_other_counters_allowances(
    redis_server: RedisServer, clock: Clock
) -> None:
    """`reserve`: a demand that goes to Redis gives back its counters' allowances first.
    One of its counters holding no integer fails the check (`on_error` decides), and must
    not keep the others' allowances counted."""
    compiled = quotas(
        ERRORS, {"id": "k", "categories": ["error"], "scope": "key", "limit": 1000, "window": 60}
    )
    limiter = limiter_for(redis_server.url, clock, "reserve", on_error="reject")
    try:
        for _ in range(3):
            assert not (await limiter.check(P42, [("error", 1)], compiled)).limited
        keys = await values(redis_server.url, limiter.prefix)
        [project] = [k for k in keys if ":q:n:42}" in k]
        [key] = [k for k in keys if ":q:k:abc}" in k]
        await break_key(redis_server.url, key)
        result = await limiter.check(P42, [("error", 100)], compiled)  # more than is held
        assert result.store_error and result.rejected["error"].quota_id == REDIS_UNAVAILABLE
        await limiter.sync()
        assert await values(redis_server.url, limiter.prefix) == {project: 3, key: "list"}
    finally:
        await limiter.close()
