"""`policy.filters`, `policy.sampling`, `policy.shadow`: noise control sections."""

from __future__ import annotations

from relay.config.base import Section


class FiltersConfig(Section):
    """Inbound filters, evaluated in order; each drops with its own reason."""


class SamplingRule(Section):
    """One sampling rule: the first matching rule decides the keep rate."""

    rate: float = 1.0


class ShadowConfig(Section):
    """Where dropped items are mirrored (scrubbed and tagged) for auditing."""

    dsn: str
