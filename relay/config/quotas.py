"""`policy.quotas`, `policy.budgets`, `policy.spike_protection`: spend control sections.

Shapes only; semantic checks live in `relay.processing.quotas` (`validate_quotas`,
`validate_budgets`, `validate_spike_protection`), which also compiles them.

A window is a number of seconds (`60`), a duration string (`"10m"`), or a calendar
period in UTC: `"hour"`, `"day"` or `"month"`.
"""

from __future__ import annotations

from relay.config.base import Section


class QuotaConfig(Section, frozen=True):
    """Sentry's quota object.

    - `id`: names the counter (with the scope id); letters, digits, `_`, `-`, `.`.
    - `categories`: data categories counted together in one counter; empty = every
      category, each counted in its own counter (bytes and items never add up).
    - `scope`: `organization`, `project` or `key`: whose traffic shares one counter.
    - `scope_id`: apply only to this project id or public key (Sentry's `scopeId`).
    - `limit`: quantity allowed per window; `0` rejects every item without counting.
    - `window`: seconds, a duration string, or `hour` / `day` / `month` (UTC calendar);
      required unless `limit` is 0.
    - `reason`: the reason code SDKs see in `X-Sentry-Rate-Limits` and outcomes carry;
      defaults to the quota id.
    - `mode`: `enforce`, or `dry_run` (count and report what would be rejected, accept).
    """

    id: str
    limit: int
    categories: list[str] = []
    scope: str = "organization"
    scope_id: str | None = None
    window: int | str | None = None
    reason: str | None = None
    mode: str = "enforce"


class BudgetConfig(Section, frozen=True):
    """A money budget: unit prices turned into a spend cap.

    - `id`: names the counter, like a quota id.
    - `scope`: `organization`, `project` or `key`.
    - `amount`: the cap in `currency` per window; `0` rejects every priced category.
    - `window`: as for quotas, typically `month`.
    - `prices`: category -> price of one unit (attachments: one byte); categories
      without a price are not subject to the budget.
    - `currency`: label for reports only (e.g. `USD`).
    - `reason`: reason code for rejections; defaults to the budget id.
    - `mode`: `enforce` or `dry_run`.
    """

    id: str
    amount: float
    prices: dict[str, float]
    window: int | str = "month"
    scope: str = "organization"
    currency: str | None = None
    reason: str | None = None
    mode: str = "enforce"


class SpikeProtectionConfig(Section, frozen=True):
    """Spike protection after Sentry's documented algorithm.

    Hourly accepted counts per project and category are kept for `history_hours`;
    each hour the threshold is `max(floor_per_hour, multiplier x baseline)`, the
    baseline weighted toward the same hour of the week. Items beyond the threshold
    within the hour are rejected with reason `spike_protection`.

    - `categories`: protected categories; empty = every category (each on its own).
    """

    enabled: bool = False
    categories: list[str] = []
    floor_per_hour: int = 1000
    multiplier: float = 5.0
    history_hours: int = 168
