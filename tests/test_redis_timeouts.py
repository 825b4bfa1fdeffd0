"""A Redis that stalls past the limiter's timeout, with `redis.on_error: reject`.

Each envelope is answered once (429: quotas cannot be checked), each dropped item has
one outcome, and each check decided without Redis counts one Redis error, even when
several checks shared the call that timed out.
"""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from relay.services.limiter import redis as redis_limiter
from relay.services.limiter.share import SYNC_S
from tests.support.redis_server import RedisServer
from tests.support.relay import auth_header
from tests.support.upstream import RecordingUpstream
from tests.web.test_quotas import event, quota_policy


def _metric(metrics: str, prefix: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines() if line.startswith(prefix)
    )


@pytest.mark.parametrize("cache", ["reserve", "off"])
@pytest.mark.parametrize("bare", [True, False])
async def test_stalled_redis_rejects_each_item_once(
    relay_factory: Any,
    fresh_redis: RedisServer,
    recorder: RecordingUpstream,
    monkeypatch: pytest.MonkeyPatch,
    cache: str,
    bare: bool,
) -> None:
    monkeypatch.setattr(redis_limiter, "SOCKET_TIMEOUT_S", 0.3)
    monkeypatch.setattr(redis_limiter, "BARE_CONNECTION", bare)
    redis: dict[str, Any] = {"url": fresh_redis.url, "on_error": "reject", "prefix": "stall"}
    if cache == "off":
        redis["quota_cache_ratio"] = 0
    relay: TestClient = await relay_factory(
        policy=quota_policy(limit=1000), redis=redis, admin={"token": "s3cret-token"}
    )
    # Connected, the script loaded: the checks below reach Redis and wait there.
    first = await relay.post("/api/42/envelope/", data=event(0), headers=auth_header())
    assert first.status == 200
    assert fresh_redis.proc is not None
    pid = fresh_redis.proc.pid
    os.kill(pid, signal.SIGSTOP)  # Redis hangs: connections open, nothing answered
    try:
        statuses = await asyncio.gather(
            *(
                relay.post("/api/42/envelope/", data=event(n), headers=auth_header())
                for n in range(1, 4)
            )
        )
        assert [r.status for r in statuses] == [429, 429, 429]
        metrics = await (await relay.get("/metrics")).text()
    finally:
        os.kill(pid, signal.SIGCONT)
    rejected = (
        'relay_items_total{category="error",outcome="rate_limited",reason="redis_unavailable"}'
    )
    assert _metric(metrics, rejected) == 3
    # One error per check decided without Redis (the three shared one call).
    assert _metric(metrics, "relay_redis_errors_total") == 3
    # Redis is back: checks are counted again, the failed ones were answered only once.
    await asyncio.sleep(redis_limiter._BACKOFF_MAX_S + 0.2)  # past the pause after failing
    ok = await relay.post("/api/42/envelope/", data=event(99), headers=auth_header())
    assert ok.status == 200
    await recorder.wait_for(2)
    metrics = await (await relay.get("/metrics")).text()
    assert _metric(metrics, rejected) == 3
    assert _metric(metrics, 'relay_items_total{category="error",outcome="accepted"') == 2
    assert _metric(metrics, "relay_redis_errors_total") == 3
    # Redis ran the calls the relay had given up on when it woke: they counted nothing.
    assert await _used(relay) == 2


async def test_share_mode_amounts_pushed_when_redis_stalled_count_once(
    relay_factory: Any, fresh_redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`share` mode accepts from its allowance and adds the amounts to Redis a second
    later. A push that times out is kept and pushed again: the one Redis ran when it
    woke must have counted nothing."""
    monkeypatch.setattr(redis_limiter, "SOCKET_TIMEOUT_S", 0.3)
    redis: dict[str, Any] = {
        "url": fresh_redis.url,
        "prefix": "stall-share",
        "quota_cache_ratio": 0.5,
        "quota_cache_mode": "share",
    }
    relay: TestClient = await relay_factory(
        policy=quota_policy(limit=1000), redis=redis, admin={"token": "s3cret-token"}
    )
    for n in range(6):  # the first asks Redis, the others are accepted from the allowance
        resp = await relay.post("/api/42/envelope/", data=event(n), headers=auth_header())
        assert resp.status == 200
    assert fresh_redis.proc is not None
    pid = fresh_redis.proc.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        await asyncio.sleep(SYNC_S + 0.6)  # the push of the five leaves, and times out
        metrics = await (await relay.get("/metrics")).text()
    finally:
        os.kill(pid, signal.SIGCONT)
    assert _metric(metrics, "relay_redis_errors_total") >= 1  # the push failed
    await asyncio.sleep(redis_limiter._BACKOFF_MAX_S + 0.2)
    assert await _used(relay) == 6


async def _used(relay: TestClient) -> int:
    resp = await relay.get("/api/relay/usage/", headers={"Authorization": "Bearer s3cret-token"})
    assert resp.status == 200
    rows = (await resp.json())["usage"]
    return int(next(r["used"] for r in rows if r["scope_id"] == "42"))
