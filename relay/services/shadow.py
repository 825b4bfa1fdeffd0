"""Shadow mode: what the relay drops is mirrored, scrubbed and tagged, to a shadow project.

For each request, the dropped items whose reason is listed in `shadow.reasons`
(and every dry-run hit, which is not dropped at all) are:

1. sampled (`sample_rate`) and capped (`max_per_minute`, a token bucket),
2. tagged `relay.dropped_reason` / `relay.rule` (and `relay.dry_run`); a dry-run hit's
   copy, whose original is forwarded too, gets an event id of its own (`copy_event_id`)
   and names the original in `relay.original_event_id`,
3. scrubbed with the project's own policy — the shadow copy leaves the process
   only through the same scrubber as everything else,
4. queued on the shadow's own bounded outbox, drained by its own forwarder.

`put` never waits: a full shadow queue drops the copy (counted; before it is built),
so a slow or failing shadow upstream never delays or fails the primary path. Nor does a copy
that cannot be built (an event shape nothing expected): `mirror` logs the error,
counts it in `failed_copies` and returns; a copy is queued only once scrubbed, so a
failure before that queues nothing. Each mirrored item counts once as outcome `shadowed`.
Copies not queued are counted by why (`skipped`): `capped` (`max_per_minute`), `queue_full`,
`failed`.
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

import orjson

from relay.config.noise import ShadowConfig
from relay.logs import log_unexpected
from relay.outcomes import Outcome, OutcomeKind, OutcomeSink
from relay.policy.compile import CompiledPolicy
from relay.processing.filters import tag_for_shadow
from relay.processing.pipeline import (
    AUTO_IP_BYTES,
    IP_TYPES,
    REPLAY_TYPE,
    SESSION_TYPES,
    Dropped,
    resolve_client_ip,
    resolve_replay_ip,
    resolve_session_ip,
)
from relay.protocol.envelope import Envelope, Item
from relay.services.ingest import route_to
from relay.services.offload import Offload
from relay.services.outbox import MemoryOutbox, OutboxEntry, OutboxFull

log = logging.getLogger("relay.shadow")


def shadow_reason(outcome: Outcome) -> str:
    """The `shadow.reasons` word for a drop."""
    if outcome.kind is OutcomeKind.RATE_LIMITED:
        if outcome.reason == "spike_protection":
            return "spike_protection"
        return "rate_limited"
    return outcome.kind.value


def wanted(cfg: ShadowConfig, drop: Dropped) -> bool:
    if drop.private:
        return False  # the PII policy removed it: it leaves the process nowhere
    if drop.dry_run:
        return True
    reason = shadow_reason(drop.outcome)
    if reason in cfg.reasons:
        return True
    # `quota` names drops decided by a configured quota (not spikes or upstream limits).
    return (
        "quota" in cfg.reasons
        and drop.outcome.kind is OutcomeKind.RATE_LIMITED
        and drop.outcome.rule is not None
        and reason == "rate_limited"
    )


class _Bucket:
    def __init__(self, per_minute: int) -> None:
        self.rate = per_minute / 60.0
        self.capacity = float(per_minute)  # 0: no copy at all
        self.tokens = self.capacity
        self.stamp = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


class Shadow:
    """Builds and queues shadow copies.

    Parameters:
        outbox: the shadow's own bounded queue (drained by its own forwarder).
        outcomes: where `shadowed` is counted.
        skipped: called with why a request's copy was not queued (`capped`, `queue_full`,
            `failed`), for the metrics.
        offload: where large copies are built (off the event loop).
    """

    def __init__(
        self,
        outbox: MemoryOutbox,
        outcomes: OutcomeSink,
        skipped: Callable[[str], None] = lambda why: None,
        offload: Offload | None = None,
    ) -> None:
        self.outbox = outbox
        self.offload = offload
        self.outcomes = outcomes
        self._skipped = skipped
        self.dropped_copies = 0
        #: Requests whose copy failed with an unexpected error (logged, swallowed).
        self.failed_copies = 0
        self._buckets: dict[tuple[str, int], _Bucket] = {}

    def _bucket(self, cfg: ShadowConfig) -> _Bucket:
        key = (cfg.dsn, cfg.max_per_minute)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(cfg.max_per_minute)
        return bucket

    def mirror(
        self,
        envelope_headers: dict[str, Any],
        drops: list[Dropped],
        policy: CompiledPolicy,
        client_ip: str | None = None,
    ) -> None:
        """Queue a scrubbed, tagged copy of `drops` (call before the primary path mutates payloads).

        Never raises (but for cancellation): the primary request must not depend on its shadow.
        """
        try:
            self._mirror(envelope_headers, drops, policy, client_ip)
        except Exception:
            self.failed_copies += 1
            self._skipped("failed")
            log_unexpected(log, "shadow copy failed; the primary request goes on without it")

    def _mirror(
        self,
        envelope_headers: dict[str, Any],
        drops: list[Dropped],
        policy: CompiledPolicy,
        client_ip: str | None,
    ) -> None:
        cfg = policy.shadow
        target = policy.shadow_target
        if cfg is None or target is None or policy.scrubber is None:
            return  # never mirror what could not be scrubbed
        chosen = _one_per_item([d for d in drops if wanted(cfg, d)])
        if not chosen:
            return
        if cfg.sample_rate < 1.0 and random.random() >= cfg.sample_rate:
            return
        size = sum(len(drop.work.item.payload) for drop in chosen)
        if not self.outbox.has_room(size):
            # Checked before the copy is built: while the shadow upstream is slow or down
            # its queue stays full, and scrubbing copies only to throw them away would
            # cost the ingest path for nothing.
            self.dropped_copies += 1
            self._skipped("queue_full")
            return
        bucket = self._bucket(cfg)
        if not bucket.take():
            self.dropped_copies += 1
            self._skipped("capped")
            return
        # What the copy is built from, taken now: the primary path goes on with the kept
        # items (a dry-run hit's event is scrubbed in place there, so its copy is read
        # again from the payload as it came).
        parts = [
            _Part(
                drop,
                {k: v for k, v in drop.work.item.headers.items() if k != "length"},
                drop.work.item.payload,
                drop.work.event is not None,
                None if drop.dry_run else drop.work.event,
                drop.work.type,
                (drop.work.category, drop.work.quantity()),
            )
            for drop in chosen
        ]
        header = {k: v for k, v in envelope_headers.items() if k in ("event_id", "sent_at", "sdk")}
        build = partial(_build, policy, header, parts, client_ip)
        if self.offload is not None and self.offload.wants(size):
            self.offload.submit(build, partial(self._queue, chosen), self._failed)
        else:
            self._queue(chosen, build())

    def _failed(self, reason: str) -> None:
        """A copy built on the offload thread failed there (or was given up at shutdown)."""
        self.failed_copies += 1
        self._skipped("failed")

    def _queue(self, chosen: list[Dropped], entry: OutboxEntry) -> None:
        if not self.outbox.has_room(len(entry.body)):
            self.dropped_copies += 1
            self._skipped("queue_full")
            return
        try:
            self.outbox.put_nowait(entry)
        except OutboxFull:
            self.dropped_copies += 1
            self._skipped("queue_full")
            return
        for drop in chosen:
            o = drop.outcome
            self.outcomes.emit(
                Outcome(
                    OutcomeKind.SHADOWED, o.reason, o.category, o.quantity, o.project_id, o.rule
                )
            )


class _Part(NamedTuple):
    """One item of a shadow copy, as it was when the copy was asked for."""

    drop: Dropped
    headers: dict[str, Any]
    payload: bytes
    parsed: bool
    #: The parsed event of a dropped item (None for a dry-run hit: read from `payload`).
    event: dict[str, Any] | None
    type: str
    quantity: tuple[str, int]


def _build(
    policy: CompiledPolicy, header: dict[str, Any], parts: list[_Part], client_ip: str | None
) -> OutboxEntry:
    """The tagged, scrubbed copy of `parts` (pure: large copies are built on the offload
    thread, `relay.services.offload`). `{{auto}}` addresses are resolved as on the primary
    path (`pipeline.finish`): the shadow's upstream would fill in the relay's own."""
    target = policy.shadow_target
    assert target is not None and policy.scrubber is not None
    if policy.scrubber.strips_client_ip:
        client_ip = None
    # A dry-run hit's original is forwarded too: its copy gets an id of its own (see
    # `copy_event_id`), in the envelope header and in every event of the copy alike.
    renamed = any(part.drop.dry_run for part in parts)
    header_id = header.get("event_id")
    if renamed and header_id is not None:
        header = {**header, "event_id": copy_event_id(header_id)}
    items: list[Item] = []
    events: set[int] = set()
    for part in parts:
        event = part.event
        if event is None and part.parsed:
            loaded = orjson.loads(part.payload)  # a dry-run hit: the kept item stays untouched
            event = loaded if isinstance(loaded, dict) else None
        if event is not None:
            if part.type in IP_TYPES:
                resolve_client_ip(event, client_ip)
            outcome = part.drop.outcome
            tag_for_shadow(
                event,
                shadow_reason(outcome),
                outcome.rule or outcome.reason,
                dry_run=part.drop.dry_run,
            )
            if renamed:
                original = event.get("event_id", header_id)
                if "event_id" in event:
                    event["event_id"] = copy_event_id(original)
                if isinstance(original, str):
                    _add_tag(event, TAG_ORIGINAL_EVENT_ID, original[:_MAX_ID])
            policy.scrubber.scrub_event(event, part.type, report=False)
            events.add(len(items))
            items.append(Item(part.headers, orjson.dumps(event)))
        else:
            item = Item(part.headers, part.payload)
            if part.type in SESSION_TYPES and AUTO_IP_BYTES in part.payload:
                resolve_session_ip(item, client_ip)
            elif part.type == REPLAY_TYPE:
                resolve_replay_ip(item, client_ip)
            items.append(item)
    copy = Envelope(header, items)
    policy.scrubber.scrub_envelope(copy, skip=frozenset(events), report=False)
    route_to(copy, target, "")
    return OutboxEntry(
        target=target,
        body=copy.serialize(),
        project_id=int(target.dsn.project_id) if target.dsn else 0,
        quantities=[part.quantity for part in parts],
        event_id=copy.event_id,
    )


#: The tag that names the original event of a dry-run copy (which has an id of its own).
TAG_ORIGINAL_EVENT_ID = "relay.original_event_id"
_MAX_ID = 64
_COPY_IDS = uuid.UUID("5f1d2b8e-6c0a-4f3e-9b7d-2a4c8e1f0d63")


def copy_event_id(event_id: object) -> object:
    """The event id of a dry-run hit's copy: the original is forwarded too, and an
    upstream that keys events by id alone (GlitchTip's events table) keeps only one of
    two events with the same id, whatever their projects. Derived from the original's
    (case and dashes aside), so that a resent envelope's copy has the same id again;
    anything that is not a string is left as it came."""
    if not isinstance(event_id, str):
        return event_id
    return uuid.uuid5(_COPY_IDS, event_id.strip().lower().replace("-", "")).hex


def _add_tag(event: dict[str, Any], key: str, value: str) -> None:
    """Add a tag to `tags` as `tag_for_shadow` left it (a mapping or a list of pairs)."""
    tags = event.get("tags")
    if isinstance(tags, dict):
        tags[key] = value
    elif isinstance(tags, list):
        tags.append([key, value])


def _one_per_item(drops: list[Dropped]) -> list[Dropped]:
    """One copy per item: a dry-run hit (kept, would have been dropped) gives way to a
    real drop of the same item later in the pipeline (e.g. rate limited after all)."""
    by_item: dict[int, Dropped] = {}
    for drop in drops:
        have = by_item.get(id(drop.work))
        if have is None or (have.dry_run and not drop.dry_run):
            by_item[id(drop.work)] = drop
    return list(by_item.values())
