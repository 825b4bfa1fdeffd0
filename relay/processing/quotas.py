"""Quotas, budgets and spike protection: validation, compilation, and the counting plan.

Pure: no IO, no clock of its own (every function that needs the time takes `now`).

- `validate_quotas`, `validate_budgets`, `validate_spike_protection`: semantic checks,
  paths relative to the list or section.
- `compile_quotas` / `compile_policy_quotas`: configs -> `CompiledQuotas`, once per
  policy revision.
- `plan_check`: for one envelope's `(category, quantity)` pairs, which counters each
  category must increment and up to which limit (`CategoryDemand`). A limiter backend
  executes the plan: per category all-or-nothing across its counters, categories
  independent of each other.
- Windows: `Window.bounds(now)`; fixed windows are aligned to the Unix epoch,
  `hour`/`day` are UTC calendar hours/days, `month` starts on the 1st, 00:00 UTC.
- `spike_threshold`: the hourly threshold from the accepted counts of past hours.

Counter keys (`Counter.key(prefix)`) carry a Redis Cluster hash tag of one quota and
one scope id (`{relay:q:<quota>:<scope_id>}`), or of one project and category for
spike protection (`{relay:s:<project>:<category>}`).

Budgets count money in integer nano-units of the currency (1e-9), so that prices such
as 0.0000125 per transaction or 2.5e-10 per attachment byte stay exact; a charge is
rounded up to a whole nano-unit.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_CEILING, Decimal

from relay.config import PolicyConfig
from relay.config.base import Duration, Problem, join_path
from relay.config.quotas import BudgetConfig, QuotaConfig, SpikeProtectionConfig
from relay.protocol.categories import CATEGORY_ALIASES, DataCategory, canonical_category

#: Budgets are counted in units of 1e-9 of their currency.
NANO = 1_000_000_000

SCOPES = ("organization", "project", "key")
MODES = ("enforce", "dry_run")
CALENDAR_WINDOWS = ("hour", "day", "month")
KNOWN_CATEGORIES = frozenset(c.value for c in DataCategory) | frozenset(CATEGORY_ALIASES)
SPIKE_REASON = "spike_protection"
SPIKE_ID = "spike_protection"
#: Counters outlive their window by this much, so late reads still see them.
KEY_GRACE_S = 60
#: `limit: 0` and other counter-less rejections ask SDKs to come back after this.
DEFAULT_RETRY_AFTER = 60.0

_NAME_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
_REASON_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")


# --- scoping and windows --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Scoping:
    """Who sent an envelope: organization, project and public key."""

    project_id: int
    public_key: str
    organization_id: str = "default"

    def scope_id(self, scope: str) -> str:
        if scope == "key":
            return self.public_key
        if scope == "project":
            return str(self.project_id)
        return self.organization_id


@dataclass(frozen=True, slots=True)
class Window:
    """A counting window: `seconds` long and aligned to the epoch, or a UTC calendar month."""

    seconds: int
    month: bool = False
    label: str = ""

    def bounds(self, now: float) -> tuple[int, int]:
        """`(start, end)` in Unix seconds of the window containing `now`."""
        if self.month:
            return month_bounds(now)
        start = math.floor(now / self.seconds) * self.seconds
        return start, start + self.seconds

    def __str__(self) -> str:
        return self.label or f"{self.seconds}s"


def month_bounds(now: float) -> tuple[int, int]:
    """The UTC calendar month containing `now`, as `(start, end)` Unix seconds."""
    t = datetime.fromtimestamp(math.floor(now), UTC)
    start = datetime(t.year, t.month, 1, tzinfo=UTC)
    end = datetime(t.year + (t.month == 12), t.month % 12 + 1, 1, tzinfo=UTC)
    return int(start.timestamp()), int(end.timestamp())


def parse_window(value: int | str) -> Window:
    """`60`, `"10m"`, `"hour"`, `"day"` or `"month"` -> `Window`; ValueError otherwise."""
    if isinstance(value, str):
        if value == "hour":
            return Window(3600, label="hour")
        if value == "day":
            return Window(86400, label="day")
        if value == "month":
            return Window(0, month=True, label="month")
        seconds = float(Duration.parse(value))
    else:
        if isinstance(value, bool):
            raise ValueError("expected seconds or hour/day/month")
        seconds = float(value)
    if seconds < 1 or seconds != int(seconds):
        raise ValueError("a window is a whole number of seconds, at least 1")
    return Window(int(seconds))


# --- validation -----------------------------------------------------------------------


def _check_categories(categories: Iterable[str], path: str) -> list[Problem]:
    return [
        Problem(join_path(path, i), f"unknown data category {c!r}")
        for i, c in enumerate(categories)
        if c not in KNOWN_CATEGORIES
    ]


def _check_window(window: int | str, path: str) -> list[Problem]:
    try:
        parse_window(window)
    except ValueError as exc:
        return [Problem(path, f"{exc} (seconds, a duration such as '10m', or hour/day/month)")]
    return []


def _check_common(
    entry: QuotaConfig | BudgetConfig, path: str, seen: dict[str, int], index: int
) -> list[Problem]:
    problems: list[Problem] = []
    if not _NAME_RE.match(entry.id):
        problems.append(Problem(join_path(path, "id"), "use 1-64 letters, digits, '_', '-' or '.'"))
    if entry.id in seen:
        problems.append(Problem(join_path(path, "id"), f"duplicate id (also [{seen[entry.id]}])"))
    seen.setdefault(entry.id, index)
    if entry.scope not in SCOPES:
        problems.append(
            Problem(join_path(path, "scope"), "must be 'organization', 'project' or 'key'")
        )
    if entry.mode not in MODES:
        problems.append(Problem(join_path(path, "mode"), "must be 'enforce' or 'dry_run'"))
    if entry.reason is not None and not _REASON_RE.match(entry.reason):
        problems.append(
            Problem(join_path(path, "reason"), "use 1-64 letters, digits, '_', '-' or '.'")
        )
    return problems


def validate_quotas(quotas: Sequence[QuotaConfig]) -> list[Problem]:
    """Semantic checks of a `quotas` list; paths like `[1].window`."""
    problems: list[Problem] = []
    seen: dict[str, int] = {}
    for i, quota in enumerate(quotas):
        path = f"[{i}]"
        problems.extend(_check_common(quota, path, seen, i))
        if quota.limit < 0:
            problems.append(Problem(join_path(path, "limit"), "cannot be negative"))
        problems.extend(_check_categories(quota.categories, join_path(path, "categories")))
        if quota.window is None:
            if quota.limit != 0:
                problems.append(Problem(join_path(path, "window"), "required unless limit is 0"))
        else:
            problems.extend(_check_window(quota.window, join_path(path, "window")))
        if quota.scope_id is not None:
            if quota.scope == "organization":
                problems.append(
                    Problem(join_path(path, "scope_id"), "only for scope 'project' or 'key'")
                )
            elif quota.scope == "project" and not quota.scope_id.isdigit():
                problems.append(Problem(join_path(path, "scope_id"), "must be a project id"))
            elif not re.fullmatch(r"[0-9a-zA-Z]{1,64}", quota.scope_id):
                problems.append(Problem(join_path(path, "scope_id"), "must be a public key"))
    return problems


def validate_budgets(budgets: Sequence[BudgetConfig]) -> list[Problem]:
    """Semantic checks of a `budgets` list; paths like `[0].prices.error`."""
    problems: list[Problem] = []
    seen: dict[str, int] = {}
    for i, budget in enumerate(budgets):
        path = f"[{i}]"
        problems.extend(_check_common(budget, path, seen, i))
        if not math.isfinite(budget.amount) or budget.amount < 0:
            problems.append(Problem(join_path(path, "amount"), "must be a number >= 0"))
        elif budget.amount * NANO > 2**53:
            problems.append(Problem(join_path(path, "amount"), "must be below 9007199"))
        if not budget.prices:
            problems.append(Problem(join_path(path, "prices"), "price at least one category"))
        for category, price in budget.prices.items():
            ppath = join_path(join_path(path, "prices"), category)
            if category not in KNOWN_CATEGORIES:
                problems.append(Problem(ppath, f"unknown data category {category!r}"))
            if not math.isfinite(price) or price < 0:
                problems.append(Problem(ppath, "must be a number >= 0"))
            elif price * NANO > 2**53:
                # Counters are integers in Redis: one unit must stay countable.
                problems.append(Problem(ppath, "must be below 9007199"))
        problems.extend(_check_window(budget.window, join_path(path, "window")))
    return problems


def validate_spike_protection(cfg: SpikeProtectionConfig) -> list[Problem]:
    """Semantic checks of a `spike_protection` section; paths like `multiplier`."""
    problems = _check_categories(cfg.categories, "categories")
    if cfg.floor_per_hour < 0:
        problems.append(Problem("floor_per_hour", "cannot be negative"))
    if not math.isfinite(cfg.multiplier) or cfg.multiplier <= 0:
        problems.append(Problem("multiplier", "must be greater than 0"))
    if not 1 <= cfg.history_hours <= 24 * 7 * 8:
        problems.append(Problem("history_hours", "must be between 1 and 1344 (8 weeks)"))
    return problems


# --- compiled form --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CompiledQuota:
    """A quota or budget ready for counting. Budgets count nano-units of money."""

    id: str
    #: "quota" or "budget".
    kind: str
    scope: str
    #: Categories sharing one counter; empty: every category, each in its own counter.
    categories: frozenset[str]
    #: Items (or nano-units for budgets) per window; 0 rejects without counting.
    limit: int
    window: Window | None
    #: The reason code in `X-Sentry-Rate-Limits` and outcomes.
    reason: str
    dry_run: bool = False
    scope_id: str | None = None
    #: Budgets: category -> price of one unit in currency.
    prices: dict[str, Decimal] = field(default_factory=dict)
    currency: str | None = None

    def applies(self, category: str, scoping: Scoping) -> bool:
        if self.kind == "budget":
            if category not in self.prices:
                return False
        elif self.categories and category not in self.categories:
            return False
        return self.scope_id is None or self.scope_id == scoping.scope_id(self.scope)

    def cost(self, category: str, quantity: int) -> int:
        """What `quantity` of `category` adds to this counter."""
        if self.kind != "budget" or quantity == 0:
            return quantity
        nano = self.prices[category] * quantity * NANO
        return int(nano.to_integral_value(rounding=ROUND_CEILING))

    @property
    def per_category(self) -> bool:
        """Whether each category has a counter of its own."""
        return self.kind == "quota" and not self.categories

    def header_categories(self, category: str) -> tuple[str, ...]:
        """Categories an SDK should stop sending when this quota's counter is full."""
        if self.per_category:
            return (category,)
        if self.kind == "budget":
            # A category priced at 0 never adds to the counter, so a full budget still
            # accepts it: SDKs must not be told to hold it back.
            # (Never an empty tuple, which would stop every category.)
            return tuple(sorted(c for c, price in self.prices.items() if price > 0)) or (category,)
        return tuple(sorted(self.categories))

    @property
    def amount(self) -> float:
        """Budgets: the cap in currency."""
        return self.limit / NANO


@dataclass(frozen=True, slots=True)
class CompiledSpike:
    #: Empty: every category, each on its own.
    categories: frozenset[str]
    floor_per_hour: int
    multiplier: float
    history_hours: int

    def applies(self, category: str) -> bool:
        return not self.categories or category in self.categories


@dataclass(frozen=True, slots=True)
class CompiledQuotas:
    """Everything a limiter needs for one project: quotas, budgets, spike protection."""

    quotas: tuple[CompiledQuota, ...] = ()
    spike: CompiledSpike | None = None
    #: Plans by (scoping, category), reused while their windows last (see `plan_check`).
    plans: dict[tuple[Scoping, str], _CategoryPlan] = field(
        default_factory=dict, compare=False, repr=False
    )

    def __bool__(self) -> bool:
        return bool(self.quotas) or self.spike is not None


def _compile_quota(cfg: QuotaConfig) -> CompiledQuota:
    return CompiledQuota(
        id=cfg.id,
        kind="quota",
        scope=cfg.scope,
        categories=frozenset(map(canonical_category, cfg.categories)),
        limit=cfg.limit,
        window=None if cfg.window is None else parse_window(cfg.window),
        reason=cfg.reason or cfg.id,
        dry_run=cfg.mode == "dry_run",
        scope_id=cfg.scope_id,
    )


def _compile_budget(cfg: BudgetConfig) -> CompiledQuota:
    prices = {canonical_category(c): Decimal(repr(p)) for c, p in cfg.prices.items()}
    amount = Decimal(repr(cfg.amount)) * NANO
    return CompiledQuota(
        id=cfg.id,
        kind="budget",
        scope=cfg.scope,
        categories=frozenset(prices),
        limit=int(amount.to_integral_value(rounding=ROUND_CEILING)),
        window=parse_window(cfg.window),
        reason=cfg.reason or cfg.id,
        dry_run=cfg.mode == "dry_run",
        prices=prices,
        currency=cfg.currency,
    )


def compile_spike(cfg: SpikeProtectionConfig | None) -> CompiledSpike | None:
    if cfg is None or not cfg.enabled:
        return None
    return CompiledSpike(
        categories=frozenset(map(canonical_category, cfg.categories)),
        floor_per_hour=cfg.floor_per_hour,
        multiplier=cfg.multiplier,
        history_hours=cfg.history_hours,
    )


def compile_quotas(
    quotas: Iterable[QuotaConfig] = (),
    budgets: Iterable[BudgetConfig] = (),
    spike: SpikeProtectionConfig | CompiledSpike | None = None,
) -> CompiledQuotas:
    """Compile validated configs. Quotas are checked in the order given."""
    compiled = [_compile_quota(q) for q in quotas] + [_compile_budget(b) for b in budgets]
    return CompiledQuotas(
        quotas=tuple(compiled),
        spike=spike if isinstance(spike, CompiledSpike | None) else compile_spike(spike),
    )


def merge_spike(org: CompiledSpike | None, project: CompiledSpike | None) -> CompiledSpike | None:
    """A project can add spike protection or tighten it, never loosen the org's."""
    if org is None or project is None:
        return org or project
    categories = (
        frozenset()
        if not org.categories or not project.categories
        else org.categories | project.categories
    )
    return CompiledSpike(
        categories=categories,
        floor_per_hour=min(org.floor_per_hour, project.floor_per_hour),
        multiplier=min(org.multiplier, project.multiplier),
        history_hours=max(org.history_hours, project.history_hours),
    )


def compile_policy_quotas(org: PolicyConfig, project: PolicyConfig | None) -> CompiledQuotas:
    """The org policy's quotas, budgets and spike protection plus a project's own.

    Both levels' quotas and budgets apply (org first); spike protection merges with
    `merge_spike`.
    """
    quotas = list(org.quotas) + (list(project.quotas) if project else [])
    budgets = list(org.budgets) + (list(project.budgets) if project else [])
    spike = merge_spike(
        compile_spike(org.spike_protection),
        compile_spike(project.spike_protection) if project else None,
    )
    return compile_quotas(quotas, budgets, spike)


# --- the plan of one check ------------------------------------------------------------


@dataclass(slots=True)
class Counter:
    """One counter a category must increment: key parts, limit, amount, expiry."""

    #: Hash-tagged part of the key (without prefix): `q:<id>:<scope_id>`, `s:<project>:<cat>`.
    tag: str
    #: Rest of the key: category and/or window start, or the hour index.
    suffix: str
    #: None until a spike threshold is filled in.
    limit: int | None
    increment: int
    window_end: int
    #: Seconds the key should live from now.
    ttl: int
    #: Enforced (True) or only reported (False, dry run).
    gating: bool
    #: The quota; None for spike protection.
    quota: CompiledQuota | None

    def key(self, prefix: str) -> str:
        return f"{{{prefix}:{self.tag}}}:{self.suffix}"

    @property
    def quota_id(self) -> str:
        return self.quota.id if self.quota is not None else SPIKE_ID

    @property
    def reason(self) -> str:
        return self.quota.reason if self.quota is not None else SPIKE_REASON

    @property
    def scope(self) -> str:
        return self.quota.scope if self.quota is not None else "project"

    def header_categories(self, category: str) -> tuple[str, ...]:
        return self.quota.header_categories(category) if self.quota is not None else (category,)


@dataclass(slots=True)
class CategoryDemand:
    """One category of an envelope: its quantity and the counters it must fit into."""

    category: str
    quantity: int
    counters: list[Counter]
    #: A `limit: 0` quota that rejects this category outright (enforced), if any.
    blocked_by: CompiledQuota | None = None
    #: `limit: 0` quotas in dry-run mode that would have rejected it.
    dry_run_blocked: list[CompiledQuota] = field(default_factory=list)


def sum_quantities(quantities: Iterable[tuple[str, int]]) -> dict[str, int]:
    """Sum `(category, quantity)` pairs per category, keeping first-seen order."""
    totals: dict[str, int] = {}
    for category, quantity in quantities:
        totals[str(category)] = totals.get(str(category), 0) + max(int(quantity), 0)
    return totals


def quota_counter(
    quota: CompiledQuota, scoping: Scoping, category: str, quantity: int, now: float
) -> Counter:
    return _quota_template(quota, scoping, category, now)[0].counter(category, quantity, now)


def spike_tag(project_id: int, category: str) -> str:
    return f"s:{project_id}:{category}"


def spike_counter(
    spike: CompiledSpike, scoping: Scoping, category: str, quantity: int, now: float
) -> Counter:
    return _spike_template(spike, scoping, category, now).counter(category, quantity, now)


def spike_history_suffixes(now: float, history_hours: int) -> list[str]:
    """Key suffixes of the past hours, 1 hour back first, `history_hours` back last."""
    hour = math.floor(now / 3600)
    return [str(hour - k) for k in range(1, history_hours + 1)]


@dataclass(frozen=True, slots=True)
class _CounterTemplate:
    """What a `Counter` keeps while its window lasts; the envelope adds amount and ttl."""

    tag: str
    suffix: str
    limit: int | None
    window_end: int
    gating: bool
    quota: CompiledQuota | None
    #: Seconds the key outlives its window (grace, plus the spike history).
    extra_ttl: int

    def counter(self, category: str, quantity: int, now: float) -> Counter:
        quota = self.quota
        return Counter(
            self.tag,
            self.suffix,
            self.limit,
            quota.cost(category, quantity) if quota is not None else quantity,
            self.window_end,
            max(1, math.ceil(self.window_end - now)) + self.extra_ttl,
            self.gating,
            quota,
        )


@dataclass(frozen=True, slots=True)
class _CategoryPlan:
    """The counters of one (scoping, category), valid for `valid_from <= now < valid_until`."""

    valid_from: float
    valid_until: float
    templates: tuple[_CounterTemplate, ...]
    blocked_by: CompiledQuota | None
    dry_run_blocked: tuple[CompiledQuota, ...]


#: Cached plans per `CompiledQuotas` before the cache starts over.
MAX_CACHED_PLANS = 4096


def _build_plan(
    compiled: CompiledQuotas, scoping: Scoping, category: str, now: float
) -> _CategoryPlan:
    templates: list[_CounterTemplate] = []
    blocked_by: CompiledQuota | None = None
    dry_run_blocked: list[CompiledQuota] = []
    valid_from, valid_until = -math.inf, math.inf
    seen: dict[str, int] = {}
    for quota in compiled.quotas:
        if not quota.applies(category, scoping):
            continue
        if quota.limit == 0 and quota.kind == "quota":
            if quota.dry_run:
                dry_run_blocked.append(quota)
            elif blocked_by is None:
                blocked_by = quota
            continue
        template, start = _quota_template(quota, scoping, category, now)
        valid_from = max(valid_from, start)
        valid_until = min(valid_until, template.window_end)
        ident = f"{template.tag}:{template.suffix}"
        index = seen.get(ident)
        if index is not None:
            other = templates[index]
            if template.gating and (not other.gating or (template.limit or 0) < (other.limit or 0)):
                templates[index] = template
            continue
        seen[ident] = len(templates)
        templates.append(template)
    spike = compiled.spike
    if spike is not None and spike.applies(category):
        template = _spike_template(spike, scoping, category, now)
        templates.append(template)
        valid_from = max(valid_from, template.window_end - 3600)
        valid_until = min(valid_until, template.window_end)
    return _CategoryPlan(
        valid_from, valid_until, tuple(templates), blocked_by, tuple(dry_run_blocked)
    )


def _quota_template(
    quota: CompiledQuota, scoping: Scoping, category: str, now: float
) -> tuple[_CounterTemplate, int]:
    """The quota's counter in the window containing `now`, and that window's start."""
    assert quota.window is not None
    start, end = quota.window.bounds(now)
    letter = "b" if quota.kind == "budget" else "q"
    template = _CounterTemplate(
        f"{letter}:{quota.id}:{scoping.scope_id(quota.scope)}",
        f"{category}:{start}" if quota.per_category else str(start),
        quota.limit,
        end,
        not quota.dry_run,
        quota,
        KEY_GRACE_S,
    )
    return template, start


def _spike_template(
    spike: CompiledSpike, scoping: Scoping, category: str, now: float
) -> _CounterTemplate:
    """The spike counter of the hour containing `now` (its limit is filled in later)."""
    hour = math.floor(now / 3600)
    return _CounterTemplate(
        spike_tag(scoping.project_id, category),
        str(hour),
        None,
        (hour + 1) * 3600,
        True,
        None,
        spike.history_hours * 3600 + KEY_GRACE_S,
    )


def plan_check(
    compiled: CompiledQuotas, scoping: Scoping, quantities: Iterable[tuple[str, int]], now: float
) -> list[CategoryDemand]:
    """Counters each category of an envelope must fit into, in quota order.

    Categories with quantity 0 get no counters (they always fit) but still meet
    `limit: 0` quotas. A counter key that two quotas share (same id and scope id at
    org and project level) is counted once, against the smaller limit.

    Which counters a (scoping, category) has only changes when a window ends, so the
    plan is kept in `compiled.plans` and reused while `now` is inside all its windows.
    """
    plans = compiled.plans
    demands: list[CategoryDemand] = []
    for category, quantity in sum_quantities(quantities).items():
        key = (scoping, category)
        plan = plans.get(key)
        if plan is None or not plan.valid_from <= now < plan.valid_until:
            plan = _build_plan(compiled, scoping, category, now)
            if len(plans) >= MAX_CACHED_PLANS:
                plans.clear()
            plans[key] = plan
        demands.append(
            CategoryDemand(
                category,
                quantity,
                [t.counter(category, quantity, now) for t in plan.templates]
                if quantity > 0
                else [],
                plan.blocked_by,
                list(plan.dry_run_blocked),
            )
        )
    return demands


def zero_limit_retry_after(quota: CompiledQuota, now: float) -> float:
    """Retry-After for a `limit: 0` rejection: the rest of its window, else a minute."""
    if quota.window is None:
        return DEFAULT_RETRY_AFTER
    return max(1.0, quota.window.bounds(now)[1] - now)


# --- spike protection -----------------------------------------------------------------

HOURS_PER_WEEK = 168
#: Shares of the baseline: same hour of the week, same hour of the day, every hour.
SPIKE_WEIGHTS = (0.5, 0.25, 0.25)


def spike_baseline(history: Sequence[int]) -> float:
    """Expected count of the current hour from past hourly counts.

    `history[k - 1]` is the count `k` hours ago. The baseline blends three means:
    the hours exactly a week (or whole weeks) ago, the same hour on other days, and
    all hours, weighted `SPIKE_WEIGHTS`; missing groups drop out and the rest are
    renormalized. No history at all gives 0.

    Hours older than the oldest hour with a count are not history: a counter that was
    never written reads 0, and the hours before a project (or a category, or spike
    protection itself) started would otherwise count as hours without traffic, pulling
    a new project's threshold down to a fraction of its normal traffic for a week.
    """
    known = len(history)
    while known and history[known - 1] <= 0:
        known -= 1
    history = history[:known]
    week: list[int] = []
    day: list[int] = []
    for k, count in enumerate(history, start=1):
        if k % HOURS_PER_WEEK == 0:
            week.append(count)
        elif k % 24 == 0:
            day.append(count)
    groups = [(week, SPIKE_WEIGHTS[0]), (day, SPIKE_WEIGHTS[1]), (list(history), SPIKE_WEIGHTS[2])]
    total = sum(w for values, w in groups if values)
    if total == 0:
        return 0.0
    return sum(w * (sum(values) / len(values)) for values, w in groups if values) / total


def spike_threshold(history: Sequence[int], floor_per_hour: int, multiplier: float) -> int:
    """Items allowed in the current hour: `max(floor, ceil(multiplier x baseline))`."""
    return max(floor_per_hour, math.ceil(multiplier * spike_baseline(history)))
