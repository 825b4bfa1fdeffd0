"""What every limiter backend shares: results, usage rows, and the check itself.

`BaseLimiter.check` plans the counters (`relay.processing.quotas.plan_check`),
answers what it can without the backend (`limit: 0`, counters cached in
`ActiveLimits` as full or with less room than asked), fills in spike thresholds
(recomputed once per hour from the backend's history), lets the backend consume
(`_consume`: per category all-or-nothing, categories independent), and turns the
answer into a `LimitResult`.

Dry-run quotas never reject. They count what the category actually accepted (so
their usage can go past the limit) and report a `DryRunHit` whenever an accepted
quantity takes them past their limit, i.e. whenever enforcing would have rejected.

Backends raise `LimiterUnavailable` when their store fails; `check` then applies
`on_error`: "allow" accepts (and counts `redis_errors`), "reject" rejects every
category that needed the store with reason `redis_unavailable`.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field

from relay.processing.quotas import (
    KNOWN_CATEGORIES,
    SPIKE_ID,
    SPIKE_REASON,
    CategoryDemand,
    CompiledQuota,
    CompiledQuotas,
    CompiledSpike,
    Counter,
    Scoping,
    plan_check,
    quota_counter,
    spike_counter,
    spike_history_suffixes,
    spike_tag,
    spike_threshold,
    zero_limit_retry_after,
)
from relay.protocol.ratelimit_header import RateLimit
from relay.services.limiter.cache import ActiveLimits, CachedLimit
from relay.services.limiter.share import QuotaShare

#: Reason (and quota id) of rejections because the counter store is unreachable.
REDIS_UNAVAILABLE = "redis_unavailable"
#: Retry-After of `redis_unavailable` rejections.
UNAVAILABLE_RETRY_AFTER = 1.0

Clock = Callable[[], float]


class LimiterUnavailable(Exception):
    """The counter store (Redis) failed; the check could not be decided by it."""


@dataclass(frozen=True, slots=True)
class Rejection:
    """A rejected category: what to drop, who decided, what to tell the SDK."""

    category: str
    quantity: int
    #: The quota or budget id; `spike_protection`; or `redis_unavailable`.
    quota_id: str
    #: The outcome reason (kind `rate_limited`): the quota's reason code.
    reason: str
    rate_limit: RateLimit


@dataclass(frozen=True, slots=True)
class DryRunHit:
    """A category a dry-run quota would have rejected; it was accepted (and counted)."""

    category: str
    quantity: int
    quota_id: str
    reason: str
    rate_limit: RateLimit


@dataclass(slots=True)
class LimitResult:
    """The answer for one envelope."""

    #: Rejected categories; every other category was accepted and counted.
    rejected: dict[str, Rejection] = field(default_factory=dict)
    dry_run: list[DryRunHit] = field(default_factory=list)
    #: The store failed during this check (`on_error` decided).
    store_error: bool = False
    #: The counters this check incremented, per accepted category: what `refund` takes
    #: back for items that then go nowhere.
    consumed: dict[str, list[Counter]] = field(default_factory=dict)

    def is_rejected(self, category: str) -> bool:
        return category in self.rejected

    @property
    def limited(self) -> bool:
        return bool(self.rejected)

    def rate_limits(self) -> list[RateLimit]:
        """For `X-Sentry-Rate-Limits`: one entry per distinct limit, longest retry kept."""
        merged: dict[tuple[tuple[str, ...], str, str | None], RateLimit] = {}
        for rejection in self.rejected.values():
            lim = rejection.rate_limit
            ident = (lim.categories, lim.scope, lim.reason)
            old = merged.get(ident)
            if old is None or lim.retry_after > old.retry_after:
                merged[ident] = lim
        return list(merged.values())

    @property
    def retry_after(self) -> float:
        """For `Retry-After`: the longest retry of any rejection (0 when none)."""
        return max((r.rate_limit.retry_after for r in self.rejected.values()), default=0.0)


@dataclass(frozen=True, slots=True)
class UsageRow:
    """One counter's state for `relay usage`, the usage endpoint and gauges."""

    #: "quota", "budget" or "spike".
    kind: str
    #: Quota or budget id; `spike_protection` for spike rows.
    id: str
    scope: str
    scope_id: str
    #: The category of a per-category counter (all-category quotas, spike protection);
    #: None when the counter is shared by `categories`.
    category: str | None
    categories: tuple[str, ...]
    #: Items (bytes for attachments); budgets: nano-units of currency.
    used: int
    #: Spike rows: the current hour's threshold.
    limit: int
    #: Unix seconds; None for counter-less `limit: 0` quotas.
    window_end: float | None
    dry_run: bool = False
    #: Budgets: `used` and `limit` in currency.
    spend: float | None = None
    amount: float | None = None
    currency: str | None = None
    #: The limit is reached (spike rows: spike protection is dropping items).
    active: bool = False


@dataclass(slots=True)
class _SpikeEntry:
    threshold: int
    hour: int


class BaseLimiter:
    """Shared logic; a backend implements `_consume`, `_read` and `close`.

    Parameters:
        clock: Unix seconds; windows, retry times and spike hours follow it.
        on_error: "allow" or "reject" when the store fails.
        prefix: first part of every counter key.
    """

    def __init__(self, *, clock: Clock = time.time, on_error: str = "allow", prefix: str = "relay"):
        self._clock = clock
        self._on_error = on_error
        self.prefix = prefix
        self.active_limits = ActiveLimits()
        #: How long a cached counter (full, or its room) is believed without asking the
        #: store again; None: until its window ends (exact when only this process
        #: shrinks its counters, as in memory: refunds clear its own cache).
        self.full_cache_s: float | None = None
        #: The quota cache (`redis.quota_cache_ratio`), when the backend has one.
        self.share: QuotaShare | None = None
        #: Store failures (`relay_redis_errors_total`): checks decided without the store,
        #: and refunds that could not be made.
        self.redis_errors = 0
        self._spike: dict[tuple[str, int, int, float, int], _SpikeEntry] = {}
        self._spike_loading: dict[tuple[str, int, int, float, int, int], asyncio.Future[int]] = {}
        self._spike_rejected: dict[tuple[int, str], int] = {}

    # -- backend interface ------------------------------------------------------------

    async def _consume(self, demands: list[CategoryDemand]) -> list[tuple[bool, list[int]]]:
        """Per demand: consumed?, and every counter's value before. Raises LimiterUnavailable."""
        raise NotImplementedError

    async def _read(self, keys: list[str]) -> list[int]:
        """Current values (0 when absent). Raises LimiterUnavailable."""
        raise NotImplementedError

    async def _give_back(self, amounts: list[tuple[str, int]]) -> None:
        """Decrement each key (that still exists) by its amount. Raises LimiterUnavailable."""
        raise NotImplementedError

    async def close(self) -> None:
        """Release the store's connections."""

    # -- checks -----------------------------------------------------------------------

    async def refund(self, counters: Iterable[Counter]) -> None:
        """Take back what a check counted (`LimitResult.consumed`) for an envelope that was
        then not queued after all (the outbox filled meanwhile): the client retries it,
        and the retry must not be charged twice. Best effort: a store failure is counted
        in `redis_errors`, never raised."""
        amounts = [(c.key(self.prefix), c.increment) for c in counters if c.increment > 0]
        for key, _ in amounts:
            self.active_limits.discard(key)  # it may have room again
        if self.share is not None:
            share = self.share
            amounts = [(key, share.give_back(key, amount)) for key, amount in amounts]
            amounts = [(key, amount) for key, amount in amounts if amount > 0]
            self._share_taken()  # what it holds again goes back with the sync
        if not amounts:
            return
        try:
            await self._give_back(amounts)
        except LimiterUnavailable:
            self.redis_errors += 1

    async def check(
        self,
        scope: Scoping,
        quantities: list[tuple[str, int]],
        quotas: CompiledQuotas,
        left: Callable[[Collection[str]], Collection[str]] | None = None,
    ) -> LimitResult:
        """Count an envelope's quantities against every quota that applies.

        `left`: given the categories rejected before anything is counted (a zero limit,
        or a counter known to lack room), the categories whose items are still kept. A
        category outside it is not counted at all: its items go with the rejected ones
        (a transaction whose spans are over quota, a rejected event's attachments), so
        counting it would only have to be given back.
        """
        result = LimitResult()
        if not quotas:
            return result
        now = self._clock()
        pending: list[CategoryDemand] = []
        for demand in plan_check(quotas, scope, quantities, now):
            for quota in demand.dry_run_blocked:
                result.dry_run.append(_zero_limit_hit(demand, quota, now))
            if demand.blocked_by is not None:
                result.rejected[demand.category] = _zero_limit_rejection(
                    demand, demand.blocked_by, now
                )
                continue
            if not demand.counters:
                continue
            cached = self.active_limits.lookup(
                ((c.key(self.prefix), c.increment, c.limit) for c in demand.counters if c.gating),
                now,
            )
            if cached is not None:
                result.rejected[demand.category] = _cached_rejection(demand, cached, now)
                continue
            pending.append(demand)
        if result.rejected and pending and left is not None:
            kept = left(result.rejected.keys())
            pending = [demand for demand in pending if demand.category in kept]
        if not pending:
            return result
        try:
            if quotas.spike is not None:
                if self.share is not None and (ended := self.share.ended(now)):
                    # Spike thresholds read the past windows: without this process's
                    # allowances in them.
                    await self._consume(ended)
                await self._fill_spike_limits(pending, scope, quotas.spike, now)
            if self.share is None:
                answers = await self._consume(pending)
            else:
                pending, answers = await self._consume_shared(
                    self.share, pending, scope, now, result
                )
        except LimiterUnavailable:
            self.redis_errors += 1
            result.store_error = True
            if self._on_error == "reject":
                for demand in pending:
                    # A category the quota cache accepted did not need the store: it was
                    # counted there already (`reserve`) or will be (`share`).
                    if demand.category not in result.consumed:
                        result.rejected[demand.category] = _unavailable_rejection(demand)
            return result
        for demand, (consumed, values) in zip(pending, answers, strict=True):
            self._judge(demand, consumed, values, scope, now, result)
        return result

    async def _consume_shared(
        self,
        share: QuotaShare,
        pending: list[CategoryDemand],
        scope: Scoping,
        now: float,
        result: LimitResult,
    ) -> tuple[list[CategoryDemand], list[tuple[bool, list[int]]]]:
        """`_consume` with the quota cache: the demands its allowances cover are accepted
        (and judged) here; the others go to the store, after what is to be synced on their
        counters (`QuotaShare.drain`) and before new reservations on them
        (`QuotaShare.reservations`). Returns the demands the store answered, and its
        answers."""
        remote: list[CategoryDemand] = []
        for demand in pending:
            values = share.take(demand, now)
            if values is None:
                remote.append(demand)
            else:
                self._judge(demand, True, values, scope, now, result)
                self._share_taken()
        if not remote:
            return [], []
        pushes = share.drain(remote, now)
        reservations = share.reservations(remote, now)
        try:
            answers = await self._consume([*pushes, *remote, *reservations])
        except LimiterUnavailable:
            share.restore(pushes)
            share.abandon(reservations)
            raise
        first = len(pushes)
        end = first + len(remote)
        for demand, (consumed, values) in zip(remote, answers[first:end], strict=True):
            share.learn(demand, consumed, values)
        if reservations and share.granted(reservations, answers[end:]):
            self._share_taken()  # what is left of it goes back with the sync
        return remote, answers[first:end]

    def _share_taken(self) -> None:
        """A demand was accepted from the quota cache, or an allowance reserved: a backend
        arranges its sync."""

    async def _before_read(self) -> None:
        """Before `usage` reads counters: a backend with a quota cache syncs it."""

    def _judge(
        self,
        demand: CategoryDemand,
        consumed: bool,
        values: list[int],
        scope: Scoping,
        now: float,
        result: LimitResult,
    ) -> None:
        decisive: Counter | None = None
        decisive_full = False
        for counter, before in zip(demand.counters, values, strict=True):
            limit = counter.limit if counter.limit is not None else 0
            after = before + counter.increment if consumed else before
            if not counter.gating:
                if consumed and after > limit:
                    result.dry_run.append(
                        DryRunHit(
                            demand.category,
                            demand.quantity,
                            counter.quota_id,
                            counter.reason,
                            _rate_limit(counter, demand.category, now, full=after >= limit),
                        )
                    )
                continue
            full = after >= limit
            over = not consumed and before + counter.increment > limit
            if full or over:
                # No room left, or less than this demand needed: later demands above the
                # room are rejected from the cache (see `ActiveLimits`).
                self.active_limits.add(
                    counter.key(self.prefix),
                    CachedLimit(
                        expires_at=(
                            counter.window_end
                            if self.full_cache_s is None
                            else min(counter.window_end, now + self.full_cache_s)
                        ),
                        quota_id=counter.quota_id,
                        reason=counter.reason,
                        scope=counter.scope,
                        categories=(
                            counter.header_categories(demand.category)
                            if full
                            else (demand.category,)
                        ),
                        limit=limit,
                        room=max(0, limit - after),
                        window_end=counter.window_end,
                    ),
                    now,
                )
            elif consumed and self.active_limits:
                self.active_limits.narrow(counter.key(self.prefix), limit - after)
            if over and (decisive is None or counter.window_end > decisive.window_end):
                decisive, decisive_full = counter, full
        if consumed:
            result.consumed[demand.category] = demand.counters
            return
        if decisive is None:  # the store said no, yet every counter fits: be safe
            decisive = next((c for c in demand.counters if c.gating), demand.counters[0])
            decisive_full = False
        if decisive.quota is None:
            self._spike_rejected[(scope.project_id, demand.category)] = math.floor(now / 3600)
        result.rejected[demand.category] = Rejection(
            demand.category,
            demand.quantity,
            decisive.quota_id,
            decisive.reason,
            _rate_limit(decisive, demand.category, now, full=decisive_full),
        )

    # -- spike protection -------------------------------------------------------------

    async def _fill_spike_limits(
        self, demands: list[CategoryDemand], scope: Scoping, spike: CompiledSpike, now: float
    ) -> None:
        for demand in demands:
            for counter in demand.counters:
                if counter.quota is None and counter.limit is None:
                    counter.limit = await self.spike_threshold(
                        scope.project_id, demand.category, spike, now
                    )

    async def spike_threshold(
        self, project_id: int, category: str, spike: CompiledSpike, now: float | None = None
    ) -> int:
        """This hour's threshold for a project and category (computed once per hour)."""
        now = self._clock() if now is None else now
        hour = math.floor(now / 3600)
        ident = (category, project_id, spike.floor_per_hour, spike.multiplier, spike.history_hours)
        entry = self._spike.get(ident)
        if entry is not None and entry.hour == hour:
            return entry.threshold
        loading_key = (*ident, hour)
        future = self._spike_loading.get(loading_key)
        if future is not None:
            return await asyncio.shield(future)
        future = asyncio.get_running_loop().create_future()
        self._spike_loading[loading_key] = future
        try:
            tag = spike_tag(project_id, category)
            keys = [
                f"{{{self.prefix}:{tag}}}:{suffix}"
                for suffix in spike_history_suffixes(now, spike.history_hours)
            ]
            if self.share is not None and not self.share.reserve and self.share.unsynced:
                # `share` mode: what this process accepted by itself in the past hours is
                # their history too; it reaches the store with a sync, not a second later.
                await self._before_read()
            history = await self._read(keys)
            threshold = spike_threshold(history, spike.floor_per_hour, spike.multiplier)
        except asyncio.CancelledError:
            future.cancel()
            raise
        except Exception as exc:
            future.set_exception(exc)
            future.exception()  # marked as retrieved; waiters re-raise it
            raise
        finally:
            del self._spike_loading[loading_key]
        if len(self._spike) > 100_000:
            self._spike = {k: v for k, v in self._spike.items() if v.hour == hour}
        self._spike[ident] = _SpikeEntry(threshold, hour)
        future.set_result(threshold)
        return threshold

    # -- usage ------------------------------------------------------------------------

    async def usage(self, scopes: Iterable[tuple[Scoping, CompiledQuotas]]) -> list[UsageRow]:
        """Every quota, budget and spike counter the given scopes reach, once each.

        Pass one `(Scoping, CompiledQuotas)` per configured project and public key
        (org-scoped counters are reported once). Raises LimiterUnavailable.
        """
        await self._before_read()
        now = self._clock()
        seen: set[tuple[str, str, str | None]] = set()
        rows: list[_PendingRow] = []
        spikes: list[tuple[Scoping, CompiledSpike, str]] = []
        for scoping, compiled in scopes:
            for quota in compiled.quotas:
                if quota.scope_id is not None and quota.scope_id != scoping.scope_id(quota.scope):
                    continue
                if quota.scope == "key" and not scoping.public_key:
                    continue
                scope_id = scoping.scope_id(quota.scope)
                ident: tuple[str, str, str | None] = (f"{quota.kind}:{quota.id}", scope_id, None)
                if ident in seen:
                    continue
                seen.add(ident)
                if quota.limit == 0 and quota.kind == "quota":
                    rows.append(_PendingRow(quota, scope_id, None, None))
                    continue
                categories = sorted(KNOWN_CATEGORIES) if quota.per_category else [None]
                group = [
                    _PendingRow(
                        quota,
                        scope_id,
                        category,
                        _usage_counter(quota, scoping, category, now).key(self.prefix),
                    )
                    for category in categories
                ]
                rows.extend(group)
            spike = compiled.spike
            if spike is not None:
                for category in sorted(spike.categories or KNOWN_CATEGORIES):
                    spike_ident = (SPIKE_ID, str(scoping.project_id), category)
                    if spike_ident not in seen:
                        seen.add(spike_ident)
                        spikes.append((scoping, spike, category))
        spike_keys = [
            spike_counter(spike, scoping, category, 1, now).key(self.prefix)
            for scoping, spike, category in spikes
        ]
        keys = [r.key for r in rows if r.key is not None]
        values = iter(await self._read(keys + spike_keys))
        out: list[UsageRow] = []
        per_category: dict[tuple[str, str], list[UsageRow]] = {}
        for pending in rows:
            used = next(values) if pending.key is not None else 0
            row = pending.row(used, now)
            if pending.category is None:
                out.append(row)
            else:
                per_category.setdefault((pending.quota.id, pending.scope_id), []).append(row)
        for category_rows in per_category.values():
            used_rows = [r for r in category_rows if r.used > 0]
            out.extend(used_rows or [_replace_category(category_rows[0])])
        hour = math.floor(now / 3600)
        for scoping, spike, category in spikes:
            used = next(values)
            if used == 0 and not spike.categories:
                continue
            threshold = await self.spike_threshold(scoping.project_id, category, spike, now)
            active = used >= threshold or (
                self._spike_rejected.get((scoping.project_id, category)) == hour
            )
            out.append(
                UsageRow(
                    kind="spike",
                    id=SPIKE_ID,
                    scope="project",
                    scope_id=str(scoping.project_id),
                    category=category,
                    categories=(category,),
                    used=used,
                    limit=threshold,
                    window_end=float((hour + 1) * 3600),
                    active=active,
                )
            )
        return out


@dataclass(slots=True)
class _PendingRow:
    quota: CompiledQuota
    scope_id: str
    category: str | None
    key: str | None

    def row(self, used: int, now: float) -> UsageRow:
        quota = self.quota
        budget = quota.kind == "budget"
        window_end = None if quota.window is None else float(quota.window.bounds(now)[1])
        return UsageRow(
            kind=quota.kind,
            id=quota.id,
            scope=quota.scope,
            scope_id=self.scope_id,
            category=self.category,
            categories=(
                (self.category,) if self.category is not None else tuple(sorted(quota.categories))
            ),
            used=used,
            limit=quota.limit,
            window_end=window_end,
            dry_run=quota.dry_run,
            spend=used / 1e9 if budget else None,
            amount=quota.amount if budget else None,
            currency=quota.currency,
            active=used >= quota.limit,
        )


def _replace_category(row: UsageRow) -> UsageRow:
    """An all-category quota nobody has used yet: one row for all of them."""
    return UsageRow(
        kind=row.kind,
        id=row.id,
        scope=row.scope,
        scope_id=row.scope_id,
        category=None,
        categories=(),
        used=0,
        limit=row.limit,
        window_end=row.window_end,
        dry_run=row.dry_run,
        active=row.limit == 0,
    )


def _usage_counter(
    quota: CompiledQuota, scoping: Scoping, category: str | None, now: float
) -> Counter:
    return quota_counter(quota, scoping, category or "", 0, now)


def _rate_limit(counter: Counter, category: str, now: float, *, full: bool) -> RateLimit:
    """The SDK-facing limit: every category of the counter when it is full, else this one."""
    return RateLimit(
        retry_after=max(1.0, counter.window_end - now),
        categories=counter.header_categories(category) if full else (category,),
        scope=counter.scope,
        reason=counter.reason,
    )


def _zero_limit_rejection(demand: CategoryDemand, quota: CompiledQuota, now: float) -> Rejection:
    # `limit: 0` without categories refuses everything (a disabled key or project): the
    # answer says so, with no categories, so that SDKs hold back every kind at once.
    categories = () if quota.per_category else quota.header_categories(demand.category)
    return Rejection(
        demand.category,
        demand.quantity,
        quota.id,
        quota.reason,
        RateLimit(
            retry_after=zero_limit_retry_after(quota, now),
            categories=categories,
            scope=quota.scope,
            reason=quota.reason,
        ),
    )


def _zero_limit_hit(demand: CategoryDemand, quota: CompiledQuota, now: float) -> DryRunHit:
    rejection = _zero_limit_rejection(demand, quota, now)
    return DryRunHit(demand.category, demand.quantity, quota.id, quota.reason, rejection.rate_limit)


def _cached_rejection(demand: CategoryDemand, cached: CachedLimit, now: float) -> Rejection:
    return Rejection(
        demand.category,
        demand.quantity,
        cached.quota_id,
        cached.reason,
        RateLimit(
            # When the window ends, not when the cache asks the store again.
            retry_after=max(1.0, (cached.window_end or cached.expires_at) - now),
            # A full counter stops all its categories; one with room left, this one.
            categories=cached.categories if cached.room == 0 else (demand.category,),
            scope=cached.scope,
            reason=cached.reason,
        ),
    )


def _unavailable_rejection(demand: CategoryDemand) -> Rejection:
    return Rejection(
        demand.category,
        demand.quantity,
        REDIS_UNAVAILABLE,
        REDIS_UNAVAILABLE,
        RateLimit(
            retry_after=UNAVAILABLE_RETRY_AFTER,
            categories=(demand.category,),
            scope="organization",
            reason=REDIS_UNAVAILABLE,
        ),
    )


__all__ = [
    "REDIS_UNAVAILABLE",
    "SPIKE_REASON",
    "BaseLimiter",
    "DryRunHit",
    "LimitResult",
    "LimiterUnavailable",
    "Rejection",
    "UsageRow",
]
