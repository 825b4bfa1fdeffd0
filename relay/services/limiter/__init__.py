"""Spend control at run time: quotas, budgets and spike protection, never past a limit
(unless the quota cache's `share` mode trades that across processes for fewer calls).

    limiter = create_limiter(config.redis)            # None: in-process counters
    compiled = compile_policy_quotas(config.policy, project.policy)   # once per revision
    result = await limiter.check(Scoping(42, key), [("error", 1)], compiled)
    result.rejected          # {category: Rejection(quota_id, reason, rate_limit)}
    result.rate_limits()     # for X-Sentry-Rate-Limits
    rows = await limiter.usage([(Scoping(42, key), compiled)])
    limiter.redis_errors     # checks decided without Redis (relay_redis_errors_total)
    await limiter.close()

Modules: `core` (results and the shared check), `memory` (in-process backend),
`redis` (Redis backend and `script.lua`), `cache` (full counters remembered until
their window ends), `share` (the quota cache: part of a counter's room accepted without
asking Redis, reserved there first by default).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterable
from typing import Protocol

from relay.config import RedisConfig
from relay.processing.quotas import CompiledQuotas, Counter, Scoping
from relay.services.limiter.core import (
    REDIS_UNAVAILABLE,
    DryRunHit,
    LimiterUnavailable,
    LimitResult,
    Rejection,
    UsageRow,
)
from relay.services.limiter.memory import MemoryLimiter
from relay.services.limiter.share import QuotaShare

__all__ = [
    "REDIS_UNAVAILABLE",
    "DryRunHit",
    "LimitResult",
    "Limiter",
    "LimiterUnavailable",
    "MemoryLimiter",
    "Rejection",
    "UsageRow",
    "create_limiter",
]


class Limiter(Protocol):
    """Counts envelopes against quotas, budgets and spike protection."""

    @property
    def redis_errors(self) -> int:
        """Checks decided without the store because it failed."""
        ...

    @property
    def share(self) -> QuotaShare | None:
        """The quota cache (`redis.quota_cache_ratio`), if there is one."""
        ...

    async def check(
        self,
        scope: Scoping,
        quantities: list[tuple[str, int]],
        quotas: CompiledQuotas,
        left: Callable[[Collection[str]], Collection[str]] | None = None,
    ) -> LimitResult:
        """Consume what fits, per category all-or-nothing; say what was rejected. `left`
        names the categories still kept once those rejected before counting are dropped:
        no other is counted."""
        ...

    async def usage(self, scopes: Iterable[tuple[Scoping, CompiledQuotas]]) -> list[UsageRow]:
        """Used, limit and window end of every counter the scopes reach."""
        ...

    async def refund(self, counters: Iterable[Counter]) -> None:
        """Take back what a check counted (`LimitResult.consumed`); best effort."""
        ...

    async def close(self) -> None: ...


def create_limiter(redis: RedisConfig | None, *, clock: Callable[[], float] = time.time) -> Limiter:
    """A Redis limiter for a `redis` section, else the in-process one.

    Parameters:
        redis: the `redis` config section; None counts in this process only.
        clock: Unix seconds; tests pass their own to replay time.
    """
    if redis is None:
        return MemoryLimiter(clock=clock)
    from relay.services.limiter.redis import RedisLimiter

    return RedisLimiter.from_config(redis, clock=clock)
