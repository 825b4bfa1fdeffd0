"""`policy.scrubbing`: the PII policy section (see relay.processing.scrub)."""

from __future__ import annotations

from typing import Any

from relay.config.base import Section


class ScrubbingConfig(Section):
    """Org-wide (or per-project, additive) data scrubbing settings."""

    defaults: bool = True
    pii_config: dict[str, Any] | None = None
