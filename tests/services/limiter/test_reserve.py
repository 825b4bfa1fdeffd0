"""The quota cache in `reserve` mode (the default): a process accepts by itself only what
Redis counted for it first, so no number of processes passes a limit. The shared limiter
tests also run with it (`redis-reserved` in conftest); these are what only it does."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from redis.asyncio import Redis

from relay.config import ConfigError, parse_config
from relay.processing.quotas import Counter
from relay.services.limiter import LimitResult, create_limiter
from relay.services.limiter.redis import RedisLimiter
from relay.services.limiter.share import RESERVE_DEMANDS, RESERVE_MIN, QuotaShare
from tests.services.limiter.conftest import Clock, quotas, redis_config
from tests.services.limiter.test_share import (
    LIMIT_100,
    P42,
    accepted,
    demand,
    redis_down,
    stored,
)
from tests.services.limiter.test_share import counter as share_counter
from tests.support.redis_server import RedisServer
from tests.support.tcp_proxy import TcpProxy

LIMIT_1000 = quotas(
    {"id": "n", "categories": ["error"], "scope": "project", "limit": 1000, "window": 60}
)


def reserving(url: str, clock: Clock, **kw: Any) -> RedisLimiter:
    kw.setdefault("quota_cache_ratio", 0.5)
    limiter = create_limiter(redis_config(url, **kw), clock=clock)
    assert isinstance(limiter, RedisLimiter) and limiter.share is not None
    assert limiter.share.reserve
    return limiter


# -- the allowances themselves ----------------------------------------------------------


def counter(limit: int = 1000, increment: int = 1, window_end: int = 1000) -> Counter:
    """`test_share`'s counter, of a larger limit (reservations start at `RESERVE_MIN`)."""
    return share_counter(limit, increment, window_end)


def test_the_default_mode_is_reserve() -> None:
    config = parse_config({"redis": {"url": "redis://127.0.0.1:6379/0"}}, env={})
    assert config.redis.quota_cache_mode == "reserve" and config.redis.quota_cache_ratio == 0.1
    assert QuotaShare(0.1, 1.0, "p").reserve


def test_an_allowance_is_what_the_store_granted_and_nothing_before() -> None:
    share = QuotaShare(0.5, 1.0, "p")
    assert share.reservations([demand(counter())], 0) == []  # nothing known yet
    share.learn(demand(counter()), True, [0])  # the store counted it: 1 of 1000
    assert share.take(demand(counter()), 0) is None  # nothing is accepted unreserved
    [asked] = share.reservations([demand(counter())], 0)
    [reserved] = asked.counters
    assert reserved.increment == RESERVE_MIN and reserved.gating
    assert share.reservations([demand(counter())], 0) == []  # one on its way at a time
    # The store counted the next demand (1 -> 2), then granted the reservation (2 -> 18).
    share.learn(demand(counter()), True, [1])
    assert share.granted([asked], [(True, [2])])
    values = [share.take(demand(counter()), 0) for _ in range(RESERVE_MIN + 1)]
    assert values[:RESERVE_MIN] == [[n] for n in range(2, 2 + RESERVE_MIN)]
    assert values[RESERVE_MIN] is None
    assert share.unsynced == 0 and share.reserved == 0


def test_a_refused_reservation_gives_nothing() -> None:
    share = QuotaShare(0.5, 1.0, "p")
    share.learn(demand(counter()), True, [0])
    [asked] = share.reservations([demand(counter())], 0)
    assert not share.granted([asked], [(False, [990])])
    assert share.take(demand(counter()), 0) is None
    assert share.reservations([demand(counter())], 0) != []  # no longer pending


def test_reservations_are_capped_by_the_ratio_of_the_room_and_stop_near_the_limit() -> None:
    share = QuotaShare(0.5, 0.9, "p")
    share.learn(demand(counter(limit=20)), True, [0])
    [asked] = share.reservations([demand(counter(limit=20))], 0)
    assert asked.counters[0].increment == 9  # floor((20 - 1 - 1) * 0.5) < RESERVE_MIN
    share.abandon([asked])
    share.learn(demand(counter(limit=20)), True, [16])  # 17 of 20: past 0.9 x 20
    assert share.reservations([demand(counter(limit=20))], 0) == []


def test_what_is_left_goes_back_before_the_next_demand_and_with_the_sync() -> None:
    share = QuotaShare(0.5, 1.0, "p")
    share.learn(demand(counter()), True, [0])
    [asked] = share.reservations([demand(counter())], 0)
    share.granted([asked], [(True, [1])])
    share.take(demand(counter()), 0)
    big = counter(increment=100)
    assert share.take(demand(big), 0) is None  # more than is left: to the store
    [give] = share.drain([demand(big)], 0)
    assert [c.increment for c in give.counters] == [-(RESERVE_MIN - 1)]
    assert not give.counters[0].gating
    assert share.drain_all(0) == []  # nothing left to give back
    share.learn(demand(big), True, [2])
    [asked] = share.reservations([demand(counter())], 0)
    share.granted([asked], [(True, [102])])
    [give] = share.drain_all(0)
    assert give.counters[0].increment == -asked.counters[0].increment
    assert share.reserved == 0


def test_reservations_grow_while_they_run_out_and_follow_the_traffic_after_a_sync() -> None:
    share = QuotaShare(0.5, 1.0, "p")
    share.learn(demand(counter(limit=10**9)), True, [0])
    sizes = []
    for _ in range(4):
        [asked] = share.reservations([demand(counter(limit=10**9))], 0)
        sizes.append(asked.counters[0].increment)
        share.granted([asked], [(True, [0])])
        while share.take(demand(counter(limit=10**9)), 0) is not None:
            pass
    assert sizes == [RESERVE_MIN, 2 * RESERVE_MIN, 4 * RESERVE_MIN, 8 * RESERVE_MIN]
    share.drain_all(0)  # 15 x RESERVE_MIN taken since the last sync
    [asked] = share.reservations([demand(counter(limit=10**9))], 0)
    assert asked.counters[0].increment == 2 * 15 * RESERVE_MIN
    share.drain_all(0)  # nothing taken: back to the least
    share.abandon([asked])
    [asked] = share.reservations([demand(counter(limit=10**9))], 0)
    assert asked.counters[0].increment == RESERVE_MIN


def test_a_reservation_holds_a_few_of_the_demand_that_asks_for_it() -> None:
    """Attachment bytes: a reservation of `RESERVE_MIN` bytes would never fit one."""
    share = QuotaShare(0.5, 1.0, "p")
    attachment = counter(limit=10**9, increment=50_000)
    share.learn(demand(attachment), True, [0])
    [asked] = share.reservations([demand(attachment)], 0)
    assert asked.counters[0].increment == RESERVE_DEMANDS * 50_000
    share.granted([asked], [(True, [100_000])])
    assert share.take(demand(attachment), 0) == [100_000]


def test_a_refund_goes_back_to_the_allowance() -> None:
    share = QuotaShare(0.5, 1.0, "p")
    share.learn(demand(counter()), True, [0])
    assert share.give_back(counter().key("p"), 1) == 0  # still counted for this process
    assert share.take(demand(counter()), 0) == [0]
    assert share.give_back("{p:q:other}:60", 3) == 3  # not held here: the store's


def test_an_ended_windows_allowance_goes_back_with_the_next_demand() -> None:
    share = QuotaShare(0.5, 1.0, "p")
    old = Counter("q:n:42", "0", 1000, 1, 60, 60, True, None)
    new = Counter("q:n:42", "60", 1000, 1, 120, 60, True, None)
    share.learn(demand(old), True, [0])
    [asked] = share.reservations([demand(old)], 0)
    share.granted([asked], [(True, [1])])
    assert share.ended(30) == []
    [give] = share.drain([demand(new)], 61)
    assert [(c.suffix, c.increment) for c in give.counters] == [("0", -RESERVE_MIN)]
    assert len(share) == 0


def test_budgets_get_no_allowance() -> None:
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
    [quota] = compiled.quotas
    budget = Counter("b:spend:42", "0", 10**9, 1, 1000, 60, True, quota)
    share = QuotaShare(0.5, 1.0, "p")
    share.learn(demand(budget), True, [0])
    assert share.reservations([demand(budget)], 0) == [] and len(share) == 0


def test_config_accepts_the_two_modes_only() -> None:
    for mode in ("reserve", "share"):
        config = parse_config(
            {"redis": {"url": "redis://127.0.0.1:6379/0", "quota_cache_mode": mode}}, env={}
        )
        assert config.redis.quota_cache_mode == mode
    with pytest.raises(ConfigError, match=r"redis\.quota_cache_mode"):
        parse_config(
            {"redis": {"url": "redis://127.0.0.1:6379/0", "quota_cache_mode": "lease"}}, env={}
        )


# -- against Redis ----------------------------------------------------------------------


async def test_processes_together_never_pass_the_limit(
    redis_server: RedisServer, clock: Clock
) -> None:
    """Three processes, the checks spread over them: never more than the limit, and once
    their allowances go back, all of it."""
    cfg = redis_config(redis_server.url, quota_cache_ratio=0.5)
    limiters = [create_limiter(cfg, clock=clock) for _ in range(3)]
    try:
        results: list[LimitResult] = []
        for i in range(300):
            results.append(await limiters[i % 3].check(P42, [("error", 1)], LIMIT_100))
            assert accepted(results) <= 100
        assert sum(r.is_rejected("error") for r in results) > 0
        assert any(lim.share is not None and lim.share.hits for lim in limiters)
        for limiter in limiters:
            await limiter.sync()  # type: ignore[attr-defined]
        assert await stored(redis_server.url, cfg.prefix) == accepted(results)
        clock.advance(2)  # past the limiters' memory of full counters
        for _ in range(30):  # one process alone takes what is left, exactly
            results.append(await limiters[0].check(P42, [("error", 1)], LIMIT_100))
        assert accepted(results) == 100
    finally:
        for limiter in limiters:
            await limiter.close()


async def test_concurrent_processes_never_pass_the_limit(
    redis_server: RedisServer, clock: Clock
) -> None:
    cfg = redis_config(redis_server.url, quota_cache_ratio=0.9)
    limiters = [create_limiter(cfg, clock=clock) for _ in range(4)]
    try:
        results = await asyncio.gather(
            *(limiters[i % 4].check(P42, [("error", i % 3 + 1)], LIMIT_1000) for i in range(2000))
        )
        total = sum(i % 3 + 1 for i, r in enumerate(results) if not r.is_rejected("error"))
        assert total <= 1000
        for limiter in limiters:
            await limiter.sync()  # type: ignore[attr-defined]
        assert await stored(redis_server.url, cfg.prefix) == total
        clock.advance(2)
        for _ in range(1000 - total + 5):
            if not (await limiters[0].check(P42, [("error", 1)], LIMIT_1000)).limited:
                total += 1
        assert total == 1000
    finally:
        for limiter in limiters:
            await limiter.close()


async def test_redis_sees_the_reservation_and_usage_does_not(
    redis_server: RedisServer, clock: Clock
) -> None:
    limiter = reserving(redis_server.url, clock)
    try:
        for _ in range(5):
            await limiter.check(P42, [("error", 1)], LIMIT_1000)
        assert limiter.share is not None and limiter.share.hits == 3
        assert await stored(redis_server.url, limiter.prefix) == 2 + RESERVE_MIN
        [row] = await limiter.usage([(P42, LIMIT_1000)])
        assert row.used == 5
        assert await stored(redis_server.url, limiter.prefix) == 5
    finally:
        await limiter.close()


async def test_allowances_go_back_within_the_sync_interval_and_on_close(
    redis_server: RedisServer, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("relay.services.limiter.redis.SYNC_S", 0.05)
    limiter = reserving(redis_server.url, clock)
    try:
        for _ in range(4):
            await limiter.check(P42, [("error", 1)], LIMIT_1000)
        assert await stored(redis_server.url, limiter.prefix) == 2 + RESERVE_MIN
        await asyncio.sleep(0.3)
        assert await stored(redis_server.url, limiter.prefix) == 4
        for _ in range(3):
            await limiter.check(P42, [("error", 1)], LIMIT_1000)
    finally:
        await limiter.close()
    assert await stored(redis_server.url, limiter.prefix) == 7


async def test_a_failed_give_back_is_not_held_again(
    redis_server: RedisServer, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis may have taken the allowance back before failing: holding it again could pass
    the limit, so it stays counted (too little accepted, never too much)."""
    limiter = reserving(redis_server.url, clock)
    try:
        for _ in range(3):
            await limiter.check(P42, [("error", 1)], LIMIT_1000)
        real = redis_down(limiter, monkeypatch)
        await limiter.sync()
        assert limiter.redis_errors == 1
        assert limiter.share is not None and limiter.share.reserved == 0
        monkeypatch.setattr(limiter, "_consume", real)
        await limiter.sync()
        assert await stored(redis_server.url, limiter.prefix) == 2 + RESERVE_MIN
    finally:
        await limiter.close()


async def test_allowances_keep_accepting_while_redis_is_down(
    redis_server: RedisServer, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    limiter = reserving(redis_server.url, clock, on_error="reject")
    try:
        for _ in range(2):
            await limiter.check(P42, [("error", 1)], LIMIT_1000)
        redis_down(limiter, monkeypatch)
        results = [await limiter.check(P42, [("error", 1)], LIMIT_1000) for _ in range(20)]
        assert accepted(results) == RESERVE_MIN  # what Redis counted for it already
        assert all(r.store_error for r in results[RESERVE_MIN:])
    finally:
        await limiter.close()


async def test_giving_back_never_takes_a_counter_below_zero_nor_creates_one(
    redis_server: RedisServer, clock: Clock
) -> None:
    limiter = reserving(redis_server.url, clock)
    client = Redis.from_url(redis_server.url)
    try:
        for _ in range(2):
            await limiter.check(P42, [("error", 1)], LIMIT_1000)
        async for key in client.scan_iter(match=f"{{{limiter.prefix}:*"):
            await client.set(key, 3)  # lost and recounted meanwhile (a Redis restart)
        await limiter.sync()
        assert await stored(redis_server.url, limiter.prefix) == 0
        async for key in client.scan_iter(match=f"{{{limiter.prefix}:*"):
            await client.delete(key)
        await limiter.check(P42, [("error", 1)], LIMIT_1000)
        await limiter.check(P42, [("error", 1)], LIMIT_1000)
        async for key in client.scan_iter(match=f"{{{limiter.prefix}:*"):
            await client.delete(key)
        await limiter.sync()
        assert [key async for key in client.scan_iter(match=f"{{{limiter.prefix}:*")] == []
    finally:
        await client.aclose()
        await limiter.close()


async def test_spike_history_holds_no_allowance(redis_server: RedisServer, clock: Clock) -> None:
    """An hour's count is the history later thresholds are computed from: what a process
    still held when the hour ended goes back first."""
    limiter = reserving(redis_server.url, clock)
    compiled = quotas(
        spike={
            "enabled": True,
            "categories": ["error"],
            "floor_per_hour": 100,
            "multiplier": 3,
            "history_hours": 24,
        }
    )
    try:
        clock.set(2026, 3, 2, 0, 0, 0)
        for _ in range(3):
            await limiter.check(P42, [("error", 1)], compiled)
        assert await stored(redis_server.url, limiter.prefix) == 2 + RESERVE_MIN
        clock.advance(3600)
        await limiter.check(P42, [("error", 1)], compiled)
        assert await stored(redis_server.url, limiter.prefix) == 3 + 1
    finally:
        await limiter.close()


async def test_an_app_counts_in_reserve_mode_by_default(
    relay_factory: Any, redis_server: RedisServer
) -> None:
    import uuid

    from tests.web.test_quotas import auth_header, event, quota_policy

    prefix = f"t{uuid.uuid4().hex}"
    relay = await relay_factory(
        policy=quota_policy(limit=100), redis={"url": redis_server.url, "prefix": prefix}
    )
    for n in range(5):
        resp = await relay.post("/api/42/envelope/", data=event(n), headers=auth_header())
        assert resp.status == 200
    # Two checks counted, and a reservation of a tenth of the room left after them.
    assert await stored(redis_server.url, prefix) == 2 + 9
    metrics = await (await relay.get("/metrics")).text()
    assert "relay_quota_cache_hits_total 3.0" in metrics
    assert await stored(redis_server.url, prefix) == 5  # the scrape reads usage: synced


async def test_a_reservation_granted_while_closing_goes_back(
    redis_server: RedisServer, clock: Clock, flush_path: str
) -> None:
    """`close` while a reservation is on its way: what Redis grants after close began is
    given back before the limiter closes, not left counted until the window ends."""
    proxy = await TcpProxy(redis_server.port).start()
    limiter = reserving(proxy.url, clock)
    try:
        await limiter.check(P42, [("error", 1)], LIMIT_1000)  # known: the next reserves
        proxy.hold = asyncio.Event()
        in_flight = asyncio.gather(
            *(limiter.check(P42, [("error", 1)], LIMIT_1000) for _ in range(3))
        )
        await asyncio.sleep(0.05)
        closing = asyncio.create_task(limiter.close())
        await asyncio.sleep(0.05)
        proxy.hold.set()
        results = await in_flight
        await closing
        assert not any(r.limited or r.store_error for r in results)
        assert await stored(redis_server.url, limiter.prefix) == 4
    finally:
        await limiter.close()
        await proxy.close()


def test_the_periodic_sync_keeps_an_allowance_sized_to_the_traffic() -> None:
    """`roll`: a counter in use is brought to twice what was taken since the last sync,
    reserving the shortfall while the rest goes on serving, or giving back the excess;
    a counter not used since gives everything back."""
    share = QuotaShare(0.5, 1.0, "p")
    big = counter(limit=10**9)
    share.learn(demand(big), True, [0])
    [asked] = share.reservations([demand(big)], 0)
    share.granted([asked], [(True, [1])])  # RESERVE_MIN held
    for _ in range(RESERVE_MIN - 2):
        assert share.take(demand(big), 0) is not None
    gives, [more] = share.roll(0)  # 14 taken: to 28, 2 left, 26 reserved
    assert gives == [] and more.counters[0].increment == 2 * (RESERVE_MIN - 2) - 2
    assert more.counters[0].gating
    assert share.take(demand(big), 0) is not None  # what is left still serves meanwhile
    assert share.granted([more], [(True, [RESERVE_MIN + 1])], grow=False)
    assert share.reserved == 2 * (RESERVE_MIN - 2) - 1
    gives, reservations = share.roll(0)  # one taken since: RESERVE_MIN, the excess back
    assert reservations == [] and [c.increment for g in gives for c in g.counters] == [
        RESERVE_MIN - (2 * (RESERVE_MIN - 2) - 1)
    ]
    assert share.reserved == RESERVE_MIN and share.holding
    gives, reservations = share.roll(0)  # nothing taken since: everything goes back
    assert reservations == [] and [c.increment for g in gives for c in g.counters] == [-RESERVE_MIN]
    assert share.reserved == 0 and not share.holding


async def test_allowances_roll_over_syncs_while_checks_keep_coming(
    redis_server: RedisServer, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Checks at a steady pace across several syncs ask Redis only at the start: each
    sync tops the allowance up before it runs out. Redis counts what was accepted plus the
    allowance held, and what was accepted alone once the checks stop."""
    monkeypatch.setattr("relay.services.limiter.redis.SYNC_S", 0.05)
    limiter = reserving(redis_server.url, clock)
    try:
        for _ in range(3):  # learn, reserve, take
            await limiter.check(P42, [("error", 1)], LIMIT_1000)
        assert limiter.share is not None
        hits = limiter.share.hits
        for _ in range(60):  # 0.3 s: six syncs
            await limiter.check(P42, [("error", 1)], LIMIT_1000)
            await asyncio.sleep(0.005)
        assert limiter.share.hits - hits >= 58, limiter.share.hits - hits
        held = limiter.share.reserved
        assert held > 0 and await stored(redis_server.url, limiter.prefix) == 63 + held
        await asyncio.sleep(0.3)  # idle: the next syncs give everything back
        assert limiter.share.reserved == 0
        assert await stored(redis_server.url, limiter.prefix) == 63
    finally:
        await limiter.close()


async def test_a_sync_that_changes_nothing_still_arranges_the_next(
    redis_server: RedisServer, clock: Clock
) -> None:
    """An allowance already at its size after a sync is neither topped up nor given back;
    the next sync must still come, or it would stay held once the checks stop."""
    limiter = reserving(redis_server.url, clock)
    try:
        for _ in range(3):
            await limiter.check(P42, [("error", 1)], LIMIT_1000)
        assert limiter.share is not None
        [share] = limiter.share._shares.values()
        # As if the allowance were twice the traffic since the last sync.
        held = share.allowance = 2 * RESERVE_MIN
        share.taken = RESERVE_MIN
        assert limiter._sync_handle is not None
        limiter._sync_handle.cancel()
        limiter._sync_handle = None
        await limiter.sync(roll=True)
        assert share.allowance == held and limiter.share.holding
        assert limiter._sync_handle is not None  # the next sync gives it back
    finally:
        await limiter.close()
