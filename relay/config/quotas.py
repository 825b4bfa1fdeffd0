"""`policy.quotas`, `policy.budgets`, `policy.spike_protection`: spend control sections."""

from __future__ import annotations

from relay.config.base import Section


class QuotaConfig(Section):
    """Sentry's quota object: categories, scope, limit, window, reason."""

    id: str
    limit: int


class BudgetConfig(Section):
    """A money budget: unit prices turned into a spend cap."""

    id: str


class SpikeProtectionConfig(Section):
    """Spike protection after Sentry's documented algorithm."""

    enabled: bool = False
