from __future__ import annotations

from datetime import UTC, datetime

import msgspec
import pytest

from relay.config import PolicyConfig, parse_config
from relay.config.base import dec_hook
from relay.config.quotas import BudgetConfig, QuotaConfig, SpikeProtectionConfig
from relay.processing.quotas import (
    NANO,
    CompiledSpike,
    Scoping,
    Window,
    compile_policy_quotas,
    compile_quotas,
    merge_spike,
    month_bounds,
    parse_window,
    plan_check,
    spike_baseline,
    spike_history_suffixes,
    spike_threshold,
    validate_budgets,
    validate_quotas,
    validate_spike_protection,
    zero_limit_retry_after,
)


def ts(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> float:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC).timestamp()


def quota(**kw: object) -> QuotaConfig:
    data: dict[str, object] = {"id": "q", "limit": 10, "window": 60}
    data.update(kw)
    return msgspec.convert(data, QuotaConfig, dec_hook=dec_hook)


def budget(**kw: object) -> BudgetConfig:
    data: dict[str, object] = {"id": "b", "amount": 1.0, "prices": {"error": 0.001}}
    data.update(kw)
    return msgspec.convert(data, BudgetConfig, dec_hook=dec_hook)


SCOPE = Scoping(project_id=42, public_key="abc")
NOW = ts(2026, 3, 10, 12, 30, 15)


# --- validation -----------------------------------------------------------------------


def test_valid_quotas_have_no_problems() -> None:
    quotas = [
        quota(id="a", categories=["error", "default"], scope="project", window="day"),
        quota(id="b", scope="key", scope_id="abc", window="10m", reason="per_key"),
        quota(id="c", limit=0),
        quota(id="d", window="month", mode="dry_run"),
    ]
    assert validate_quotas(quotas) == []


def test_quota_problems_carry_relative_paths() -> None:
    problems = validate_quotas(
        [
            quota(id="ok"),
            quota(
                id="bad id",
                scope="team",
                categories=["error", "errors"],
                limit=-1,
                window="fortnight",
                mode="shadow",
                reason="a:b",
            ),
            quota(id="ok", window=None),
            quota(id="z", window=0),
            quota(id="y", scope="organization", scope_id="1"),
            quota(id="x", scope="project", scope_id="abc"),
        ]
    )
    paths = sorted(p.path for p in problems)
    assert paths == [
        "[1].categories[1]",
        "[1].id",
        "[1].limit",
        "[1].mode",
        "[1].reason",
        "[1].scope",
        "[1].window",
        "[2].id",
        "[2].window",
        "[3].window",
        "[4].scope_id",
        "[5].scope_id",
    ]
    assert any("duplicate id" in p.message for p in problems)


def test_budget_and_spike_validation() -> None:
    assert validate_budgets([budget(currency="USD", window="month")]) == []
    problems = validate_budgets(
        [budget(amount=-1, prices={"errors": 0.1, "error": -0.5}, window="year")]
    )
    assert sorted(p.path for p in problems) == [
        "[0].amount",
        "[0].prices.error",
        "[0].prices.errors",
        "[0].window",
    ]
    assert validate_budgets([budget(prices={})])[0].path == "[0].prices"
    assert validate_spike_protection(SpikeProtectionConfig(enabled=True)) == []
    problems = validate_spike_protection(
        SpikeProtectionConfig(categories=["nope"], floor_per_hour=-1, multiplier=0, history_hours=0)
    )
    assert sorted(p.path for p in problems) == [
        "categories[0]",
        "floor_per_hour",
        "history_hours",
        "multiplier",
    ]


def test_policy_sections_parse_from_yaml_shape() -> None:
    config = parse_config(
        {
            "policy": {
                "quotas": [{"id": "e", "categories": ["error"], "limit": 5, "window": "1m"}],
                "budgets": [{"id": "m", "amount": 10, "prices": {"error": 0.00029}}],
                "spike_protection": {"enabled": True, "multiplier": 3},
            }
        },
        env={},
    )
    compiled = compile_policy_quotas(config.policy, None)
    assert [q.id for q in compiled.quotas] == ["e", "m"]
    assert compiled.quotas[0].window == Window(60)
    assert compiled.spike is not None and compiled.spike.multiplier == 3


# --- windows --------------------------------------------------------------------------


def test_parse_window() -> None:
    assert parse_window(60) == Window(60)
    assert parse_window("5m").seconds == 300
    assert parse_window("hour").seconds == 3600
    assert parse_window("day").seconds == 86400
    assert parse_window("month").month
    for bad in (0, -5, "1.5s", "year", True):
        with pytest.raises(ValueError):
            parse_window(bad)


def test_fixed_windows_align_to_the_epoch() -> None:
    start, end = Window(60).bounds(NOW)
    assert (start, end) == (ts(2026, 3, 10, 12, 30), ts(2026, 3, 10, 12, 31))
    assert parse_window("hour").bounds(NOW) == (ts(2026, 3, 10, 12), ts(2026, 3, 10, 13))
    assert parse_window("day").bounds(NOW) == (ts(2026, 3, 10), ts(2026, 3, 11))


@pytest.mark.parametrize(
    ("now", "start", "end"),
    [
        (ts(2026, 1, 31, 23, 59, 59), ts(2026, 1, 1), ts(2026, 2, 1)),
        (ts(2026, 2, 1), ts(2026, 2, 1), ts(2026, 3, 1)),
        (ts(2028, 2, 29, 12), ts(2028, 2, 1), ts(2028, 3, 1)),
        (ts(2026, 12, 31, 23, 59, 59), ts(2026, 12, 1), ts(2027, 1, 1)),
        (ts(2027, 1, 1), ts(2027, 1, 1), ts(2027, 2, 1)),
    ],
)
def test_calendar_months_in_utc(now: float, start: float, end: float) -> None:
    assert month_bounds(now) == (start, end)
    assert parse_window("month").bounds(now + 0.75) == (start, end)


# --- compile and plan -----------------------------------------------------------------


def test_plan_scopes_and_keys() -> None:
    compiled = compile_quotas(
        [
            quota(id="org", scope="organization"),
            quota(id="proj", scope="project", categories=["error", "default"]),
            quota(id="key", scope="key", categories=["error"]),
            quota(id="other-key", scope="key", scope_id="zzz"),
        ]
    )
    demands = plan_check(compiled, SCOPE, [("error", 2), ("transaction", 1), ("error", 1)], NOW)
    assert [(d.category, d.quantity) for d in demands] == [("error", 3), ("transaction", 1)]
    errors, transactions = demands
    keys = [c.key("relay") for c in errors.counters]
    start = int(ts(2026, 3, 10, 12, 30))
    assert keys == [
        f"{{relay:q:org:default}}:error:{start}",
        f"{{relay:q:proj:42}}:{start}",
        f"{{relay:q:key:abc}}:{start}",
    ]
    assert [c.increment for c in errors.counters] == [3, 3, 3]
    assert [c.quota_id for c in transactions.counters] == ["org"]
    assert transactions.counters[0].suffix == f"transaction:{start}"
    assert errors.counters[0].window_end == start + 60
    assert errors.counters[0].ttl >= 60


def test_limit_zero_blocks_without_counters_and_dry_run_is_reported() -> None:
    compiled = compile_quotas(
        [
            quota(id="none", limit=0, window=None, categories=["replay"], reason="no_replays"),
            quota(id="shadow", limit=0, window=None, mode="dry_run"),
            quota(id="count", limit=5),
        ]
    )
    replay, attachment = plan_check(compiled, SCOPE, [("replay", 1), ("attachment", 0)], NOW)
    assert replay.blocked_by is not None and replay.blocked_by.reason == "no_replays"
    assert [q.id for q in replay.dry_run_blocked] == ["shadow"]
    assert attachment.blocked_by is None and attachment.counters == []
    assert zero_limit_retry_after(replay.blocked_by, NOW) == 60.0
    assert zero_limit_retry_after(compiled.quotas[2], NOW) == 45.0


def test_duplicate_counter_keys_count_once_against_the_smaller_limit() -> None:
    org = PolicyConfig(quotas=[quota(id="dup", scope="project", limit=10)])
    project = PolicyConfig(quotas=[quota(id="dup", scope="project", limit=3)])
    compiled = compile_policy_quotas(org, project)
    (demand,) = plan_check(compiled, SCOPE, [("error", 1)], NOW)
    assert [(c.quota_id, c.limit) for c in demand.counters] == [("dup", 3)]


def test_budget_costs_are_exact_nano_units() -> None:
    compiled = compile_quotas(
        budgets=[
            budget(
                amount=0.001,
                prices={"error": 0.00029, "transaction": 0.0000125, "attachment": 2.5e-10},
            )
        ]
    )
    (b,) = compiled.quotas
    assert b.limit == 1_000_000
    assert b.cost("transaction", 80) == b.limit
    assert b.cost("error", 3) == 870_000
    assert b.cost("attachment", 1000) == 250
    assert b.cost("attachment", 1) == 1  # rounded up to a whole nano-unit
    assert b.amount == 0.001
    assert NANO == 10**9
    demands = plan_check(compiled, SCOPE, [("attachment", 4), ("span", 9)], NOW)
    assert demands[0].counters[0].key("r").startswith("{r:b:b:default}:")
    assert demands[1].counters == []  # spans carry no price


def test_spike_counters_and_merge() -> None:
    org = CompiledSpike(frozenset({"error"}), 100, 5.0, 168)
    project = CompiledSpike(frozenset({"transaction"}), 50, 10.0, 24)
    merged = merge_spike(org, project)
    assert merged == CompiledSpike(frozenset({"error", "transaction"}), 50, 5.0, 168)
    assert merge_spike(org, None) is org
    assert merge_spike(None, None) is None
    everything = CompiledSpike(frozenset(), 50, 10.0, 24)
    assert merge_spike(org, everything) == CompiledSpike(frozenset(), 50, 5.0, 168)
    compiled = compile_quotas(spike=org)
    error, span = plan_check(compiled, SCOPE, [("error", 4), ("span", 4)], NOW)
    (counter,) = error.counters
    hour = int(NOW // 3600)
    assert counter.key("relay") == f"{{relay:s:42:error}}:{hour}"
    assert counter.limit is None and counter.quota is None
    assert counter.reason == "spike_protection"
    assert span.counters == []
    assert spike_history_suffixes(NOW, 3) == [str(hour - 1), str(hour - 2), str(hour - 3)]


def test_disabled_spike_protection_compiles_to_nothing() -> None:
    assert compile_quotas(spike=SpikeProtectionConfig(enabled=False)).spike is None
    assert not compile_quotas()


# --- spike thresholds -----------------------------------------------------------------


def test_spike_threshold_without_history_is_the_floor() -> None:
    assert spike_baseline([]) == 0.0
    assert spike_threshold([], 1000, 5.0) == 1000
    assert spike_threshold([0] * 168, 10, 5.0) == 10


def test_spike_threshold_of_flat_traffic() -> None:
    assert spike_baseline([100] * 168) == 100.0
    assert spike_threshold([100] * 168, 10, 3.0) == 300
    assert spike_threshold([100] * 168, 1000, 3.0) == 1000


def test_spike_baseline_leans_on_the_same_hour_of_the_week() -> None:
    quiet = [10] * 168
    busy_last_week = list(quiet)
    busy_last_week[167] = 1000  # exactly a week ago this hour was busy
    busy_yesterday = list(quiet)
    busy_yesterday[23] = 1000  # same hour yesterday
    busy_other = list(quiet)
    busy_other[4] = 1000  # some other hour
    week, day, other = (spike_baseline(h) for h in (busy_last_week, busy_yesterday, busy_other))
    assert week > day > other > 10
    assert week == pytest.approx(0.5 * 1000 + 0.25 * 10 + 0.25 * (10 * 167 + 1000) / 168)


def test_spike_baseline_with_less_than_a_day_of_history() -> None:
    assert spike_baseline([30, 10]) == 20.0
    assert spike_threshold([30, 10], 0, 2.5) == 50


def test_plans_are_reused_within_their_windows_and_rebuilt_after() -> None:
    quotas = [quota(id="minute", window=60), quota(id="hour", window="hour", categories=["error"])]
    compiled = compile_quotas(quotas, spike=CompiledSpike(frozenset(), 100, 5.0, 24))
    start = int(ts(2026, 3, 10, 12, 30))

    def plan(now: float, quantity: int = 2, scope: Scoping = SCOPE) -> list[tuple[str, int, int]]:
        (demand,) = plan_check(compiled, scope, [("error", quantity)], now)
        return [(c.key("r"), c.increment, c.ttl) for c in demand.counters]

    first = plan(start + 1)
    assert [k for k, _, _ in first] == [
        f"{{r:q:minute:default}}:error:{start}",
        f"{{r:q:hour:default}}:{int(ts(2026, 3, 10, 12))}",
        f"{{r:s:42:error}}:{int(start // 3600)}",
    ]
    assert len(compiled.plans) == 1
    # Same window: the cached plan, with this envelope's quantity and the time left.
    later = plan(start + 50, quantity=5)
    assert [k for k, _, _ in later] == [k for k, _, _ in first]
    assert [i for _, i, _ in later] == [5, 5, 5]
    assert later[0][2] == first[0][2] - 49
    # The minute window ends: a new plan (new minute key), the same hour keys.
    after = plan(start + 60)
    assert after[0][0] == f"{{r:q:minute:default}}:error:{start + 60}"
    assert [k for k, _, _ in after[1:]] == [k for k, _, _ in first[1:]]
    # A clock that steps back gets the plan of its own time, never a later window's.
    assert plan(start + 1) == first
    # Another key of the same project: its own plan, the same project-scoped keys.
    other = Scoping(42, "def")
    assert [k for k, _, _ in plan(start + 1, scope=other)] == [k for k, _, _ in first]
    assert len(compiled.plans) == 2
    # The cache takes no part in equality.
    assert compiled == compile_quotas(quotas, spike=compiled.spike)


def test_sentry_names_of_categories_are_accepted_and_counted_as_ours() -> None:
    """`user_report_v2` is Sentry's name of the `feedback` category; `trace_metric` is one
    of its own."""
    quotas = [
        quota(id="fb", categories=["user_report_v2"]),
        quota(id="tm", categories=["trace_metric"]),
    ]
    assert validate_quotas(quotas) == []
    assert validate_budgets([budget(prices={"user_report_v2": 0.5})]) == []
    compiled = compile_quotas(quotas, [budget(prices={"user_report_v2": 0.5})])
    assert [sorted(q.categories) for q in compiled.quotas] == [
        ["feedback"],
        ["trace_metric"],
        ["feedback"],
    ]
    assert compiled.quotas[0].applies("feedback", SCOPE)
