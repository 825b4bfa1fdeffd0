from __future__ import annotations

from typing import Any

import msgspec

from relay.config.base import dec_hook
from relay.config.scrubbing import ScrubbingConfig


def cfg(**data: Any) -> ScrubbingConfig:
    """A scrubbing section from plain data, as the config loader builds it."""
    return msgspec.convert(data, ScrubbingConfig, dec_hook=dec_hook)


OFF: dict[str, Any] = {
    "defaults": False,
    "ip_addresses": False,
    "emails": False,
    "secrets": False,
    "meta": False,
}
