"""Active limits: counters known to have too little room, remembered in-process until
their window ends.

A counter is cached when a check found it without room for what was asked: full
(`used >= limit`, room 0), or with `room` left but less than a demand needed (a
transaction's spans, an attachment's bytes: quantities above 1 leave a counter over
for them yet not full). Counters only grow within a window, so a later demand larger
than the cached room is rejected exactly as the store would reject it, without asking
it; a demand that fits the room is asked as usual. (Refunds shrink a counter: the
limiter forgets the counters it gives back to.)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace


@dataclass(frozen=True, slots=True)
class CachedLimit:
    """Why a counter rejects demands above `room`, and until when (Unix seconds on the
    limiter's clock)."""

    expires_at: float
    quota_id: str
    reason: str
    scope: str
    #: Categories an SDK should stop sending (`X-Sentry-Rate-Limits`).
    categories: tuple[str, ...]
    #: The counter's limit when it was cached: under another limit (a reload, a new spike
    #: threshold) the entry says nothing and is dropped.
    limit: int
    #: What still fits (0: the counter is full).
    room: int = 0
    #: When the counter's window ends, for Retry-After (0: at `expires_at`). The entry
    #: itself may expire sooner, when the store is to be asked again.
    window_end: float = 0.0


class ActiveLimits:
    """Counters with too little room, by key.

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

    def lookup(
        self, demands: Iterable[tuple[str, int, int | None]], now: float
    ) -> CachedLimit | None:
        """Of the active limits of the (key, increment, limit) `demands` that reject their
        increment, the one that lasts longest; or None. A limit of None (a spike threshold
        not looked up yet, fixed for its hour-long window) matches any entry."""
        found: CachedLimit | None = None
        for key, increment, limit in demands:
            entry = self._entries.get(key)
            if entry is None:
                continue
            if entry.expires_at <= now or (limit is not None and entry.limit != limit):
                del self._entries[key]
                continue
            if increment > entry.room and (found is None or entry.expires_at > found.expires_at):
                found = entry
        return found

    def narrow(self, key: str, room: int) -> None:
        """A check counted on `key` and left it `room`: a cached entry keeps the smaller room."""
        entry = self._entries.get(key)
        if entry is not None and room < entry.room:
            self._entries[key] = replace(entry, room=room)

    def discard(self, key: str) -> None:
        self._entries.pop(key, None)

    def prune(self, now: float) -> None:
        for key in [k for k, v in self._entries.items() if v.expires_at <= now]:
            del self._entries[key]

    def clear(self) -> None:
        self._entries.clear()
