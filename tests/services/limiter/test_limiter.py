"""One suite, both backends (in-process and a real redis-server): same semantics."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection
from datetime import UTC, datetime
from typing import Any

from relay.processing.quotas import Scoping
from relay.protocol.ratelimit_header import RateLimit, format_rate_limits
from relay.services.limiter import LimitResult
from tests.services.limiter.conftest import Clock, MakeLimiter, quotas

P42 = Scoping(project_id=42, public_key="abc")


def accepted(results: list[LimitResult], category: str = "error") -> int:
    return sum(1 for r in results if not r.is_rejected(category))


async def test_exactly_n_of_many_concurrent_checks(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter()
    compiled = quotas(
        {"id": "e", "categories": ["error"], "scope": "project", "limit": 50, "window": 60}
    )
    results = await asyncio.gather(
        *(limiter.check(P42, [("error", 1)], compiled) for _ in range(300))
    )
    assert accepted(results) == 50
    rejection = next(r for r in results if r.limited).rejected["error"]
    assert rejection.quota_id == "e" and rejection.reason == "e"
    assert rejection.rate_limit == RateLimit(45.0, ("error",), "project", "e")


async def test_rejection_carries_header_fields(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter()
    compiled = quotas(
        {
            "id": "errs",
            "categories": ["error", "default"],
            "scope": "key",
            "limit": 2,
            "window": "hour",
            "reason": "too_many_errors",
        }
    )
    for _ in range(2):
        assert not (await limiter.check(P42, [("error", 1)], compiled)).limited
    result = await limiter.check(P42, [("default", 1), ("transaction", 1)], compiled)
    assert list(result.rejected) == ["default"]
    lim = result.rejected["default"].rate_limit
    assert lim.categories == ("default", "error")  # the counter is full: all its categories
    assert format_rate_limits(result.rate_limits()) == "1785:default;error:key:too_many_errors"
    assert result.retry_after == 1785.0


async def test_windows_roll_over(make_limiter: MakeLimiter, clock: Clock) -> None:
    limiter = make_limiter()
    compiled = quotas({"id": "w", "limit": 3, "window": 10})
    clock.now = 1_000_000_000.0
    for second in range(30):
        results = [await limiter.check(P42, [("error", 1)], compiled) for _ in range(5)]
        assert accepted(results) == (3 if second % 10 == 0 else 0), second
        clock.advance(1)


async def test_calendar_month_boundaries_in_utc(make_limiter: MakeLimiter, clock: Clock) -> None:
    limiter = make_limiter()
    compiled = quotas({"id": "m", "categories": ["error"], "limit": 2, "window": "month"})
    clock.set(2026, 1, 31, 23, 59, 0)
    results = [await limiter.check(P42, [("error", 1)], compiled) for _ in range(3)]
    assert accepted(results) == 2
    assert results[2].rejected["error"].rate_limit.retry_after == 60.0
    clock.set(2026, 1, 31, 23, 59, 59)
    assert (await limiter.check(P42, [("error", 1)], compiled)).limited
    clock.set(2026, 2, 1, 0, 0, 0)
    results = [await limiter.check(P42, [("error", 1)], compiled) for _ in range(3)]
    assert accepted(results) == 2
    assert results[2].rejected["error"].rate_limit.retry_after == 28 * 86400
    clock.set(2026, 12, 31, 23, 59, 59)
    assert accepted([await limiter.check(P42, [("error", 1)], compiled)]) == 1
    clock.set(2027, 1, 1, 0, 0, 0)
    results = [await limiter.check(P42, [("error", 1)], compiled) for _ in range(3)]
    assert accepted(results) == 2


async def test_scopes_key_project_organization(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter()
    compiled = quotas(
        {"id": "per-key", "scope": "key", "limit": 2, "window": 60},
        {"id": "per-project", "scope": "project", "limit": 3, "window": 60},
        {"id": "per-org", "scope": "organization", "limit": 6, "window": 60},
    )
    a1, b1 = Scoping(1, "aaa"), Scoping(1, "bbb")
    a2 = Scoping(2, "ccc")

    async def take(scope: Scoping, n: int) -> list[str | None]:
        out = []
        for _ in range(n):
            r = await limiter.check(scope, [("error", 1)], compiled)
            out.append(r.rejected["error"].quota_id if r.limited else None)
        return out

    assert await take(a1, 3) == [None, None, "per-key"]
    assert await take(b1, 2) == [None, "per-project"]
    assert await take(a2, 3) == [None, None, "per-key"]
    assert await take(Scoping(3, "ddd"), 2) == [None, "per-org"]
    scopes = {
        r.rate_limit.scope
        for r in (await limiter.check(a1, [("error", 1)], compiled)).rejected.values()
    }
    assert scopes == {"key"}


async def test_limit_zero_rejects_without_counting(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter()
    compiled = quotas(
        {"id": "no-replays", "categories": ["replay"], "limit": 0, "reason": "replays_off"},
        {"id": "all", "limit": 100, "window": 60},
    )
    result = await limiter.check(P42, [("replay", 3), ("error", 1)], compiled)
    assert list(result.rejected) == ["replay"]
    rejection = result.rejected["replay"]
    assert rejection.reason == "replays_off" and rejection.quantity == 3
    assert rejection.rate_limit == RateLimit(60.0, ("replay",), "organization", "replays_off")
    rows = {(r.id, r.category): r for r in await limiter.usage([(P42, compiled)])}
    assert rows[("all", "error")].used == 1
    assert ("all", "replay") not in rows
    assert rows[("no-replays", None)].limit == 0


async def test_attachment_bytes(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter()
    compiled = quotas(
        {
            "id": "bytes",
            "categories": ["attachment"],
            "scope": "project",
            "limit": 1000,
            "window": 60,
        },
        {
            "id": "items",
            "categories": ["attachment_item"],
            "scope": "project",
            "limit": 10,
            "window": 60,
        },
    )
    big = await limiter.check(P42, [("attachment", 600), ("attachment_item", 1)], compiled)
    assert not big.limited
    second = await limiter.check(P42, [("attachment", 600), ("attachment_item", 1)], compiled)
    assert list(second.rejected) == ["attachment"]
    assert second.rejected["attachment"].quantity == 600
    # Not full (600 of 1000 used): the header names only this category, and smaller fits.
    assert second.rejected["attachment"].rate_limit.categories == ("attachment",)
    small = await limiter.check(P42, [("attachment", 400), ("attachment_item", 1)], compiled)
    assert not small.limited
    zero = await limiter.check(P42, [("attachment", 0), ("attachment_item", 1)], compiled)
    assert not zero.limited
    full = await limiter.check(P42, [("attachment", 1), ("attachment_item", 1)], compiled)
    assert list(full.rejected) == ["attachment"]


async def test_all_or_nothing_per_category_categories_independent(
    make_limiter: MakeLimiter,
) -> None:
    limiter = make_limiter()
    compiled = quotas(
        {"id": "wide", "scope": "organization", "limit": 10, "window": 60},
        {
            "id": "narrow",
            "categories": ["transaction"],
            "scope": "project",
            "limit": 1,
            "window": 60,
        },
    )
    first = await limiter.check(P42, [("transaction", 1), ("span", 5)], compiled)
    assert not first.limited
    second = await limiter.check(P42, [("transaction", 1), ("span", 5)], compiled)
    assert list(second.rejected) == ["transaction"]
    assert second.rejected["transaction"].quota_id == "narrow"
    # The rejected transaction consumed nothing from "wide": 9 transactions still fit there.
    rows = {(r.id, r.category): r.used for r in await limiter.usage([(P42, compiled)])}
    assert rows[("wide", "transaction")] == 1
    assert rows[("wide", "span")] == 10
    assert rows[("narrow", None)] == 1
    third = await limiter.check(P42, [("span", 1)], compiled)
    assert third.rejected["span"].quota_id == "wide"


async def test_shared_counter_across_listed_categories(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter()
    compiled = quotas(
        {"id": "errs", "categories": ["error", "default", "security"], "limit": 3, "window": 60}
    )
    result = await limiter.check(P42, [("error", 2), ("default", 1), ("security", 1)], compiled)
    assert list(result.rejected) == ["security"]
    assert result.rejected["security"].rate_limit.categories == ("default", "error", "security")


async def test_full_counters_are_answered_from_the_cache(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter()
    compiled = quotas({"id": "c", "categories": ["error"], "limit": 2, "window": 60})
    for _ in range(2):
        await limiter.check(P42, [("error", 1)], compiled)
    # The counter is full now: the limiter knows without asking its store.
    assert len(limiter.active_limits) == 1  # type: ignore[attr-defined]
    result = await limiter.check(P42, [("error", 1)], compiled)
    assert result.rejected["error"].quota_id == "c"


def count_store_calls(limiter: Any) -> Callable[[], int]:
    """How many times the limiter has asked its store to count (a spy, the store is real)."""
    calls = 0
    consume = limiter._consume

    async def counting(demands: Any) -> Any:
        nonlocal calls
        calls += 1
        return await consume(demands)

    limiter._consume = counting
    return lambda: calls


async def test_counters_with_too_little_room_are_answered_from_the_cache(
    make_limiter: MakeLimiter,
) -> None:
    """Spans count many to an envelope: a demand they overflow leaves the counter over for
    it but not full. Until the window ends, a demand above the room left is rejected
    without asking the store; one that fits is asked, and narrows the room."""
    limiter = make_limiter()
    compiled = quotas(
        {"id": "spans", "categories": ["span"], "scope": "project", "limit": 10, "window": 60}
    )
    calls = count_store_calls(limiter)
    assert not (await limiter.check(P42, [("span", 7)], compiled)).limited
    first = await limiter.check(P42, [("span", 5)], compiled)  # 7 + 5 > 10: the store says no
    assert first.rejected["span"].rate_limit == RateLimit(45.0, ("span",), "project", "spans")
    assert calls() == 2
    again = await limiter.check(P42, [("span", 4)], compiled)  # above the room of 3
    assert again.rejected["span"].rate_limit == first.rejected["span"].rate_limit
    assert again.rejected["span"].quantity == 4 and again.consumed == {}
    assert calls() == 2  # answered from the cache
    assert not (await limiter.check(P42, [("span", 2)], compiled)).limited  # fits: 9 of 10
    assert calls() == 3
    assert (await limiter.check(P42, [("span", 2)], compiled)).limited  # the room is 1 now
    assert calls() == 3
    assert not (await limiter.check(P42, [("span", 1)], compiled)).limited  # 10: full
    full = await limiter.check(P42, [("span", 1)], compiled)
    assert full.limited and calls() == 4
    rows = {r.id: r for r in await limiter.usage([(P42, compiled)])}
    assert rows["spans"].used == 10


async def test_a_cached_room_rejects_each_category_of_a_shared_counter_for_itself(
    make_limiter: MakeLimiter, clock: Clock
) -> None:
    limiter = make_limiter()
    compiled = quotas(
        {"id": "e", "categories": ["error", "default"], "scope": "project", "limit": 3,
         "window": 60},
        {"id": "a", "categories": ["attachment"], "scope": "project", "limit": 1000,
         "window": 60},
    )  # fmt: skip
    assert not (await limiter.check(P42, [("error", 2)], compiled)).limited
    assert (await limiter.check(P42, [("default", 2)], compiled)).rejected[
        "default"
    ].rate_limit.categories == ("default",)
    calls = count_store_calls(limiter)
    cached = await limiter.check(P42, [("error", 2), ("attachment", 600)], compiled)
    # Not full: the header names the category asked for, not the one that found the room.
    assert cached.rejected["error"].rate_limit.categories == ("error",)
    assert list(cached.consumed) == ["attachment"] and calls() == 1
    assert (await limiter.check(P42, [("attachment", 500)], compiled)).limited  # 600 + 500
    assert (await limiter.check(P42, [("attachment", 401)], compiled)).limited  # room 400
    assert calls() == 2
    clock.advance(60)  # a new window: a new counter, nothing cached for it
    assert not (await limiter.check(P42, [("attachment", 900), ("error", 2)], compiled)).limited
    assert calls() == 3


async def test_a_cached_limit_is_forgotten_when_the_quota_changes(
    make_limiter: MakeLimiter,
) -> None:
    """A reload that raises a quota's limit takes effect at once, cached counters or not."""
    limiter = make_limiter()
    entry = {"id": "c", "categories": ["error", "span"], "scope": "project", "window": 60}
    small = quotas({**entry, "limit": 2})
    for _ in range(2):
        await limiter.check(P42, [("error", 1)], small)
    assert (await limiter.check(P42, [("span", 1)], small)).limited  # full, cached
    larger = quotas({**entry, "limit": 4})
    assert not (await limiter.check(P42, [("error", 1)], larger)).limited
    assert (await limiter.check(P42, [("span", 2)], larger)).limited  # over: room 1, cached
    larger_still = quotas({**entry, "limit": 5})
    assert not (await limiter.check(P42, [("span", 2)], larger_still)).limited


async def test_dry_run_accepts_and_reports(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter()
    compiled = quotas(
        {"id": "shadow", "categories": ["error"], "limit": 2, "window": 60, "mode": "dry_run"},
        {"id": "shadow-zero", "categories": ["replay"], "limit": 0, "mode": "dry_run"},
    )
    results = [await limiter.check(P42, [("error", 1), ("replay", 1)], compiled) for _ in range(4)]
    assert not any(r.limited for r in results)
    hits = [[(h.quota_id, h.category) for h in r.dry_run] for r in results]
    assert hits[0] == [("shadow-zero", "replay")]
    assert hits[2] == [("shadow-zero", "replay"), ("shadow", "error")]
    assert hits[3] == hits[2]
    rows = {r.id: r for r in await limiter.usage([(P42, compiled)])}
    assert rows["shadow"].used == 4 and rows["shadow"].dry_run and rows["shadow"].active


async def test_budget_spend_is_exact(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter()
    compiled = quotas(
        budgets=[
            {
                "id": "monthly",
                "scope": "project",
                "amount": 0.001,
                "currency": "USD",
                "prices": {"transaction": 0.0000125, "error": 0.00029},
                "reason": "budget_exhausted",
            }
        ]
    )
    results = await asyncio.gather(
        *(limiter.check(P42, [("transaction", 1)], compiled) for _ in range(100))
    )
    assert accepted(results, "transaction") == 80  # 80 x 0.0000125 == 0.001 exactly
    rejection = next(r for r in results if r.limited).rejected["transaction"]
    assert rejection.reason == "budget_exhausted" and rejection.rate_limit.scope == "project"
    assert rejection.rate_limit.categories == ("error", "transaction")
    (row,) = await limiter.usage([(P42, compiled)])
    assert row.kind == "budget" and row.spend == 0.001 and row.amount == 0.001
    assert row.currency == "USD" and row.active
    assert row.window_end == datetime(2026, 4, 1, tzinfo=UTC).timestamp()


async def test_spike_protection_week_then_spike_then_recovery(
    make_limiter: MakeLimiter, clock: Clock
) -> None:
    limiter = make_limiter()
    compiled = quotas(
        spike={
            "enabled": True,
            "categories": ["error"],
            "floor_per_hour": 100,
            "multiplier": 3,
            "history_hours": 168,
        }
    )
    clock.set(2026, 3, 2, 0, 0, 0)
    for _hour in range(168):  # a normal week: 100 errors an hour, in two batches
        for _ in range(2):
            assert not (await limiter.check(P42, [("error", 50)], compiled)).limited
        clock.advance(3600)
    # The spike hour: 10x the usual traffic. The threshold is 3 x ~100.
    clock.advance(120)
    results = [await limiter.check(P42, [("error", 10)], compiled) for _ in range(100)]
    assert sum(10 for r in results if not r.limited) == 300
    rejection = next(r for r in results if r.limited).rejected["error"]
    assert rejection.reason == "spike_protection" and rejection.quota_id == "spike_protection"
    assert rejection.rate_limit == RateLimit(3480.0, ("error",), "project", "spike_protection")
    (row,) = [r for r in await limiter.usage([(P42, compiled)]) if r.kind == "spike"]
    assert (row.category, row.used, row.limit, row.active) == ("error", 300, 300, True)
    # Other categories and projects are untouched.
    assert not (await limiter.check(P42, [("transaction", 500)], compiled)).limited
    assert not (await limiter.check(Scoping(7, "k"), [("error", 100)], compiled)).limited
    # The next hour recovers: the threshold is recomputed (the spike nudges it up a bit).
    clock.advance(3600)
    results = [await limiter.check(P42, [("error", 10)], compiled) for _ in range(10)]
    assert not any(r.limited for r in results)
    (row,) = [r for r in await limiter.usage([(P42, compiled)]) if r.kind == "spike"]
    assert row.used == 100 and row.limit == 301 and not row.active


async def test_usage_lists_every_counter_once(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter()
    compiled = quotas(
        {"id": "org", "categories": ["error"], "limit": 100, "window": "day"},
        {"id": "proj", "categories": ["error"], "scope": "project", "limit": 10, "window": 60},
        {"id": "key", "categories": ["error"], "scope": "key", "limit": 5, "window": 60},
        {"id": "any", "scope": "project", "limit": 1000, "window": 60},
    )
    scopes = [Scoping(1, "a"), Scoping(1, "b"), Scoping(2, "c")]
    for i, scope in enumerate(scopes):
        await limiter.check(scope, [("error", i + 1)], compiled)
    rows = await limiter.usage([(s, compiled) for s in scopes])
    got = sorted((r.id, r.scope_id, r.category, r.used, r.limit) for r in rows)
    assert got == [
        ("any", "1", "error", 3, 1000),
        ("any", "2", "error", 3, 1000),
        ("key", "a", None, 1, 5),
        ("key", "b", None, 2, 5),
        ("key", "c", None, 3, 5),
        ("org", "default", None, 6, 100),
        ("proj", "1", None, 3, 10),
        ("proj", "2", None, 3, 10),
    ]
    org = next(r for r in rows if r.id == "org")
    assert org.window_end == datetime(2026, 3, 11, tzinfo=UTC).timestamp()
    assert org.categories == ("error",) and not org.active
    fresh = await limiter.usage([(Scoping(9, "z"), compiled)])
    assert ("any", "9", None, 0) in [(r.id, r.scope_id, r.category, r.used) for r in fresh]


async def test_refund_takes_back_what_a_check_counted(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter()
    compiled = quotas(
        {"id": "e", "categories": ["error"], "scope": "project", "limit": 3, "window": 60},
        {"id": "shadow", "categories": ["error"], "limit": 1, "window": 60, "mode": "dry_run"},
        budgets=[
            {
                "id": "spend",
                "scope": "project",
                "amount": 1.0,
                "currency": "USD",
                "prices": {"error": 0.25},
            }
        ],
    )
    first = await limiter.check(P42, [("error", 1), ("transaction", 2)], compiled)
    # Every counter the accepted category incremented, dry-run ones too: nothing else.
    assert list(first.consumed) == ["error"]
    assert sorted(c.quota_id for c in first.consumed["error"]) == ["e", "shadow", "spend"]
    for _ in range(2):
        await limiter.check(P42, [("error", 1)], compiled)
    full = await limiter.check(P42, [("error", 1)], compiled)
    assert full.limited and full.consumed == {}  # rejected: nothing counted, nothing to refund

    await limiter.refund(first.consumed["error"])
    rows = {r.id: r for r in await limiter.usage([(P42, compiled)])}
    assert (rows["e"].used, rows["shadow"].used, rows["spend"].spend) == (2, 2, 0.5)
    # The full counter had been cached as full: after the refund it is asked again, and fits.
    again = await limiter.check(P42, [("error", 1)], compiled)
    assert not again.limited
    assert (await limiter.check(P42, [("error", 1)], compiled)).limited
    await limiter.refund([])  # nothing counted: nothing asked


async def test_categories_going_with_a_known_rejection_are_not_counted(
    make_limiter: MakeLimiter,
) -> None:
    """A transaction counts as a transaction and as spans: once the span counter is known to
    be full, the transaction (dropped with its spans) is not counted, so nothing has to
    be given back."""
    limiter = make_limiter()
    compiled = quotas(
        {"id": "tx", "categories": ["transaction"], "scope": "project", "limit": 100,
         "window": 60},
        {"id": "spans", "categories": ["span"], "scope": "project", "limit": 4, "window": 60},
    )  # fmt: skip
    both = [("transaction", 1), ("span", 2)]
    asked: list[set[str]] = []

    def left(rejected: Collection[str]) -> set[str]:
        asked.append(set(rejected))
        return set() if "span" in rejected else {"transaction", "span"}

    for _ in range(2):
        assert not (await limiter.check(P42, both, compiled, left)).limited
    assert asked == []  # nothing rejected before counting: not asked
    third = await limiter.check(P42, both, compiled, left)
    assert asked == [{"span"}]
    assert list(third.rejected) == ["span"] and third.consumed == {}
    # Without `left` the transaction is counted, though its item goes with the spans.
    fourth = await limiter.check(P42, both, compiled)
    assert list(fourth.rejected) == ["span"] and list(fourth.consumed) == ["transaction"]
    used = {r.id: r.used for r in await limiter.usage([(P42, compiled)])}
    assert used == {"tx": 3, "spans": 4}
