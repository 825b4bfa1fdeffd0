"""Fixtures: a settable clock, and limiters of either backend on a real redis-server."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest

from relay.config import RedisConfig, Secret
from relay.config.base import dec_hook
from relay.config.quotas import BudgetConfig, QuotaConfig, SpikeProtectionConfig
from relay.processing.quotas import CompiledQuotas, compile_quotas
from relay.services.limiter import Limiter, create_limiter
from tests.support.redis_server import RedisServer

_prefixes = itertools.count()


class Clock:
    """Unix seconds that only move when a test says so."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def set(
        self, year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
    ) -> None:
        self.now = datetime(year, month, day, hour, minute, second, tzinfo=UTC).timestamp()

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock(datetime(2026, 3, 10, 12, 30, 15, tzinfo=UTC).timestamp())


def redis_config(url: str, **kw: Any) -> RedisConfig:
    """A Redis limiter's config; without the quota cache unless `kw` asks for it."""
    kw.setdefault("prefix", f"t{next(_prefixes)}")
    kw.setdefault("quota_cache_ratio", 0)
    return RedisConfig(url=Secret(url), **kw)


def quotas(
    *entries: dict[str, Any],
    budgets: list[dict[str, Any]] | None = None,
    spike: dict[str, Any] | None = None,
) -> CompiledQuotas:
    """Compile quota dicts as they would appear in YAML."""
    return compile_quotas(
        [msgspec.convert(e, QuotaConfig, dec_hook=dec_hook) for e in entries],
        [msgspec.convert(b, BudgetConfig, dec_hook=dec_hook) for b in budgets or []],
        None if spike is None else msgspec.convert(spike, SpikeProtectionConfig),
    )


MakeLimiter = Callable[..., Limiter]


@pytest.fixture(params=["memory", "redis", "redis-py", "redis-cached", "redis-reserved"])
async def make_limiter(
    request: pytest.FixtureRequest, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[MakeLimiter]:
    """Build limiters of the parametrized backend; redis ones share one server and prefix.
    `redis` flushes on the bare connection, `redis-py` on redis-py's (as TLS and Sentinel
    targets do); both without the quota cache, every check asking Redis. `redis-cached`
    has a quota cache in `share` mode (half of each counter's room), which one limiter
    alone must never let past a limit; `redis-reserved` one in `reserve` mode (the
    default), which no number of limiters may let past a limit."""
    made: list[Limiter] = []
    backend = request.param
    server: RedisServer | None = (
        request.getfixturevalue("redis_server") if backend != "memory" else None
    )
    if backend == "redis-py":
        monkeypatch.setattr("relay.services.limiter.redis.BARE_CONNECTION", False)
    prefix = f"t{next(_prefixes)}"

    def make(**kw: Any) -> Limiter:
        if server is None:
            limiter = create_limiter(None, clock=kw.pop("clock", clock))
        else:
            kw.setdefault("prefix", prefix)
            if backend == "redis-cached":
                kw.setdefault("quota_cache_ratio", 0.5)
                kw.setdefault("quota_cache_mode", "share")
            elif backend == "redis-reserved":
                kw.setdefault("quota_cache_ratio", 0.5)
            limiter = create_limiter(
                redis_config(server.url, **{k: v for k, v in kw.items() if k != "clock"}),
                clock=kw.get("clock", clock),
            )
        made.append(limiter)
        return limiter

    make.backend = backend  # type: ignore[attr-defined]
    yield make
    for limiter in made:
        await limiter.close()


@pytest.fixture(params=["bare", "redis-py"])
def flush_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Which connection the Redis limiter's flushes use: its bare one, or redis-py's."""
    if request.param == "redis-py":
        monkeypatch.setattr("relay.services.limiter.redis.BARE_CONNECTION", False)
    return str(request.param)
