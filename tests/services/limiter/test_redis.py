"""Redis-only behaviour: several processes, outages, script reloads, batching."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest
from redis.asyncio import Redis

from relay.processing.quotas import CategoryDemand, CompiledQuotas, Scoping
from relay.services.limiter import LimitResult, create_limiter
from relay.services.limiter.redis import CLOCK_SAMPLE_S, SCRIPT, RedisLimiter, _Clocks
from tests.services.limiter.conftest import Clock, quotas, redis_config
from tests.support.redis_server import RedisServer, free_port
from tests.support.tcp_proxy import TcpProxy

P42 = Scoping(project_id=42, public_key="abc")
ERRORS_5 = quotas(
    {"id": "n", "categories": ["error"], "scope": "project", "limit": 5, "window": 60}
)
PROBE = quotas({"id": "probe", "categories": ["error"], "limit": 10**9, "window": 60})


def accepted(results: list[LimitResult]) -> int:
    return sum(1 for r in results if not r.is_rejected("error"))


async def checks(limiter: Any, n: int, compiled: CompiledQuotas = ERRORS_5) -> list[LimitResult]:
    return [await limiter.check(P42, [("error", 1)], compiled) for _ in range(n)]


async def wait_until_up(limiter: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not (await limiter.check(P42, [("error", 1)], PROBE)).store_error:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the limiter did not reconnect")


async def test_two_processes_share_one_exact_budget(
    redis_server: RedisServer, clock: Clock
) -> None:
    cfg = redis_config(redis_server.url)
    one = create_limiter(cfg, clock=clock)
    two = create_limiter(cfg, clock=clock)
    compiled = quotas({"id": "shared", "categories": ["error"], "limit": 137, "window": 60})
    try:
        results = await asyncio.gather(
            *(
                (one if i % 2 else two).check(Scoping(i % 3, f"k{i % 5}"), [("error", 1)], compiled)
                for i in range(600)
            )
        )
        assert accepted(results) == 137
        # Both saw rejections, and both now answer from their own cache.
        assert (
            sum(r.limited for r in results[0::2]) > 0 and sum(r.limited for r in results[1::2]) > 0
        )
        rows = await one.usage([(P42, compiled)])
        assert [(r.used, r.limit) for r in rows] == [(137, 137)]
    finally:
        await one.close()
        await two.close()


async def script_calls(url: str) -> int:
    """How many `EVALSHA` commands this Redis has run (its own count, `INFO commandstats`)."""
    admin = Redis.from_url(url)
    try:
        stats = await admin.info("commandstats")
    finally:
        await admin.aclose()
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


async def test_concurrent_checks_share_pipelines(
    redis_server: RedisServer, clock: Clock, flush_path: str
) -> None:
    cfg = redis_config(redis_server.url)
    limiter = create_limiter(cfg, clock=clock)
    compiled = quotas({"id": "many", "limit": 10**6, "window": 60})
    try:
        await limiter.check(P42, [("error", 1)], compiled)  # connects, loads the script
        before = await script_calls(redis_server.url)
        results = await asyncio.gather(
            *(limiter.check(P42, [("error", 1), ("span", 3)], compiled) for _ in range(500))
        )
        assert not any(r.limited for r in results)
        # The 500 checks left in at most a few script calls.
        assert 1 <= await script_calls(redis_server.url) - before <= 3
        (err, span) = sorted(
            (r.category or "", r.used) for r in await limiter.usage([(P42, compiled)])
        )
        assert err == ("error", 501) and span == ("span", 1500)
        # One after another, each check is a script call of its own.
        before = await script_calls(redis_server.url)
        for _ in range(5):
            await limiter.check(P42, [("error", 1)], compiled)
        assert await script_calls(redis_server.url) - before == 5
    finally:
        await limiter.close()


async def test_merged_script_calls_answer_each_check(
    redis_server: RedisServer, clock: Clock, monkeypatch: pytest.MonkeyPatch, flush_path: str
) -> None:
    """Checks of one flush go as few script calls (at most MAX_MERGED_GROUPS groups each);
    every check still gets exactly its own answers: per category, accept or reject."""
    import relay.services.limiter.redis as redis_module

    monkeypatch.setattr(redis_module, "MAX_MERGED_GROUPS", 7)
    cfg = redis_config(redis_server.url)
    limiter = create_limiter(cfg, clock=clock)
    compiled = quotas(
        {"id": "errors", "categories": ["error"], "limit": 10, "window": 60},
        {"id": "spans", "categories": ["span"], "limit": 100, "window": 60},
    )
    try:
        await limiter.check(P42, [("error", 1)], PROBE)  # connects, loads the script
        before = await script_calls(redis_server.url)
        wanted = [[("error", 1), ("span", 3)] if i % 2 else [("span", 7)] for i in range(40)]
        results = await asyncio.gather(*(limiter.check(P42, q, compiled) for q in wanted))
        calls = await script_calls(redis_server.url) - before
        # Errors: 20 checks ask for one each, the first 10 fit.
        with_errors = [r for q, r in zip(wanted, results, strict=True) if len(q) == 2]
        assert [r.is_rejected("error") for r in with_errors] == [False] * 10 + [True] * 10
        # Spans, in arrival order: 3 or 7 each, accepted while they fit in 100.
        used, expected = 0, []
        for q in wanted:
            fits = used + q[-1][1] <= 100
            used += q[-1][1] if fits else 0
            expected.append(not fits)
        assert [r.is_rejected("span") for r in results] == expected
        rows = {r.id: r.used for r in await limiter.usage([(P42, compiled)])}
        assert rows == {"errors": 10, "spans": used}
        assert limiter.redis_errors == 0
        # 60 groups in at most 7 per call: the merged calls were split, and far fewer
        # calls went out than checks were made.
        assert 9 <= calls < 40
    finally:
        await limiter.close()


@pytest.mark.parametrize("bad", ["list", "text", "decimal"])
async def test_a_counter_key_holding_no_integer_fails_only_its_own_check(
    redis_server: RedisServer, clock: Clock, bad: str
) -> None:
    """A key in the relay's prefix overwritten by something else (another type, text) fails
    the checks that need it, as an unavailable store would, and nothing else: the checks
    merged into the same script call are answered and counted as usual, and what the
    failed check counted in its other categories is given back."""
    cfg = redis_config(redis_server.url)
    limiter = create_limiter(cfg, clock=clock)
    admin = Redis.from_url(redis_server.url)
    p43 = Scoping(project_id=43, public_key="abc")
    compiled = quotas(
        {"id": "errors", "categories": ["error"], "scope": "project", "limit": 10, "window": 60},
        {"id": "spans", "categories": ["span"], "scope": "project", "limit": 100, "window": 60},
    )
    try:
        first = await limiter.check(p43, [("error", 1)], compiled)
        key = first.consumed["error"][0].key(cfg.prefix)
        await admin.delete(key)
        if bad == "list":
            await admin.lpush(key, "x")
        else:
            await admin.set(key, "abc" if bad == "text" else "1.5")
        results = await asyncio.gather(
            limiter.check(P42, [("error", 1)], compiled),
            limiter.check(p43, [("span", 5), ("error", 1)], compiled),
            limiter.check(P42, [("error", 2), ("span", 3)], compiled),
        )
        assert [r.store_error for r in results] == [False, True, False]
        assert not results[0].limited and not results[2].limited
        assert list(results[2].consumed) == ["error", "span"]
        assert limiter.redis_errors == 1
        rows = {(r.scope_id, r.id): r.used for r in await limiter.usage(
            [(P42, compiled), (p43, compiled)]
        )}  # fmt: skip
        # Project 43's spans were counted by the script, then given back with the error.
        assert rows[("42", "errors")] == 3 and rows[("42", "spans")] == 3
        assert rows[("43", "spans")] == 0
        assert (await admin.type(key)) == (b"list" if bad == "list" else b"string")
        await limiter.refund(first.consumed["error"])  # a refund skips the bad key
        assert limiter.redis_errors == 1
    finally:
        await admin.aclose()
        await limiter.close()


async def test_script_is_reloaded_after_script_flush(
    redis_server: RedisServer, clock: Clock, flush_path: str
) -> None:
    limiter = create_limiter(redis_config(redis_server.url), clock=clock)
    admin = Redis.from_url(redis_server.url)
    try:
        assert accepted(await checks(limiter, 2)) == 2
        await admin.script_flush()
        assert accepted(await checks(limiter, 5)) == 3
        assert limiter.redis_errors == 0
    finally:
        await admin.aclose()
        await limiter.close()


async def test_refund_while_a_flush_runs_and_after_a_script_flush(
    redis_server: RedisServer, clock: Clock
) -> None:
    """Refunds go through the pool, never the flushes' own connection: interleaved with
    concurrent checks, every answer still matches its check, and the counts add up."""
    limiter = create_limiter(redis_config(redis_server.url), clock=clock)
    admin = Redis.from_url(redis_server.url)
    compiled = quotas({"id": "r", "categories": ["error"], "limit": 10**6, "window": 60})
    try:
        first = await checks(limiter, 20, compiled)
        await admin.script_flush()  # the refund loads the script again
        await asyncio.gather(
            *(limiter.refund(r.consumed["error"]) for r in first),
            *(limiter.check(P42, [("error", 1)], compiled) for _ in range(30)),
        )
        (row,) = await limiter.usage([(P42, compiled)])
        assert row.used == 30 and limiter.redis_errors == 0
    finally:
        await admin.aclose()
        await limiter.close()


async def test_refund_with_redis_down_is_counted_not_raised(
    fresh_redis: RedisServer, clock: Clock
) -> None:
    limiter = create_limiter(redis_config(fresh_redis.url), clock=clock)
    try:
        (counted,) = await checks(limiter, 1)
        fresh_redis.stop()
        await limiter.refund(counted.consumed["error"])
        assert limiter.redis_errors == 1
    finally:
        await limiter.close()


async def test_connection_broken_while_idle_is_replaced(
    fresh_redis: RedisServer, clock: Clock, flush_path: str
) -> None:
    """A restart between two checks leaves the limiter a dead connection: the next check
    replaces it (once) and reloads the script, with no error and no lost count."""
    limiter = create_limiter(redis_config(fresh_redis.url), clock=clock)
    try:
        assert accepted(await checks(limiter, 2)) == 2
        fresh_redis.stop()
        fresh_redis.start()  # empty again: counters and script are gone
        assert accepted(await checks(limiter, 7)) == 5
        assert limiter.redis_errors == 0
        admin = Redis.from_url(fresh_redis.url)
        try:
            clients = await admin.client_list()
        finally:
            await admin.aclose()
        # The checks share one connection (plus the admin's own).
        assert len(clients) <= 3
    finally:
        await limiter.close()


async def test_a_connection_that_breaks_as_a_check_is_sent_is_replaced_once(
    redis_server: RedisServer, clock: Clock, flush_path: str
) -> None:
    """The connection breaks as a batch is written (Redis never saw it): the batch goes
    again on a new connection, counted once. On the bare connection, a new connection
    that breaks too is not replaced again: the check is decided as Redis unavailable."""
    proxy = await TcpProxy(redis_server.port).start()
    limiter = create_limiter(redis_config(proxy.url), clock=clock)
    try:
        assert accepted(await checks(limiter, 2)) == 2  # also loads the script (pool)
        opened = proxy.connections
        proxy.drop = 1
        assert accepted(await checks(limiter, 4)) == 3  # 5 in all, counted once each
        assert limiter.redis_errors == 0
        assert proxy.connections == opened + 1
        if flush_path == "bare":  # redis-py's connections retry by themselves too
            proxy.drop = 2
            (result,) = await checks(limiter, 1, PROBE)  # ERRORS_5 is full: Redis not asked
            assert result.store_error and limiter.redis_errors == 1
            assert proxy.connections == opened + 2  # the broken one's successor only
    finally:
        await limiter.close()
        await proxy.close()


async def test_close_waits_for_the_checks_in_flight(
    redis_server: RedisServer, clock: Clock, flush_path: str
) -> None:
    """Closing while a batch is on its way to Redis: the checks get their answers, then
    the connection closes, and nothing reconnects after."""
    proxy = await TcpProxy(redis_server.port).start()
    limiter = create_limiter(redis_config(proxy.url), clock=clock)
    try:
        assert accepted(await checks(limiter, 1)) == 1
        opened = proxy.connections
        proxy.hold = asyncio.Event()
        in_flight = asyncio.gather(
            *(limiter.check(P42, [("error", 1)], ERRORS_5) for _ in range(3))
        )
        await asyncio.sleep(0.05)
        closing = asyncio.create_task(limiter.close())
        await asyncio.sleep(0.05)
        assert not closing.done()  # waiting for the answers
        proxy.hold.set()
        results = await in_flight
        await closing
        assert accepted(results) == 3 and not any(r.store_error for r in results)
        assert limiter.redis_errors == 0
        await asyncio.sleep(0.05)
        assert proxy.connections == opened
    finally:
        await limiter.close()
        await proxy.close()


async def test_redis_that_stops_answering_times_out_and_is_used_again_after(
    fresh_redis: RedisServer, clock: Clock, monkeypatch: pytest.MonkeyPatch, flush_path: str
) -> None:
    """A Redis that accepts the write but never answers (here: stopped) fails the check
    after the socket timeout, not later; the stalled connection is dropped (redis-py's
    goes back to its pool with its own timeout), and once Redis answers again the checks
    go on."""
    monkeypatch.setattr("relay.services.limiter.redis.SOCKET_TIMEOUT_S", 0.3)
    limiter = create_limiter(redis_config(fresh_redis.url), clock=clock)
    assert isinstance(limiter, RedisLimiter)
    proc = fresh_redis.proc
    assert proc is not None
    try:
        assert (limiter._bare_target is not None) == (flush_path == "bare")
        assert accepted(await checks(limiter, 2)) == 2
        stalled = limiter._bare if flush_path == "bare" else limiter._conn
        assert stalled is not None
        if flush_path == "redis-py":
            assert limiter._conn is not None and limiter._conn.socket_timeout is None
        proc.send_signal(signal.SIGSTOP)
        try:
            start = time.monotonic()
            (result,) = await checks(limiter, 1)
            waited = time.monotonic() - start
        finally:
            proc.send_signal(signal.SIGCONT)
        assert result.store_error and not result.limited  # on_error: allow
        assert 0.25 <= waited < 1.5
        assert limiter.redis_errors == 1
        assert limiter._bare is None and limiter._conn is None
        if flush_path == "redis-py":
            # The stalled connection went back to the pool with the pool's timeout.
            assert stalled.socket_timeout == 0.3
        await wait_until_up(limiter)
        if flush_path == "bare":
            assert limiter._bare is not None and limiter._bare is not stalled
        else:
            assert limiter._conn is not None and limiter._conn.socket_timeout is None
        # Two counted before the stall. The stalled check's script ran when Redis went on
        # (its write had left), past its deadline: it counted nothing, 3 are left.
        assert accepted(await checks(limiter, 5)) == 3
    finally:
        await limiter.close()


@pytest.mark.parametrize("on_error", ["allow", "reject"])
async def test_redis_killed_mid_run(
    fresh_redis: RedisServer, clock: Clock, on_error: str, flush_path: str
) -> None:
    limiter = create_limiter(redis_config(fresh_redis.url, on_error=on_error), clock=clock)
    try:
        assert accepted(await checks(limiter, 3)) == 3
        fresh_redis.stop()
        down = await checks(limiter, 10)
        assert all(r.store_error for r in down)
        assert limiter.redis_errors == 10
        if on_error == "allow":
            assert accepted(down) == 10
        else:
            assert accepted(down) == 0
            rejection = down[0].rejected["error"]
            assert rejection.reason == "redis_unavailable"
            assert rejection.quota_id == "redis_unavailable"
            assert rejection.rate_limit.reason == "redis_unavailable"
            assert rejection.rate_limit.retry_after == 1.0
        fresh_redis.start()  # same port, empty: the counters start over
        await wait_until_up(limiter)
        errors = limiter.redis_errors
        results = await asyncio.gather(
            *(limiter.check(P42, [("error", 1)], ERRORS_5) for _ in range(40))
        )
        assert accepted(results) == 5
        assert not any(r.store_error for r in results)
        assert limiter.redis_errors == errors
    finally:
        await limiter.close()


async def test_full_counters_need_no_redis(fresh_redis: RedisServer, clock: Clock) -> None:
    limiter = create_limiter(redis_config(fresh_redis.url, on_error="allow"), clock=clock)
    try:
        assert accepted(await checks(limiter, 6)) == 5
        fresh_redis.stop()
        result = await limiter.check(P42, [("error", 1)], ERRORS_5)
        assert result.rejected["error"].quota_id == "n" and not result.store_error
        assert limiter.redis_errors == 0
        # `limit: 0` needs no Redis either.
        blocked = quotas({"id": "off", "categories": ["replay"], "limit": 0})
        result = await limiter.check(P42, [("replay", 1)], blocked)
        assert result.rejected["replay"].quota_id == "off" and not result.store_error
        assert limiter.redis_errors == 0
        clock.advance(60)  # the window ends: the cache lets go, Redis is asked (and is down)
        result = await limiter.check(P42, [("error", 1)], ERRORS_5)
        assert not result.limited and result.store_error
    finally:
        await limiter.close()


async def test_spike_history_read_failure_follows_on_error(
    fresh_redis: RedisServer, clock: Clock
) -> None:
    limiter = create_limiter(redis_config(fresh_redis.url, on_error="reject"), clock=clock)
    compiled = quotas(spike={"enabled": True, "floor_per_hour": 5, "multiplier": 2})
    try:
        fresh_redis.stop()
        result = await limiter.check(P42, [("error", 1)], compiled)
        assert result.rejected["error"].reason == "redis_unavailable"
        fresh_redis.start()
        await wait_until_up(limiter)
        results = [await limiter.check(P42, [("error", 1)], compiled) for _ in range(8)]
        assert accepted(results) == 5
    finally:
        await limiter.close()


def test_demands_are_grouped_per_slot_only_in_cluster_mode() -> None:
    from relay.processing.quotas import plan_check
    from relay.services.limiter.redis import _build_calls

    compiled = quotas(
        {"id": "a", "limit": 5, "window": 60},
        {"id": "b", "scope": "project", "limit": 5, "window": 60},
        {"id": "c", "scope": "key", "limit": 5, "window": 60, "mode": "dry_run"},
    )
    demands: list[CategoryDemand] = plan_check(compiled, P42, [("error", 1), ("span", 2)], 0.0)
    (single,) = _build_calls(demands, "relay", cluster=False)
    assert len(single.keys) == 6
    assert single.args[:3] == ["c", 2, 3]
    assert single.args[3:6] == [5, 1, 120]
    assert single.args[9:12] == [-1, 1, 120]  # dry run: counted, never rejects
    assert single.groups == [(0, [0, 1, 2]), (1, [0, 1, 2])]
    assert single.keys[3:] == [c.key("relay") for c in demands[1].counters]
    per_slot = _build_calls(demands, "relay", cluster=True)
    assert len(per_slot) == 3
    assert all(len(call.groups) == 2 for call in per_slot)


@pytest.fixture
def sentinel(fresh_redis: RedisServer) -> Iterator[int]:
    """A real redis-sentinel watching `fresh_redis` as master `relay-main`; yields its port."""
    port = free_port()
    conf = fresh_redis.dir / "sentinel.conf"
    conf.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {fresh_redis.dir}\n"
        f"sentinel monitor relay-main 127.0.0.1 {fresh_redis.port} 1\n"
    )
    proc = subprocess.Popen(
        [fresh_redis.binary, str(conf), "--sentinel"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                assert time.monotonic() < deadline, "redis-sentinel did not start"
                time.sleep(0.02)
        yield port
    finally:
        proc.kill()
        proc.wait(timeout=10)


async def test_sentinel_mode_finds_the_master(sentinel: int, clock: Clock) -> None:
    cfg = redis_config(
        f"redis://127.0.0.1:{sentinel}/0", mode="sentinel", sentinel_master="relay-main"
    )
    limiter = create_limiter(cfg, clock=clock)
    try:
        results = await asyncio.gather(
            *(limiter.check(P42, [("error", 1)], ERRORS_5) for _ in range(20))
        )
        assert accepted(results) == 5
        assert not any(r.store_error for r in results)
    finally:
        await limiter.close()


async def test_a_refund_never_takes_a_counter_below_zero(
    fresh_redis: RedisServer, clock: Clock
) -> None:
    """Keys lost in a Redis restart (no persistence) between a check and its refund: the
    refund gives back at most what the new key holds, so the window does not open wider
    than its limit by the refunded amount."""
    errors_10 = quotas(
        {"id": "n", "categories": ["error"], "scope": "project", "limit": 10, "window": 60}
    )
    limiter = create_limiter(redis_config(fresh_redis.url), clock=clock)
    direct = Redis.from_url(fresh_redis.url)
    try:
        first = await limiter.check(P42, [("error", 5)], errors_10)
        assert not first.limited
        await direct.flushall()  # the restart
        assert not (await limiter.check(P42, [("error", 1)], errors_10)).limited
        await limiter.refund(first.consumed["error"])
        values = [int(await direct.get(key)) for key in await direct.keys("*")]
        assert values == [0]  # not -4, which would let 14 more in
        assert accepted(await checks(limiter, 20, errors_10)) == 10
    finally:
        await direct.aclose()
        await limiter.close()


async def test_a_refund_by_another_process_is_seen_within_a_second(
    redis_server: RedisServer, clock: Clock
) -> None:
    """A full counter is believed from the cache for a second, not until its window ends
    (a month here): another process's refund opens it again soon."""
    monthly = quotas(
        {"id": "m", "categories": ["error"], "scope": "project", "limit": 2, "window": "month"}
    )
    config = redis_config(redis_server.url)
    one, other = create_limiter(config, clock=clock), create_limiter(config, clock=clock)
    try:
        mine = await one.check(P42, [("error", 1)], monthly)
        assert not (await other.check(P42, [("error", 1)], monthly)).limited  # now full
        full = await other.check(P42, [("error", 1)], monthly)
        assert full.is_rejected("error")
        await one.refund(mine.consumed["error"])
        clock.advance(1.5)
        assert not (await other.check(P42, [("error", 1)], monthly)).limited
    finally:
        await one.close()
        await other.close()


async def test_a_rejection_from_the_cache_names_the_end_of_the_window(
    redis_server: RedisServer, clock: Clock
) -> None:
    hourly = quotas(
        {"id": "h", "categories": ["error"], "scope": "project", "limit": 1, "window": 3600}
    )
    limiter = create_limiter(redis_config(redis_server.url), clock=clock)
    try:
        assert not (await limiter.check(P42, [("error", 1)], hourly)).limited
        from_store = await limiter.check(P42, [("error", 1)], hourly)
        from_cache = await limiter.check(P42, [("error", 1)], hourly)
        assert from_store.retry_after > 60
        assert from_cache.retry_after == from_store.retry_after
    finally:
        await limiter.close()


async def test_a_check_that_runs_past_its_deadline_counts_nothing(
    redis_server: RedisServer,
) -> None:
    """The script's deadline, in Redis's own time: past it, nothing is counted and the
    answer is Redis's time and -1; 0 is no deadline."""
    client = Redis.from_url(redis_server.url)
    key = f"deadline-{time.monotonic_ns()}"
    try:
        seconds, micros = await client.time()
        now_ms = seconds * 1000 + micros // 1000
        check = ("c", 1, 1, 10, 1, 60)  # one group, one counter: limit 10, +1, ttl 60
        late = await client.eval(SCRIPT, 1, key, check[0], now_ms - 1, *check[1:])
        assert late[1] == -1 and now_ms <= late[0] < now_ms + 5000
        assert await client.get(key) is None
        for deadline in (0, now_ms + 60_000):
            answer = await client.eval(SCRIPT, 1, key, check[0], deadline, *check[1:])
            assert answer[0] >= now_ms and answer[1:] == [1, 0 if deadline == 0 else 1]
        assert await client.get(key) == b"2"
    finally:
        await client.aclose()


def test_clocks_keep_the_highest_sample_for_a_while_per_slot(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("relay.services.limiter.redis.SOCKET_TIMEOUT_S", 2.0)
    clocks = _Clocks()
    assert clocks.deadline_ms(0, 100.0) == 0  # nothing known: no deadline
    clocks.learn(0, 1_000_000, 200.0)  # Redis's 1000 s at monotonic 200 s: offset 800
    assert clocks.deadline_ms(0, 300.0) == (300 + 1.5 + 800) * 1000
    assert clocks.deadline_ms(7, 300.0) == 0  # another slot, another node's clock
    clocks.learn(0, 1_050_000, 250.2)  # a slower answer says less: kept as it was
    assert clocks.deadline_ms(0, 300.0) == (300 + 1.5 + 800) * 1000
    clocks.learn(0, 1_060_000, 259.0)  # a faster one (or Redis's clock set forward): taken
    assert clocks.deadline_ms(0, 300.0) == (300 + 1.5 + 801) * 1000
    clocks.learn(0, 1_000_000, 300.0)  # Redis's clock set back: kept until the sample ages
    assert clocks.deadline_ms(0, 300.0) == (300 + 1.5 + 801) * 1000
    clocks.learn(0, 1_000_000, 259.0 + CLOCK_SAMPLE_S + 1)
    assert clocks.deadline_ms(0, 400.0) == pytest.approx((400 + 1.5 + 1000 - 320) * 1000, abs=1)


async def test_a_deadline_set_too_early_fails_one_check_and_is_corrected(
    redis_server: RedisServer, clock: Clock, flush_path: str
) -> None:
    """When Redis's clock jumps forward, the deadlines computed from the old estimate are
    in the past: the first check fails as Redis was late (counting nothing), and its answer
    corrects the estimate for the next."""
    limiter = create_limiter(redis_config(redis_server.url), clock=clock)
    assert isinstance(limiter, RedisLimiter)
    try:
        assert accepted(await checks(limiter, 1)) == 1
        offsets = limiter._clocks._offsets
        offset, _ = offsets[0]
        offsets[0] = (offset - 10, time.monotonic())  # as if Redis's clock jumped 10 s ahead
        (late,) = await checks(limiter, 1)
        assert late.store_error and limiter.redis_errors == 1
        assert offsets[0][0] == pytest.approx(offset, abs=0.5)
        await asyncio.sleep(0.1)  # past the pause after a failure
        assert accepted(await checks(limiter, 5)) == 4  # the late check counted nothing
        (row,) = await limiter.usage([(P42, ERRORS_5)])
        assert row.used == 5
    finally:
        await limiter.close()
