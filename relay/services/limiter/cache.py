"""Active limits: counters known to be full, remembered in-process until their window ends.

A counter is cached only when it has no room left at all (`used >= limit`). Counters
only grow within a window, so such a counter rejects every further item until the
window ends, and answering from the cache is exact: a limited SDK costs no Redis call.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class CachedLimit:
    """Why a full counter rejects, and until when (Unix seconds on the limiter's clock)."""

    expires_at: float
    quota_id: str
    reason: str
    scope: str
    #: Categories an SDK should stop sending (`X-Sentry-Rate-Limits`).
    categories: tuple[str, ...]


class ActiveLimits:
    """Full counters by key.

    Parameters:
        max_entries: bound on remembered counters; when reached, expired entries are
            dropped first, then the oldest ones (forgetting only costs a Redis call).
    """

    def __init__(self, max_entries: int = 100_000) -> None:
        self._entries: dict[str, CachedLimit] = {}
        self._max_entries = max_entries

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, key: str, limit: CachedLimit, now: float) -> None:
        if len(self._entries) >= self._max_entries and key not in self._entries:
            self.prune(now)
            while len(self._entries) >= self._max_entries:
                del self._entries[next(iter(self._entries))]
        self._entries[key] = limit

    def lookup(self, keys: Iterable[str], now: float) -> CachedLimit | None:
        """The active limit among `keys` that lasts longest, or None."""
        found: CachedLimit | None = None
        for key in keys:
            entry = self._entries.get(key)
            if entry is None:
                continue
            if entry.expires_at <= now:
                del self._entries[key]
                continue
            if found is None or entry.expires_at > found.expires_at:
                found = entry
        return found

    def discard(self, key: str) -> None:
        self._entries.pop(key, None)

    def prune(self, now: float) -> None:
        for key in [k for k, v in self._entries.items() if v.expires_at <= now]:
            del self._entries[key]

    def clear(self) -> None:
        self._entries.clear()
