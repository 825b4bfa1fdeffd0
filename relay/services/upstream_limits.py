"""Rate limits the upstream answered with (429), cached per upstream key and category.

While a limit is active the relay answers the SDK itself, with the same limit,
and does not contact the upstream for that key and category.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from relay.protocol.ratelimit_header import RateLimit


class UpstreamLimits:
    """Active upstream limits: `{key: [(expires_at, RateLimit)]}`."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._limits: dict[str, list[tuple[float, RateLimit]]] = {}

    def add(self, key: str, limits: Iterable[RateLimit]) -> None:
        now = self._clock()
        active = self._active(key, now)
        for limit in limits:
            active.append((now + limit.retry_after, limit))
        if active:
            self._limits[key] = active

    def _active(self, key: str, now: float) -> list[tuple[float, RateLimit]]:
        entries = self._limits.get(key)
        if not entries:
            return []
        alive = [(t, lim) for t, lim in entries if t > now]
        if alive:
            self._limits[key] = alive
        else:
            self._limits.pop(key, None)
        return alive

    def has(self, key: str) -> bool:
        """Whether any limit (possibly expired) is kept for `key`: a cheap pre-check."""
        return key in self._limits

    def check(self, key: str, category: str) -> RateLimit | None:
        """The longest active limit for this key that covers `category`, with remaining time."""
        now = self._clock()
        best: tuple[float, RateLimit] | None = None
        for expires, limit in self._active(key, now):
            if limit.applies_to(category) and (best is None or expires > best[0]):
                best = (expires, limit)
        if best is None:
            return None
        expires, limit = best
        return RateLimit(
            expires - now, limit.categories, limit.scope, limit.reason, limit.namespaces
        )

    def __len__(self) -> int:
        return sum(len(v) for v in self._limits.values())
