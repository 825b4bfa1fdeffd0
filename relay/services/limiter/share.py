"""The quota cache: room on a counter that this process may accept without asking the
store (`redis.quota_cache_ratio`, `redis.quota_cache_mode`).

Two modes. In both, demands that fit every one of their counters' allowances are
accepted here, in this process alone, and the first that does not goes to the store as
usual. They differ in when the store learns of it.

`reserve` (the default): the allowance is counted in the store before anything is
accepted from it. When a demand goes to the store, a reservation for each of its
counters rides in the same script call, after the demand: a further amount the store
adds to the counter only if it fits under the limit, as it would for a demand. What the
store grants is this process's allowance. A reservation follows the traffic: twice what
the process accepted here in the last sync interval (`RESERVE_MIN` at least), doubled each
time one runs out before the next sync, and at least `RESERVE_DEMANDS` times the demand that
asks for it; never more than `ratio` of the room the store last reported, and none once the
counter has reached `max_fraction` of its limit. Every second or so (`SYNC_S`) each
allowance is brought to that size (`roll`): the excess goes back, a shortfall is reserved
while what is left goes on serving (so a counter in steady use never has a demand wait
for the store), and an allowance unused since the last sync goes back whole. What is left
of an allowance also goes back when a demand on the counter goes to the store (first in
the same call, so the store judges the demand without it), when its window ends, before a
usage report, and on `close`. So no counter ever passes its limit, across any
number of processes. What it gives up: until an allowance goes back, other processes see
it as used, so near a limit one process may refuse what another still holds room for
(for a second or so, and never more than that process's reservation); and a process that
dies without closing leaves its allowance counted until the window ends (about two
seconds of its traffic, at most `ratio` of the room).

`share`: after the store answers a check, each counter it counted on gets an allowance of
`ratio` of the room the store reported, none once the value has reached `max_fraction`
of the limit. It is not counted in the store first: what was accepted here since the
last answer is added to the store before the next demand that goes there, in the same
script call, so the store checks it against the real total, and a timer adds what is
still unsynced now and then (`SYNC_S`). One process alone never accepts past the limit,
but N processes can together accept up to about N x `ratio` of the room past what an
exact count would (at most `ratio` of it each, the first time; shares shrink as the
room does).

Usage reports lag by about a second at most in both. Budgets (spend) get no allowance in
either: a demand that counts against one always asks the store.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, replace

from relay.processing.quotas import CategoryDemand, Counter

#: Seconds between two syncs with the store (unsynced amounts added, allowances given back).
SYNC_S = 1.0
#: Category name of the demands that add unsynced amounts or give allowances back (never
#: rejected: no limit).
SYNC_CATEGORY = "quota_cache_sync"
#: Category name of the demands that reserve an allowance.
RESERVE_CATEGORY = "quota_cache_reserve"
#: The first reservation on a counter, and the least one.
RESERVE_MIN = 16
#: A reservation holds at least this many of the demand that asks for it.
RESERVE_DEMANDS = 4
#: Bound on a reservation's size before the `ratio` cap (sizes double while in use).
_RESERVE_MAX = 1 << 40
#: Modes of `redis.quota_cache_mode`.
MODES = ("reserve", "share")


@dataclass(slots=True)
class _Share:
    counter: Counter
    limit: int
    #: What this process may still accept on the counter without asking the store (in
    #: `reserve` mode: counted in the store already).
    allowance: int
    #: The counter's value as this process knows it: the store's at its last answer,
    #: plus what was accepted here since (`reserve`: without this process's allowance).
    known: int
    #: Accepted here, not added to the store yet (`share` mode).
    unsynced: int = 0
    #: `reserve`: a reservation is on its way to the store.
    pending: bool = False
    #: `reserve`: the size of the next reservation, before the `ratio` cap.
    size: int = RESERVE_MIN
    #: `reserve`: accepted here since the last sync (sizes the reservations after it).
    taken: int = 0


class QuotaShare:
    """Allowances on counters, by key.

    Parameters:
        ratio: the share of a counter's room accepted here (0 < ratio < 1).
        max_fraction: no allowance once a counter's value reaches this fraction of its limit.
        prefix: the limiter's key prefix.
        max_entries: bound on remembered counters (a forgotten one only costs a store call).
        mode: `reserve` or `share` (see the module).
    """

    def __init__(
        self,
        ratio: float,
        max_fraction: float,
        prefix: str,
        max_entries: int = 100_000,
        mode: str = "reserve",
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown quota cache mode {mode!r}")
        self.ratio = ratio
        self.max_fraction = max_fraction
        self.prefix = prefix
        self.max_entries = max_entries
        self.reserve = mode == "reserve"
        self._shares: dict[str, _Share] = {}
        #: `reserve`: allowances of forgotten counters, given back with the next sync.
        self._orphans: list[Counter] = []
        #: `reserve`: the earliest end of a window this process holds an allowance in.
        self._next_end = math.inf
        #: Demands accepted from allowances (`relay_quota_cache_hits_total`).
        self.hits = 0

    def __len__(self) -> int:
        return len(self._shares)

    @property
    def unsynced(self) -> int:
        """Everything accepted here and not yet in the store (`share` mode)."""
        return sum(s.unsynced for s in self._shares.values())

    @property
    def holding(self) -> bool:
        """`reserve`: whether an allowance may still be held (then a sync is due)."""
        return self._next_end != math.inf

    @property
    def reserved(self) -> int:
        """What the store counts for this process and it has not accepted (`reserve`)."""
        return sum(s.allowance for s in self._shares.values()) if self.reserve else 0

    def take(self, demand: CategoryDemand, now: float) -> list[int] | None:
        """Accept `demand` from its counters' allowances: their values before it (as this
        process knows them), or None when an allowance is missing or too small."""
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
        reserve = self.reserve
        for share, counter in zip(found, demand.counters, strict=True):
            values.append(share.known)
            share.known += counter.increment
            share.allowance -= counter.increment
            if reserve:
                share.taken += counter.increment
            else:
                share.unsynced += counter.increment
        self.hits += 1
        return values

    def drain(self, demands: Iterable[CategoryDemand], now: float) -> list[CategoryDemand]:
        """These demands go to the store: what to send first, on their counters.

        `share`: what was accepted here on them, as demands that add it; unsynced is
        reset, and their allowances give nothing until the store's answer (`learn`): what
        the store counts for them meanwhile is room no share may hand out twice.
        `reserve`: what is left of their allowances, as demands that give it back, so
        that the store judges the demands without it."""
        counters = []
        reserve = self.reserve
        if reserve and now >= self._next_end:
            counters += self._ended(now)
        for demand in demands:
            for counter in demand.counters:
                share = self._shares.get(counter.key(self.prefix))
                if share is None:
                    continue
                if reserve:
                    if share.allowance:
                        counters.append(self._give(share))
                else:
                    share.allowance = 0
                    if share.unsynced:
                        counters.append(self._push(share))
        return self._as_demands(counters, now)

    def reservations(self, demands: Iterable[CategoryDemand], now: float) -> list[CategoryDemand]:
        """`reserve`: the reservations to send after these demands, one demand per counter
        (each granted or refused on its own). Each is pending until `granted` or
        `abandon`."""
        if not self.reserve:
            return []
        out: list[CategoryDemand] = []
        for demand in demands:
            for counter in demand.counters:
                share = self._shares.get(counter.key(self.prefix))
                if (
                    share is None
                    or share.pending
                    or share.limit != counter.limit
                    or counter.window_end <= now
                ):
                    continue
                limit = share.limit
                known = share.known + counter.increment
                if known >= limit * self.max_fraction:
                    continue
                # At least a few of this demand (bytes of an attachment, say), so that the
                # next ones of its size fit.
                size = max(share.size, RESERVE_DEMANDS * counter.increment)
                amount = min(size, math.floor((limit - known) * self.ratio))
                if amount < 1:
                    continue
                share.pending = True
                out.append(
                    CategoryDemand(RESERVE_CATEGORY, 0, [replace(counter, increment=amount)])
                )
        return out

    def granted(
        self,
        reservations: list[CategoryDemand],
        answers: list[tuple[bool, list[int]]],
        grow: bool = True,
    ) -> bool:
        """The store's answers to `reservations`. Returns whether it granted any (there is
        then something to give back with a sync). `grow`: a granted reservation doubles the
        next one's size (one that a demand asked for: the allowance ran out before the
        sync); not for the sync's own (`roll`), sized by the traffic already."""
        any_granted = False
        for demand, (consumed, values) in zip(reservations, answers, strict=True):
            [counter] = demand.counters
            share = self._shares.get(counter.key(self.prefix))
            if share is None or share.limit != counter.limit:
                # Forgotten meanwhile: what the store granted goes back with the next sync.
                if consumed:
                    self._orphans.append(
                        replace(counter, increment=-counter.increment, gating=False)
                    )
                    any_granted = True
                continue
            share.pending = False
            if not consumed:
                continue
            any_granted = True
            self._next_end = min(self._next_end, counter.window_end)
            # The store's value before the reservation, without what this process still
            # holds from before it.
            share.known = values[0] - share.allowance
            share.allowance += counter.increment
            if grow:
                share.size = min(2 * share.size, _RESERVE_MAX)
        return any_granted

    def abandon(self, reservations: Iterable[CategoryDemand]) -> None:
        """The store was not reached: these reservations are not pending any more (if the
        store granted one all the same, its amount stays counted until the window ends:
        too little accepted, never too much)."""
        for demand in reservations:
            for counter in demand.counters:
                share = self._shares.get(counter.key(self.prefix))
                if share is not None:
                    share.pending = False

    def give_back(self, key: str, amount: int) -> int:
        """A refund of `amount` on `key`. Returns the part the store must give back.

        `share`: taken from what is unsynced here first. `reserve`: all of it becomes
        allowance again (the store still counts it for this process)."""
        share = self._shares.get(key)
        if share is None:
            return amount
        if self.reserve:
            share.allowance += amount
            share.known -= amount
            self._next_end = min(self._next_end, share.counter.window_end)
            return 0
        local = min(share.unsynced, amount)
        share.unsynced -= local
        share.known -= amount
        return amount - local

    def drain_all(self, now: float) -> list[CategoryDemand]:
        """The sync: everything unsynced, as demands that add it to the store (`share`), or
        every allowance, as demands that give it back (`reserve`); forgets the counters of
        windows that have ended."""
        counters, self._orphans = self._orphans, []
        if self.reserve:
            self._next_end = math.inf
            for share in self._shares.values():
                share.size = max(RESERVE_MIN, min(2 * share.taken, _RESERVE_MAX))
                share.taken = 0
                if share.allowance:
                    counters.append(self._give(share))
        else:
            counters += [self._push(s) for s in self._shares.values() if s.unsynced]
        for key in [k for k, s in self._shares.items() if s.counter.window_end <= now]:
            del self._shares[key]
        return self._as_demands(counters, now)

    def roll(self, now: float) -> tuple[list[CategoryDemand], list[CategoryDemand]]:
        """The periodic sync in `reserve` mode: what to give back, and the reservations to
        send after it (pending until `granted` or `abandon`), so that a counter in use
        keeps an allowance across syncs.

        Each counter that was used since the last sync is brought to its next size (twice
        what was accepted from it, `RESERVE_MIN` at least, never more than `ratio` of the
        room): the excess goes back, or the shortfall is reserved while what is left of
        the allowance goes on serving, so that steady traffic never has a demand wait for
        the store. A counter not used since gives everything back, as `drain_all` does;
        so do the counters of windows that have ended (`_ended`).
        `share` mode: `drain_all`, no reservations."""
        if not self.reserve:
            return self.drain_all(now), []
        counters, self._orphans = self._orphans, []
        counters += self._ended(now)
        reservations: list[CategoryDemand] = []
        next_end = math.inf
        for share in self._shares.values():
            counter = share.counter
            if counter.window_end <= now:  # ended, with a reservation on its way
                continue
            taken, share.taken = share.taken, 0
            share.size = max(RESERVE_MIN, min(2 * taken, _RESERVE_MAX))
            target = 0
            if share.pending:  # a demand's reservation is on its way: left as it is
                target = share.allowance
            elif taken and share.known < share.limit * self.max_fraction:
                target = min(share.size, math.floor((share.limit - share.known) * self.ratio))
            if share.allowance > target:
                counters.append(replace(counter, increment=target - share.allowance, gating=False))
                share.allowance = target
            elif share.allowance < target:
                share.pending = True
                amount = target - share.allowance
                reservations.append(
                    CategoryDemand(RESERVE_CATEGORY, 0, [replace(counter, increment=amount)])
                )
            if share.allowance:
                next_end = min(next_end, counter.window_end)
        self._next_end = next_end
        return self._as_demands(counters, now), reservations

    def restore(self, pushes: Iterable[CategoryDemand]) -> None:
        """The store did not take `pushes`: their amounts are unsynced again (`share`).

        `reserve`: allowances that were on their way back are not restored: the store may
        have taken them back before failing, and holding them twice could pass a limit.
        Lost, they stay counted until their window ends."""
        if self.reserve:
            return
        for demand in pushes:
            for counter in demand.counters:
                share = self._shares.get(counter.key(self.prefix))
                if share is not None:
                    share.unsynced += counter.increment

    def learn(self, demand: CategoryDemand, consumed: bool, values: list[int]) -> None:
        """The store's answer to `demand`: its counters' values before it.

        `share`: a counted demand gives each counter a share of its room; a rejected one
        ends them. `reserve`: the answer updates what is known of each counter; the next
        demand that goes to the store asks for a reservation on it."""
        shares = self._shares
        reserve = self.reserve
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
                    # The full table is rare: keep the shares with something to sync.
                    for old in [
                        k for k, s in shares.items() if not (s.unsynced or s.allowance or s.pending)
                    ]:
                        del shares[old]
                    if len(shares) >= self.max_entries:
                        continue
                if share is not None and (share.allowance if reserve else share.unsynced):
                    # Held (or accepted) under another limit: synced with the next sync.
                    self._orphans.append(self._give(share) if reserve else self._push(share))
                share = shares[key] = _Share(counter, counter.limit, 0, 0, 0)
            limit = counter.limit
            if reserve:
                # The store's value counts what this process still holds: not used yet.
                share.known = before + (counter.increment if consumed else 0) - share.allowance
                continue
            # Accepted here while this answer was on its way: still unsynced, on top.
            known = before + (counter.increment if consumed else 0) + share.unsynced
            share.known = known
            if not consumed or known >= limit * self.max_fraction:
                share.allowance = 0
            else:
                share.allowance = math.floor((limit - known) * self.ratio)

    def ended(self, now: float) -> list[CategoryDemand]:
        """`reserve`: demands that give back the allowances of windows that have ended, if
        any (before reading a counter's history)."""
        if not self.reserve or now < self._next_end:
            return []
        return self._as_demands(self._ended(now), now)

    def _ended(self, now: float) -> list[Counter]:
        """`reserve`: gives back the allowances of windows that have ended (a counter's
        count stays its window's history, which spike protection reads), and forgets them."""
        out = []
        next_end = math.inf
        for key, share in list(self._shares.items()):
            end = share.counter.window_end
            if end <= now:
                if share.allowance:
                    out.append(self._give(share))
                if not share.pending:
                    del self._shares[key]
            elif share.allowance and end < next_end:
                next_end = end
        self._next_end = next_end
        return out

    def _push(self, share: _Share) -> Counter:
        amount, share.unsynced = share.unsynced, 0
        return replace(share.counter, increment=amount, gating=False)

    @staticmethod
    def _give(share: _Share) -> Counter:
        amount, share.allowance = share.allowance, 0
        return replace(share.counter, increment=-amount, gating=False)

    @staticmethod
    def _as_demands(counters: list[Counter], now: float) -> list[CategoryDemand]:
        # A counter whose window has ended is not recreated in the store (what is given
        # back never creates one), except a spike counter (`s:`): an ended hour is
        # the history spike thresholds are read from, and its key outlives it for that.
        # One demand per counter: the store skips a whole demand when one of its keys
        # holds no integer, and that key must not keep every other counter's amount from
        # the store.
        return [
            CategoryDemand(SYNC_CATEGORY, 0, [c])
            for c in counters
            if c.window_end > now or c.increment < 0 or c.tag.startswith("s:")
        ]
