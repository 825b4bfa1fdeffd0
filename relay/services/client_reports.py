"""Client reports: the relay tells the upstream what it dropped, as SDKs do.

Drops are summed per upstream target, reason and category, and sent every
`upstream.client_reports_interval` seconds as a `client_report` envelope item,
so Sentry's usage stats show what the relay discarded. Drops the upstream
decided itself (its 429s and rejections) are not reported back to it.

A drop at ingest is reported in every category the item counted in (a transaction in
`transaction` and `span`, an attachment in `attachment` and `attachment_item`; a
rate-limited log in the rejected one of `log_item` / `log_byte`), as Sentry's relays and
SDKs report it, whatever dropped it; later drops (the forwarder's) in their outcome's
category, an attachment with its `attachment_item` too (one per outcome: an outcome is one
item).

Each drop goes in the report's field for it, as a relay in front of Sentry reports
them: a quota's in `rate_limited_events` with its reason code, a filter's in
`filtered_events` with the filter's name (`release-version`, `localhost`, ... or a
rule's id), so Sentry's stats show them as the relay's own and not as the SDK's. What
has no field of its own (sampling by our rules, whose ids are not Sentry's numeric rule
ids; invalid items; the relay's own losses) goes in `discarded_events` under the SDK's
discard reasons.

Within what Sentry reads of a report: `discarded_events` always present (a report
without it is not read at all), each line's quantity within 32 bits (a larger one fails
the whole report) and its reason within 200 UTF-8 bytes (a longer one is skipped), and
no line in a category Sentry bills nothing in (`unknown` items, `default`: an SDK's
client reports, metrics), which its stats would count as errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from typing import Any

import orjson

from relay.outcomes import Outcome, OutcomeKind, Reason
from relay.policy.targets import Target
from relay.protocol.categories import DataCategory
from relay.protocol.envelope import make_envelope
from relay.services.outbox import Outbox, OutboxEntry, OutboxFull

log = logging.getLogger("relay.client_reports")

#: The report field of the outcome kinds that keep their own reason.
FIELDS = {
    OutcomeKind.FILTERED: "filtered_events",
    OutcomeKind.RATE_LIMITED: "rate_limited_events",
}
#: The other kinds, in `discarded_events`, in the words of the SDKs' discard reasons.
DISCARD_REASONS = {
    OutcomeKind.SAMPLED: "sample_rate",
    OutcomeKind.INVALID: "internal_sdk_error",
    OutcomeKind.INTERNAL: "queue_overflow",
}
#: Sentry ignores a report line whose reason is longer than this, in UTF-8 bytes.
MAX_REASON = 200

_NOT_REPORTED = frozenset({Reason.UPSTREAM_RATE_LIMITED, Reason.UPSTREAM_REJECTED})
#: Categories whose drops are not reported: Sentry counts nothing in them (its stats
#: would show them as errors).
_UNREPORTED_CATEGORIES = frozenset({DataCategory.UNKNOWN.value, DataCategory.DEFAULT.value})
_ATTACHMENT = DataCategory.ATTACHMENT.value
_ATTACHMENT_ITEM = DataCategory.ATTACHMENT_ITEM.value
#: The most one report line counts (Sentry reads a quantity as an unsigned 32-bit number).
MAX_QUANTITY = 2**32 - 1


class ClientReports:
    """Sums drops and sends them upstream periodically.

    Parameters:
        outbox: where report envelopes are queued (like any other envelope).
        interval: seconds between reports; 0 disables them.
    """

    def __init__(self, outbox: Outbox, interval: float) -> None:
        self.outbox = outbox
        self.interval = interval
        self._targets: dict[str, Target] = {}
        #: Per target: (field, reason, category) -> quantity.
        self._counts: dict[str, dict[tuple[str, str, str], int]] = defaultdict(
            lambda: defaultdict(int)
        )
        self._task: asyncio.Task[None] | None = None

    def record(
        self, target: Target, outcome: Outcome, quantities: list[tuple[str, int]] | None = None
    ) -> None:
        """Count one drop: in `quantities` (every category the item counted in, as Sentry
        reports a rate-limited drop) when given, else in the outcome's category (and an
        attachment in `attachment_item` too)."""
        if not self.interval or target.is_file or outcome.reason in _NOT_REPORTED:
            return
        field = FIELDS.get(outcome.kind)
        if field is not None:
            reason = _clip(outcome.reason)
        else:
            field = "discarded_events"
            reason = DISCARD_REASONS.get(outcome.kind, "")
            if not reason:
                return
        if quantities is None:
            quantities = [(str(outcome.category), outcome.quantity)]
            if outcome.category == _ATTACHMENT:
                quantities.append((_ATTACHMENT_ITEM, 1))
        quantities = [(c, q) for c, q in quantities if c not in _UNREPORTED_CATEGORIES]
        if not quantities:
            return
        self._targets[target.key] = target
        counts = self._counts[target.key]
        for category, quantity in quantities:
            key = (field, reason, category)
            # Quantities come from client headers (`item_count`): a line stays in 32 bits.
            counts[key] = min(counts[key] + quantity, MAX_QUANTITY)

    def start(self) -> None:
        if self.interval:
            self._task = asyncio.create_task(self._run(), name="relay-client-reports")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.flush()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.flush()

    async def flush(self) -> None:
        """Queue one report per target; a report that cannot be built or queued is logged
        and dropped (the drops it counted keep their outcomes), never raised."""
        counts, self._counts = self._counts, defaultdict(lambda: defaultdict(int))
        for key, by_reason in counts.items():
            try:
                await self._send(self._targets[key], by_reason)
            except Exception:
                log.exception("client report dropped: it could not be sent")

    async def _send(self, target: Target, by_reason: dict[tuple[str, str, str], int]) -> None:
        report: dict[str, Any] = {"timestamp": int(time.time()), "discarded_events": []}
        for (field, reason, category), quantity in sorted(by_reason.items()):
            line = {"reason": reason, "category": category, "quantity": quantity}
            report.setdefault(field, []).append(line)
        envelope = make_envelope({}, [({"type": "client_report"}, orjson.dumps(report))])
        if target.dsn is not None:
            envelope.set_header("dsn", str(target.dsn))
        entry = OutboxEntry(
            target=target,
            body=envelope.serialize(),
            project_id=int(target.dsn.project_id) if target.dsn else 0,
            quantities=[],
        )
        try:
            await self.outbox.put(entry)
        except OutboxFull:
            log.warning("client report dropped: the outbox is full")


def _clip(reason: str) -> str:
    """`reason` cut to `MAX_REASON` UTF-8 bytes, never inside a character. Bytes a header
    did not decode (lone surrogates) become `?`: JSON cannot carry them, and one would
    fail the whole report."""
    if reason.isascii() and len(reason) <= MAX_REASON:
        return reason
    raw = reason.encode("utf-8", "replace")
    return raw[:MAX_REASON].decode("utf-8", "ignore")
