"""Rate limits the upstream answered with (429), cached per upstream key and category.

While a limit is active the relay answers the SDK itself, with the same limit,
and does not contact the upstream for that key and category.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import replace

from relay.protocol.ratelimit_header import RateLimit


class UpstreamLimits:
    """Active upstream limits: `{key: {limit without its time: expires_at}}`.

    A limit the upstream names again (the same categories, scope, reason and namespaces)
    replaces the one kept when it runs longer, as Sentry's Relay merges them: an upstream
    that repeats its limits on every answer (a 200 may carry them too) keeps one entry per
    limit, not one per answer, so a check stays as cheap as the limits are few.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._limits: dict[str, dict[RateLimit, float]] = {}

    def add(self, key: str, limits: Iterable[RateLimit]) -> None:
        now = self._clock()
        active = self._active(key, now)
        for limit in limits:
            expires = now + limit.retry_after
            if expires <= now:
                continue
            name = replace(limit, retry_after=0.0)
            if active.get(name, 0.0) < expires:
                active[name] = expires
        if active:
            self._limits[key] = active

    def _active(self, key: str, now: float) -> dict[RateLimit, float]:
        entries = self._limits.get(key)
        if not entries:
            return {}
        if any(t <= now for t in entries.values()):
            entries = {lim: t for lim, t in entries.items() if t > now}
            if entries:
                self._limits[key] = entries
            else:
                self._limits.pop(key, None)
        return entries

    def has(self, key: str) -> bool:
        """Whether any limit (possibly expired) is kept for `key`: a cheap pre-check."""
        return key in self._limits

    def check(self, key: str, category: str) -> RateLimit | None:
        """The longest active limit for this key that covers `category`, with remaining time."""
        now = self._clock()
        best: tuple[float, RateLimit] | None = None
        for limit, expires in self._active(key, now).items():
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
