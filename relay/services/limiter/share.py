"""The quota cache: a share of a counter's remaining room, accepted in this process
without asking the store, and added to the store later (`redis.quota_cache_ratio`).

After the store answers a check, each counter it counted on gets a share here:
`ratio` of the room the store reported (limit minus value), none once the value has
reached `max_fraction` of the limit. Later demands that fit every one of their
counters' shares are accepted from them, in this process alone; the first that does
not goes to the store as usual, and what was accepted here since the last answer is
added to the store first, in the same script call, so the store checks it against
the real total. A timer adds what is still unsynced now and then (`SYNC_S`), and
`close` adds the rest, so usage reports lag by about a second at most.

What it gives up is exactness across processes: each process may accept up to its
share before the others see it, so N processes can together accept up to about
N x `ratio` of the room past what an exact count would (at most `ratio` of it each,
the first time; shares shrink as the room does). One process alone never accepts past
the limit. Near the limit (`max_fraction`) every check asks the store again. Budgets
(spend) get no share: a demand that counts against one always asks the store.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, replace

from relay.processing.quotas import CategoryDemand, Counter

#: Seconds between two additions of what was accepted here to the store.
SYNC_S = 1.0
#: Category name of the demands that add unsynced amounts (never rejected: no limit).
SYNC_CATEGORY = "quota_cache_sync"


@dataclass(slots=True)
class _Share:
    counter: Counter
    limit: int
    #: What this process may still accept on the counter without asking the store.
    allowance: int
    #: The counter's value as this process knows it: the store's at its last answer,
    #: plus what was accepted here since.
    known: int
    #: Accepted here, not added to the store yet.
    unsynced: int = 0


class QuotaShare:
    """Shares of counters' room, by key.

    Parameters:
        ratio: the share of a counter's room accepted here (0 < ratio < 1).
        max_fraction: no share once a counter's value reaches this fraction of its limit.
        prefix: the limiter's key prefix.
        max_entries: bound on remembered counters (a forgotten one only costs a store call).
    """

    def __init__(
        self, ratio: float, max_fraction: float, prefix: str, max_entries: int = 100_000
    ) -> None:
        self.ratio = ratio
        self.max_fraction = max_fraction
        self.prefix = prefix
        self.max_entries = max_entries
        self._shares: dict[str, _Share] = {}
        #: Demands accepted from shares (`relay_quota_cache_hits_total`).
        self.hits = 0

    def __len__(self) -> int:
        return len(self._shares)

    @property
    def unsynced(self) -> int:
        """Everything accepted here and not yet in the store."""
        return sum(s.unsynced for s in self._shares.values())

    def take(self, demand: CategoryDemand, now: float) -> list[int] | None:
        """Accept `demand` from its counters' shares: their values before it (as this
        process knows them), or None when a share is missing or too small."""
        shares = self._shares
        found: list[_Share] = []
        for counter in demand.counters:
            share = shares.get(counter.key(self.prefix))  # budgets never have one
            if (
                share is None
                or share.allowance < counter.increment
                or share.limit != counter.limit
                or counter.window_end <= now
            ):
                return None
            found.append(share)
        values = []
        for share, counter in zip(found, demand.counters, strict=True):
            values.append(share.known)
            share.known += counter.increment
            share.allowance -= counter.increment
            share.unsynced += counter.increment
        self.hits += 1
        return values

    def drain(self, demands: Iterable[CategoryDemand], now: float) -> list[CategoryDemand]:
        """These demands go to the store: what was accepted here on their counters, as
        demands that add it there (send them first); unsynced is reset. Their shares
        give nothing until the store's answer (`learn`): what the store counts for
        them meanwhile is room no share may hand out twice."""
        counters = []
        for demand in demands:
            for counter in demand.counters:
                share = self._shares.get(counter.key(self.prefix))
                if share is not None:
                    share.allowance = 0
                    if share.unsynced:
                        counters.append(self._push(share))
        return self._as_demands(counters, now)

    def give_back(self, key: str, amount: int) -> int:
        """A refund of `amount` on `key`: taken from what is unsynced here first. Returns
        the part the store must give back."""
        share = self._shares.get(key)
        if share is None:
            return amount
        local = min(share.unsynced, amount)
        share.unsynced -= local
        share.known -= amount
        return amount - local

    def drain_all(self, now: float) -> list[CategoryDemand]:
        """Everything unsynced, as demands that add it to the store; forgets the shares
        of windows that have ended."""
        counters = [self._push(s) for s in self._shares.values() if s.unsynced]
        for key in [k for k, s in self._shares.items() if s.counter.window_end <= now]:
            del self._shares[key]
        return self._as_demands(counters, now)

    def restore(self, pushes: Iterable[CategoryDemand]) -> None:
        """The store did not take `pushes`: their amounts are unsynced again."""
        for demand in pushes:
            for counter in demand.counters:
                share = self._shares.get(counter.key(self.prefix))
                if share is not None:
                    share.unsynced += counter.increment

    def learn(self, demand: CategoryDemand, consumed: bool, values: list[int]) -> None:
        """The store's answer to `demand`: its counters' values before it. A counted
        demand gives each counter a share of its room; a rejected one ends them."""
        shares = self._shares
        for counter, before in zip(demand.counters, values, strict=True):
            if counter.limit is None or (
                counter.quota is not None and counter.quota.kind == "budget"
            ):
                continue  # spend is always counted in the store first
            key = counter.key(self.prefix)
            share = shares.get(key)
            if share is None or share.limit != counter.limit:
                if not consumed:
                    continue
                if len(shares) >= self.max_entries:
                    # The full table is rare: keep the shares with something unsynced.
                    for old in [k for k, s in shares.items() if not s.unsynced]:
                        del shares[old]
                    if len(shares) >= self.max_entries:
                        continue
                share = shares[key] = _Share(counter, counter.limit, 0, 0, 0)
            # Accepted here while this answer was on its way: still unsynced, on top.
            known = before + (counter.increment if consumed else 0) + share.unsynced
            share.known = known
            limit = counter.limit
            if not consumed or known >= limit * self.max_fraction:
                share.allowance = 0
            else:
                share.allowance = math.floor((limit - known) * self.ratio)

    def _push(self, share: _Share) -> Counter:
        amount, share.unsynced = share.unsynced, 0
        return replace(share.counter, increment=amount, gating=False)

    @staticmethod
    def _as_demands(counters: list[Counter], now: float) -> list[CategoryDemand]:
        # A counter whose window has ended is not recreated in the store.
        live = [c for c in counters if c.window_end > now]
        if not live:
            return []
        return [CategoryDemand(SYNC_CATEGORY, 0, live)]
