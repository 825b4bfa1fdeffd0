"""What happened to an item: the only words the relay has for it.

Every envelope item that reaches the relay ends with exactly one `Outcome`:

    accepted      delivered upstream (or written to the file outbox)
    filtered      dropped by an inbound filter (reason = the filter)
    sampled       dropped by a sampling rule (reason = the rule)
    rate_limited  dropped by a quota, spike protection or a cached upstream 429
    invalid       malformed, too large, or rejected by the upstream
    internal      lost to the relay itself (outbox expired, retries exhausted, a bug)

`shadowed` is not an item's fate but a note that a dropped item was mirrored to
the shadow project; metrics count it beside the others. Metrics, client reports
and shadow mode read only outcomes.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol


class OutcomeKind(StrEnum):
    ACCEPTED = "accepted"
    FILTERED = "filtered"
    SAMPLED = "sampled"
    RATE_LIMITED = "rate_limited"
    INVALID = "invalid"
    INTERNAL = "internal"
    SHADOWED = "shadowed"


class Reason:
    """Reason codes used by the relay itself (filters and quotas bring their own)."""

    UNKNOWN_ITEM = "unknown"
    TOO_LARGE = "too_large"
    #: A second event-like item (or Unreal crash report, or check-in) in one envelope:
    #: the first one is kept.
    DUPLICATE_ITEM = "duplicate_item"
    INVALID_JSON = "invalid_json"
    INVALID_PAYLOAD = "invalid_payload"
    #: The upstream answered 429 to this envelope (the upstream counted it itself).
    UPSTREAM_RATE_LIMITED = "upstream_rate_limited"
    #: Dropped here under a limit the upstream announced earlier, which named no reason
    #: (the words SDKs use for the same: backing off after a 429).
    RATELIMIT_BACKOFF = "ratelimit_backoff"
    UPSTREAM_REJECTED = "upstream_rejected"
    SEND_FAILED = "send_failed"
    OUTBOX_FULL = "outbox_full"
    EXPIRED = "expired"
    SHUTDOWN = "shutdown"
    #: Processing an accepted envelope after the answer raised (a bug; logged).
    PROCESSING_FAILED = "processing_failed"
    FORWARDED = "forwarded"
    #: The scrubbing policy drops attachments (`attachments: drop`).
    ATTACHMENTS_POLICY = "attachments_policy"


@dataclass(frozen=True, slots=True)
class Outcome:
    """One item's fate: kind, reason, and how much it counted for in its category."""

    kind: OutcomeKind
    reason: str
    category: str
    quantity: int = 1
    project_id: int | None = None
    #: The filter, sampling rule or quota id that decided (for shadow tags and metrics).
    rule: str | None = None


class OutcomeSink(Protocol):
    """Where outcomes go: metrics, client reports, shadow mode."""

    def emit(self, outcome: Outcome) -> None: ...


class OutcomeLog:
    """An in-memory sink; tests and `relay scrub` read `.outcomes`."""

    def __init__(self) -> None:
        self.outcomes: list[Outcome] = []

    def emit(self, outcome: Outcome) -> None:
        self.outcomes.append(outcome)
