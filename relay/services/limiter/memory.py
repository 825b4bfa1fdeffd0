"""The in-process limiter: the same semantics as Redis, for one process.

Counters live in a dict keyed exactly like the Redis keys, each with an expiry on the
limiter's clock. A check runs without awaiting in between, so on one event loop it is
as atomic as the Lua script is in Redis. Used by the embedded single-process default
and by tests; several processes each count on their own.
"""

from __future__ import annotations

import time

from relay.processing.quotas import CategoryDemand
from relay.services.limiter.core import BaseLimiter, Clock

#: Expired counters are swept at most this often (clock seconds).
_SWEEP_INTERVAL = 60.0


class MemoryLimiter(BaseLimiter):
    """In-process counters.

    Parameters:
        clock: Unix seconds; windows and counter expiry follow it.
        prefix: first part of every counter key (kept for identical keys and reports).
    """

    def __init__(self, *, clock: Clock = time.time, prefix: str = "relay") -> None:
        super().__init__(clock=clock, on_error="allow", prefix=prefix)
        self._counters: dict[str, tuple[int, float]] = {}
        self._next_sweep = 0.0

    def _get(self, key: str, now: float) -> int:
        entry = self._counters.get(key)
        if entry is None:
            return 0
        if entry[1] <= now:
            del self._counters[key]
            return 0
        return entry[0]

    async def _consume(self, demands: list[CategoryDemand]) -> list[tuple[bool, list[int]]]:
        now = self._clock()
        self._sweep(now)
        answers: list[tuple[bool, list[int]]] = []
        for demand in demands:
            keys = [c.key(self.prefix) for c in demand.counters]
            values = [self._get(k, now) for k in keys]
            fits = all(
                not c.gating or v + c.increment <= (c.limit or 0)
                for c, v in zip(demand.counters, values, strict=True)
            )
            if fits:
                for key, counter, value in zip(keys, demand.counters, values, strict=True):
                    old = self._counters.get(key)
                    expires = old[1] if old is not None else now + counter.ttl
                    self._counters[key] = (value + counter.increment, expires)
            answers.append((fits, values))
        return answers

    async def _give_back(self, amounts: list[tuple[str, int]]) -> None:
        for key, amount in amounts:
            entry = self._counters.get(key)
            if entry is not None:
                self._counters[key] = (max(0, entry[0] - amount), entry[1])

    async def _read(self, keys: list[str]) -> list[int]:
        now = self._clock()
        return [self._get(k, now) for k in keys]

    def _sweep(self, now: float) -> None:
        if now < self._next_sweep:
            return
        self._next_sweep = now + _SWEEP_INTERVAL
        for key in [k for k, (_, exp) in self._counters.items() if exp <= now]:
            del self._counters[key]

    async def close(self) -> None:
        self._counters.clear()
