"""`X-Sentry-Rate-Limits` and `Retry-After`: parse what upstreams send, format what SDKs read.

    X-Sentry-Rate-Limits: <retry_after>:<categories>:<scope>[:<reason>[:<namespaces>]], ...

`categories` is `;`-separated; empty means every category. Unknown or broken
entries are skipped, never fatal.
"""

from __future__ import annotations

import email.utils
import math
import time
from dataclasses import dataclass

#: Used when an upstream says 429 and gives no usable header.
DEFAULT_RETRY_AFTER = 60.0
#: Never trust an upstream to block us for more than a day.
MAX_RETRY_AFTER = 86400.0


@dataclass(frozen=True, slots=True)
class RateLimit:
    retry_after: float
    #: Empty: every category.
    categories: tuple[str, ...]
    scope: str = "organization"
    reason: str | None = None
    namespaces: tuple[str, ...] = ()

    def applies_to(self, category: str) -> bool:
        return not self.categories or category in self.categories


def parse_rate_limits(value: str) -> list[RateLimit]:
    limits: list[RateLimit] = []
    for entry in value.split(","):
        parts = entry.strip().split(":")
        if len(parts) < 2 or not parts[0]:
            continue
        try:
            retry_after = float(parts[0])
        except ValueError:
            continue
        if not math.isfinite(retry_after) or retry_after < 0:
            continue
        categories = tuple(c for c in (p.strip() for p in parts[1].split(";")) if c)
        scope = parts[2].strip() if len(parts) > 2 and parts[2].strip() else "organization"
        reason = parts[3].strip() if len(parts) > 3 and parts[3].strip() else None
        namespaces = tuple(n for n in parts[4].split(";") if n) if len(parts) > 4 else ()
        limits.append(
            RateLimit(min(retry_after, MAX_RETRY_AFTER), categories, scope, reason, namespaces)
        )
    return limits


def parse_retry_after(value: str | None, now: float | None = None) -> float:
    """Seconds from a `Retry-After` header (delta-seconds or HTTP date); default 60."""
    if not value:
        return DEFAULT_RETRY_AFTER
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value).timestamp()
        except (TypeError, ValueError, IndexError, OverflowError):
            return DEFAULT_RETRY_AFTER
        seconds = when - (time.time() if now is None else now)
    if not math.isfinite(seconds) or seconds < 0:
        return DEFAULT_RETRY_AFTER
    return min(seconds, MAX_RETRY_AFTER)


def format_rate_limits(limits: list[RateLimit]) -> str:
    """Format for SDKs: seconds rounded up to whole numbers, as Sentry does."""
    out = []
    for lim in limits:
        fields = [str(max(1, math.ceil(lim.retry_after))), ";".join(lim.categories), lim.scope]
        if lim.reason or lim.namespaces:
            fields.append(lim.reason or "")
        if lim.namespaces:
            fields.append(";".join(lim.namespaces))
        out.append(":".join(fields))
    return ", ".join(out)
