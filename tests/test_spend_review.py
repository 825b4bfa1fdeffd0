"""Spend control against the configuration reference: calendar windows, budgets and
spike protection, on both limiter backends (in-process and a real redis-server)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import redis.asyncio as aioredis

from relay.config.quotas import BudgetConfig
from relay.processing.quotas import Scoping, validate_budgets
from relay.protocol.ratelimit_header import format_rate_limits
from tests.services.limiter import conftest as limiter_fixtures
from tests.services.limiter.conftest import Clock, MakeLimiter, quotas, redis_config
from tests.support.redis_server import RedisServer
from tests.support.relay import KEY, WINDOW_START, auth_header

P42 = Scoping(project_id=42, public_key="abc")

# The limiter suite's fixtures (a settable clock; limiters of every backend).
clock = limiter_fixtures.clock
make_limiter = limiter_fixtures.make_limiter


# -- spike protection: a new project's first week ---------------------------------------


async def test_hours_before_any_history_do_not_count_as_quiet_hours(
    make_limiter: MakeLimiter, clock: Clock
) -> None:
    """A project 30 hours old, steady at 100 errors an hour: its baseline is 100, not
    100 x 30/168, so 150 in the next hour is no spike (3 x 100 = 300 allowed)."""
    limiter = make_limiter()
    compiled = quotas(
        spike={"enabled": True, "categories": ["error"], "floor_per_hour": 100, "multiplier": 3}
    )
    clock.set(2026, 3, 2, 0, 0, 0)
    for _hour in range(30):
        assert not (await limiter.check(P42, [("error", 100)], compiled)).limited
        clock.advance(3600)
    results = [await limiter.check(P42, [("error", 50)], compiled) for _ in range(3)]
    assert not any(r.limited for r in results)
    (row,) = [r for r in await limiter.usage([(P42, compiled)]) if r.kind == "spike"]
    assert (row.used, row.limit, row.active) == (150, 300, False)
    # A real spike is still stopped at the threshold.
    results = [await limiter.check(P42, [("error", 50)], compiled) for _ in range(5)]
    assert sum(1 for r in results if not r.limited) == 3
    rejection = next(r for r in results if r.limited).rejected["error"]
    assert rejection.reason == "spike_protection"


async def test_a_new_project_above_the_floor_grows_into_its_threshold(
    make_limiter: MakeLimiter, clock: Clock
) -> None:
    """No history at all: the floor. After that the threshold follows the hours seen."""
    limiter = make_limiter()
    compiled = quotas(
        spike={"enabled": True, "categories": ["error"], "floor_per_hour": 10, "multiplier": 3}
    )
    clock.set(2027, 1, 1)
    accepted = []
    for _hour in range(4):
        results = [await limiter.check(P42, [("error", 10)], compiled) for _ in range(10)]
        accepted.append(sum(10 for r in results if not r.limited))
        clock.advance(3600)
    assert accepted == [10, 30, 60, 100]


# -- budgets: categories priced at 0 -----------------------------------------------------


async def test_a_full_budget_does_not_announce_its_free_categories(
    make_limiter: MakeLimiter,
) -> None:
    limiter = make_limiter()
    compiled = quotas(
        budgets=[
            {
                "id": "spend",
                "amount": 0.002,
                "prices": {"error": 0.001, "span": 0, "transaction": 0.0005},
                "currency": "USD",
            }
        ]
    )
    for _ in range(2):
        assert not (await limiter.check(P42, [("error", 1)], compiled)).limited
    result = await limiter.check(P42, [("error", 1), ("span", 40)], compiled)
    assert list(result.rejected) == ["error"]
    # Full: every category that costs money stops; spans (free) are still accepted.
    assert format_rate_limits(result.rate_limits()).endswith(
        ":error;transaction:organization:spend"
    )
    assert not (await limiter.check(P42, [("span", 5)], compiled)).limited


async def test_a_zero_budget_rejects_only_what_has_a_price(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter()
    compiled = quotas(budgets=[{"id": "none", "amount": 0, "prices": {"error": 1, "span": 0}}])
    result = await limiter.check(P42, [("error", 1), ("span", 3), ("log_item", 2)], compiled)
    assert list(result.rejected) == ["error"]
    assert [(r.categories, r.reason) for r in result.rate_limits()] == [(("error",), "none")]


def test_a_price_too_large_to_count_is_refused() -> None:
    problems = validate_budgets(
        [BudgetConfig(id="b", amount=10, prices={"error": 1e12, "span": 9e6})]
    )
    assert [(p.path, p.message) for p in problems] == [
        ("[0].prices.error", "must be below 9007199")
    ]


async def test_a_huge_dry_run_price_would_break_every_redis_check(
    redis_server: RedisServer, clock: Clock
) -> None:
    """What the validation above prevents: Redis refuses the increment, and the check
    (with every check sent in the same call) is decided without Redis."""
    from relay.services.limiter import create_limiter

    limiter = create_limiter(redis_config(redis_server.url), clock=clock)
    try:
        compiled = quotas(
            budgets=[{"id": "d", "amount": 1, "prices": {"error": 1e12}, "mode": "dry_run"}]
        )
        result = await limiter.check(P42, [("error", 1)], compiled)
        assert result.store_error
    finally:
        await limiter.close()


# -- windows in Redis ----------------------------------------------------------------------


async def test_month_counters_live_in_redis_until_their_window_ends(
    redis_server: RedisServer, clock: Clock
) -> None:
    from relay.services.limiter import create_limiter

    cfg = redis_config(redis_server.url)
    limiter = create_limiter(cfg, clock=clock)
    client = aioredis.from_url(redis_server.url)
    try:
        compiled = quotas(
            {"id": "m", "categories": ["error"], "limit": 2, "window": "month"},
            budgets=[{"id": "b", "amount": 1, "prices": {"error": 0.5}, "window": "day"}],
        )
        clock.set(2028, 2, 1, 0, 0, 0)  # a leap year's February: 29 days
        for _ in range(2):
            assert not (await limiter.check(P42, [("error", 1)], compiled)).limited
        result = await limiter.check(P42, [("error", 1)], compiled)
        month_end = datetime(2028, 3, 1, tzinfo=UTC).timestamp()
        assert result.retry_after == month_end - clock.now == 29 * 86400
        keys = [k.decode() async for k in client.scan_iter(f"{{{cfg.prefix}:*")]
        ttls = {k.split(":")[2]: await client.ttl(k) for k in keys}
        assert ttls["m"] >= 29 * 86400 and ttls["b"] >= 86400
        # The last second of February is still February; March starts afresh.
        clock.set(2028, 2, 29, 23, 59, 59)
        assert (await limiter.check(P42, [("error", 1)], compiled)).limited
        clock.set(2028, 3, 1, 0, 0, 0)
        assert not (await limiter.check(P42, [("error", 1)], compiled)).limited
    finally:
        await client.aclose()
        await limiter.close()


# -- over HTTP: a month-long budget that is spent -------------------------------------------


async def test_a_spent_monthly_budget_answers_429_until_the_month_ends(
    relay_factory: Any,
) -> None:
    relay = await relay_factory(
        policy={
            "budgets": [
                {"id": "monthly", "amount": 0.002, "prices": {"error": 0.001}, "currency": "USD"}
            ]
        },
        admin={"token": "t0ken-for-usage-tests"},
    )
    body = b'{"message": "boom"}'
    for _ in range(2):
        resp = await relay.post("/api/42/store/", data=body, headers=auth_header(KEY))
        assert resp.status == 200
    resp = await relay.post("/api/42/store/", data=body, headers=auth_header(KEY))
    assert resp.status == 429
    # The clock starts one second into January 2027: 31 days less that second remain.
    left = 31 * 86400 - 1
    assert abs(int(resp.headers["Retry-After"]) - left) <= 2
    retry, categories, scope, reason = resp.headers["X-Sentry-Rate-Limits"].split(":")
    assert abs(int(retry) - left) <= 2
    assert (categories, scope, reason) == ("error", "organization", "monthly")
    usage = await relay.get(
        "/api/relay/usage/", headers={"Authorization": "Bearer t0ken-for-usage-tests"}
    )
    rows = orjson.loads(await usage.read())["usage"]
    (row,) = [r for r in rows if r["id"] == "monthly"]
    assert (row["used"], row["limit"], row["currency"], row["active"]) == (
        0.002,
        0.002,
        "USD",
        True,
    )
    assert row["window_end"] == WINDOW_START + 31 * 86400


# -- spike history with the quota cache in `share` mode ------------------------------------


async def test_what_a_share_accepted_stays_in_the_spike_history(
    redis_server: RedisServer, clock: Clock
) -> None:
    """Accepted from the quota cache late in an hour and not synced before the hour
    ends: still part of that hour's count, which the next threshold is made of."""
    from relay.services.limiter import create_limiter

    limiter = create_limiter(
        redis_config(redis_server.url, quota_cache_ratio=0.5, quota_cache_mode="share"),
        clock=clock,
    )
    try:
        compiled = quotas(
            spike={"enabled": True, "floor_per_hour": 1000, "multiplier": 1, "history_hours": 1}
        )
        clock.set(2026, 3, 2, 10, 59, 0)
        for _ in range(10):
            assert not (await limiter.check(P42, [("error", 10)], compiled)).limited
        assert limiter.share is not None and limiter.share.unsynced > 0
        clock.set(2026, 3, 2, 11, 0, 0)
        assert compiled.spike is not None
        low = compiled.spike.__class__(frozenset(), 0, 1.0, 1)
        assert await limiter.spike_threshold(42, "error", low) == 100
    finally:
        await limiter.close()


def test_the_usage_table_shows_small_amounts() -> None:
    from relay.usage import _money

    assert [_money(v) for v in (5, 0.001, 0.300000001, 12.5, 0)] == [
        "5.00",
        "0.001",
        "0.300000001",
        "12.50",
        "0.00",
    ]
