"""The processing order, in one place, as pure functions over an envelope.

    prepare()   Sentry's envelope limits item by item (`Limits`: one event-like item,
                sizes and counts per item type, from lengths and headers alone), then
                parse event-like items once, reject invalid ones, run inbound filters
                (on log and span containers record by record, on OTel logs, standalone
                spans and security reports as Sentry converts them) and sampling; drop
                the sessions Sentry would discard (`sessions`)
                                                   -> outcomes: invalid, filtered, sampled
    (the caller consults quotas and cached upstream limits: IO, not here)
    drop_categories()                              -> outcome: rate_limited
    finish()    `{{auto}}` IP addresses resolved to the client's (or removed when the
                policy strips IPs), the PII scrubber over every remaining item and the
                envelope header, then fingerprint rules (built from scrubbed values);
                events re-serialized once

An event that is dropped takes its envelope's attachments, user reports and
profiles with it, as Sentry does. The envelope's event is its first event item (an
event, transaction, security or NEL report, user feedback, an Unreal crash report) or,
without one, its first native crash report (a minidump attachment, ...), which then
counts one `error`. Every dropped item yields exactly one `Outcome`; one dropped for a
rate limit also lists every category it counted in (`Dropped.report`) for the client
reports, as Sentry's outcomes do.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Protocol

import msgspec
import orjson

from relay.outcomes import Outcome, OutcomeKind, Reason
from relay.processing import sessions
from relay.processing.context import AUTO_IP, INFER_IP_PLATFORMS, RequestContext
from relay.processing.filters import otel_log_record, security_event
from relay.processing.scrub.content import Unreadable
from relay.processing.scrub.replay import video_parts
from relay.protocol.categories import (
    EVENT_ITEM_TYPES,
    EVENT_TYPES,
    DataCategory,
    exempt_categories,
    is_crash_report,
    item_quantities,
    primary_category,
)
from relay.protocol.envelope import Envelope, Item, is_event_id, json_exceeds_depth

#: Items that belong to the envelope's event (or transaction) and share its fate.
DEPENDENT_TYPES = frozenset({"attachment", "user_report", "profile"})


class Decision(Protocol):
    """A filter hit or sampling decision: why an item would be dropped."""

    @property
    def reason(self) -> str: ...

    @property
    def rule(self) -> str | None: ...

    @property
    def dry_run(self) -> bool: ...


class FilterStage(Protocol):
    def check(
        self, event: dict[str, Any], item_type: str, ctx: RequestContext
    ) -> Decision | None: ...

    def reads_records(self, item_type: str) -> bool: ...

    def check_records(
        self, container: dict[str, Any], item_type: str, ctx: RequestContext
    ) -> Sequence[Decision | None]: ...

    def check_item(
        self, payload: dict[str, Any], item_type: str, ctx: RequestContext
    ) -> Decision | None: ...


class SampleStage(Protocol):
    """A sampling decision: `keep` false means the item would be dropped."""

    @property
    def keep(self) -> bool: ...

    @property
    def rule(self) -> str: ...

    @property
    def dry_run(self) -> bool: ...


class SamplingStage(Protocol):
    def decide(
        self, event: dict[str, Any], item_type: str, envelope_headers: dict[str, Any]
    ) -> SampleStage | None: ...


@dataclass(frozen=True, slots=True)
class _Sampled:
    rule: str | None
    dry_run: bool
    reason: str = "sampling_rule"


class FingerprintStage(Protocol):
    def apply(self, event: dict[str, Any]) -> object: ...


class DroppedByScrub(Protocol):
    @property
    def index(self) -> int: ...

    @property
    def reason(self) -> str: ...


class ScrubOutcome(Protocol):
    @property
    def dropped(self) -> Sequence[DroppedByScrub]: ...


class ScrubStage(Protocol):
    @property
    def noop(self) -> bool: ...

    @property
    def strips_client_ip(self) -> bool: ...

    def scrub_text(self, text: str) -> str: ...

    def scrub_event(
        self, event: dict[str, Any], item_type: str = "event", *, report: bool = True
    ) -> list[Any]: ...

    def scrub_envelope(
        self, envelope: Envelope, *, skip: frozenset[int] = frozenset(), report: bool = True
    ) -> ScrubOutcome: ...


_KIB = 1024
_MIB = 1024 * _KIB


@dataclass(frozen=True)
class Limits:
    """What one envelope may carry, with Sentry's defaults (`limits` in the config). An
    item past a limit is dropped on its own (`invalid` / `too_large`) where Sentry refuses
    the whole envelope; counts and totals keep the first items that fit. A log, span or
    trace metric container is held to its per-record limit on average (its length over
    its `item_count`) and to `max_container_bytes` whole; standalone spans (a `span` item
    that is no container) count against `max_standalone_spans` and, together,
    `max_container_bytes`."""

    max_event_bytes: int = _MIB
    max_attachment_bytes: int = 100 * _MIB
    #: Attachments per envelope; user reports and Unreal crash reports count with them.
    max_attachment_items: int = 30
    max_check_in_bytes: int = 100 * _KIB
    #: A profile or profile chunk.
    max_profile_bytes: int = 50 * _MIB
    #: A replay recording or video, as sent (compressed).
    max_replay_bytes: int = 10 * _MIB
    #: `session` and `sessions` items per envelope, and their bytes together.
    max_session_items: int = 100
    max_sessions_bytes: int = 10 * _MIB
    max_client_report_items: int = 100
    max_client_reports_bytes: int = 100 * _KIB
    max_log_bytes: int = 2 * _MIB
    max_span_bytes: int = 10 * _MIB
    max_trace_metric_bytes: int = _MIB
    max_container_bytes: int = 12 * _MIB
    max_standalone_spans: int = 25

    @cached_property
    def item_bytes(self) -> dict[str, int]:
        """The most one item of a type may hold (a container: per record), for the types
        `prepare` does not parse as events (those are held to `max_event_bytes` there)."""
        return {
            **dict.fromkeys(("raw_security", "replay_event", "form_data"), self.max_event_bytes),
            "unreal_report": self.max_attachment_bytes,
            "check_in": self.max_check_in_bytes,
            **dict.fromkeys(
                ("profile", "profile_chunk", "profile_chunk_ui"), self.max_profile_bytes
            ),
            **dict.fromkeys(("replay_recording", "replay_video"), self.max_replay_bytes),
            **dict.fromkeys(("session", "sessions"), self.max_sessions_bytes),
            "client_report": self.max_client_reports_bytes,
            "log": self.max_log_bytes,
            "span": self.max_span_bytes,
            "trace_metric": self.max_trace_metric_bytes,
        }

    def room(self) -> _Room:
        """A fresh count of what one envelope may still carry."""
        return _Room(
            {
                "attachment": self.max_attachment_items,
                "session": self.max_session_items,
                "client_report": self.max_client_report_items,
                "span": self.max_standalone_spans,
            },
            {
                "attachment": -1,
                "session": self.max_sessions_bytes,
                "client_report": self.max_client_reports_bytes,
                "span": self.max_container_bytes,
            },
        )


#: Item types Sentry accepts once per envelope, by the slot they share: one event-like
#: item (a second one, or an event beside a transaction, makes Sentry refuse the envelope:
#: the size limits count them as one, and events are extracted once), one Unreal crash
#: report, one check-in and one transaction profile (the later ones dropped, as Sentry
#: drops them), and one replay recording and one replay video (Sentry refuses an envelope
#: with two: the replay's event would go with them). NEL reports, user reports and native
#: crash attachments may repeat.
SINGLE_SLOTS: dict[str, str] = {
    **dict.fromkeys(
        (
            "event",
            "transaction",
            "security",
            "raw_security",
            "feedback",
            "form_data",
            "replay_event",
        ),
        "event",
    ),
    "unreal_report": "unreal_report",
    "check_in": "check_in",
    "profile": "profile",
    "replay_recording": "replay_recording",
    "replay_video": "replay_video",
}
#: The reason Sentry gives an extra transaction profile (the others: `duplicate_item`).
TOO_MANY_PROFILES = "profiling_too_many_profiles"
#: Item types counted per envelope (`Limits.room`), by the allowance they count against.
_COUNTED: dict[str, str] = {
    "attachment": "attachment",
    "user_report": "attachment",
    "unreal_report": "attachment",
    "session": "session",
    "sessions": "session",
    "client_report": "client_report",
    "span": "span",
}
#: Content types of item containers (`{"items": [...]}` with an `item_count`).
CONTAINER_CONTENT_TYPES = frozenset(
    {
        "application/vnd.sentry.items.log+json",
        "application/vnd.sentry.items.span.v2+json",
        "application/vnd.sentry.items.trace-metric+json",
    }
)
_CONTAINER_TYPES = frozenset({"log", "span", "trace_metric"})


def is_container(headers: dict[str, Any]) -> bool:
    content_type = headers.get("content_type")
    return isinstance(content_type, str) and content_type.lower() in CONTAINER_CONTENT_TYPES


@dataclass(slots=True)
class _Room:
    """Items and bytes an envelope may still carry, per allowance (bytes -1: no total)."""

    items: dict[str, int]
    bytes: dict[str, int]
    #: The single slots (`SINGLE_SLOTS`) taken.
    taken: set[str] = field(default_factory=set)

    def take_slot(self, item_type: str) -> bool:
        """Whether the envelope still had room for this item type's single slot (taken now)."""
        slot = SINGLE_SLOTS.get(item_type)
        if slot is None:
            return True
        if slot in self.taken:
            return False
        self.taken.add(slot)
        return True

    def admit(self, item: Item) -> bool:
        """Count a kept item; False (nothing counted) when it no longer fits."""
        allowance = _COUNTED.get(item.type)
        if allowance is None or (allowance == "span" and is_container(item.headers)):
            return True
        size = len(item.payload)
        left = self.bytes[allowance]
        if self.items[allowance] < 1 or 0 <= left < size:
            return False
        self.items[allowance] -= 1
        if left >= 0:
            self.bytes[allowance] = left - size
        return True


def too_large(item: Item, limits: Limits) -> bool:
    """Whether `item` alone is over its type's limit (`Limits.item_bytes`)."""
    cap = limits.item_bytes.get(item.type)
    if cap is None:
        return False
    size = len(item.payload)
    if item.type in _CONTAINER_TYPES and is_container(item.headers):
        if size > limits.max_container_bytes:
            return True
        count = item.headers.get("item_count")
        if isinstance(count, int) and count > 1:
            size //= count
    return size > cap


@dataclass(slots=True)
class WorkItem:
    """One envelope item on its way through the pipeline."""

    item: Item
    category: str
    quantities: list[tuple[str, int]]
    #: The parsed payload of event-like items (event, transaction, ...).
    event: dict[str, Any] | None = None
    #: The payload changed (fingerprint, scrub): re-serialize `event` at the end.
    dirty: bool = False
    #: Categories it counts in whose rejection does not drop it (`exempt_categories`).
    exempt: frozenset[str] = frozenset()
    #: It is the envelope's event: rate limited, it takes the dependents with it.
    makes_event: bool = False

    @property
    def type(self) -> str:
        return self.item.type

    def quantity(self) -> int:
        for cat, qty in self.quantities:
            if cat == self.category:
                return qty
        return 1


@dataclass(slots=True)
class Dropped:
    """An item the pipeline dropped (or would drop, in dry-run), and why."""

    work: WorkItem
    outcome: Outcome
    dry_run: bool = False
    #: Removed by the PII policy (`attachments: drop`): never mirrored anywhere.
    private: bool = False
    #: For a rate-limited drop, and filtered log records (`log_item` and `log_byte`): every
    #: (category, quantity) it is reported in upstream (client reports), as Sentry reports
    #: it; None: the outcome's alone.
    report: list[tuple[str, int]] | None = None


@dataclass
class Prepared:
    envelope: Envelope
    ctx: RequestContext
    kept: list[WorkItem] = field(default_factory=list)
    dropped: list[Dropped] = field(default_factory=list)
    #: Items the scrubbing policy removed in `finish` (a subset of `dropped`).
    scrub_dropped: list[Dropped] = field(default_factory=list)

    def quantities(self) -> dict[str, int]:
        """Summed (category -> quantity) of the kept items, for quota checks."""
        out: dict[str, int] = {}
        for work in self.kept:
            for cat, qty in work.quantities:
                out[cat] = out.get(cat, 0) + qty
        return out

    def categories(self) -> set[str]:
        return {cat for w in self.kept for cat, _ in w.quantities}


def _outcome(
    work: WorkItem, kind: OutcomeKind, reason: str, ctx: RequestContext, rule: str | None = None
) -> Outcome:
    return Outcome(kind, reason, work.category, work.quantity(), ctx.project_id, rule)


def prepare(
    envelope: Envelope,
    ctx: RequestContext,
    *,
    filters: FilterStage | None = None,
    sampler: SamplingStage | None = None,
    limits: Limits = Limits(),
    drop_attachments: bool = False,
) -> Prepared:
    """Parse, validate, filter and sample. Pure; mutates nothing but the result (and the
    payload of a session aggregate that sheds buckets, or of a log or span container that
    sheds records: those records then become items of their own in `envelope.items`, each
    dropped, so that every drop names an item of the envelope).

    `drop_attachments`: the scrubbing policy drops attachments (`attachments: drop`):
    they go here, before quotas, so that they are never counted against one (outcome
    `filtered` / `attachments_policy`, as when the scrubber drops them)."""
    result = Prepared(envelope, ctx)
    event_drop: Dropped | None = None
    replay_drop: Dropped | None = None
    #: Containers that shed records: id(item) -> the items it is now (kept part first).
    splits: dict[int, list[Item]] = {}
    room = limits.room()
    for item in envelope.items:
        itype = item.type
        work = WorkItem(
            item,
            str(primary_category(itype, item.headers)),
            [],
            exempt=exempt_categories(itype, item.headers),
        )
        # Sentry's limits by item type, before any payload is read: the first item of a
        # single slot has it whatever becomes of it, a later one is a duplicate.
        if not room.take_slot(itype):
            reason = TOO_MANY_PROFILES if itype == "profile" else Reason.DUPLICATE_ITEM
            _drop_unread(result, work, reason)
            continue
        if itype in EVENT_TYPES:
            if len(item.payload) > limits.max_event_bytes:
                _drop_unread(result, work, Reason.TOO_LARGE)
                continue
            try:
                event = orjson.loads(item.payload)
            except orjson.JSONDecodeError:
                event = None
            if isinstance(event, dict) and json_exceeds_depth(item.payload):
                event = None  # deeper than Sentry accepts: invalid, never a recursion error
            work.quantities = [
                (str(c), q)
                for c, q in item_quantities(
                    itype,
                    item.headers,
                    len(item.payload),
                    event if isinstance(event, dict) else None,
                )
            ]
            if not isinstance(event, dict) or (
                itype == "user_report" and not _is_user_report(event)
            ):
                result.dropped.append(
                    Dropped(work, _outcome(work, OutcomeKind.INVALID, Reason.INVALID_JSON, ctx))
                )
                continue
            work.event = event
            decision = _decide(work, event, ctx, envelope.headers, filters, sampler)
            if decision is not None:
                kind, hit = decision
                drop = Dropped(
                    work, _outcome(work, kind, hit.reason, ctx, hit.rule), dry_run=hit.dry_run
                )
                result.dropped.append(drop)
                if not hit.dry_run:
                    event_drop = event_drop or drop
                    continue
            if not room.admit(item):
                result.dropped.append(
                    Dropped(work, _outcome(work, OutcomeKind.INVALID, Reason.TOO_LARGE, ctx))
                )
                continue
            result.kept.append(work)
            continue
        if too_large(item, limits):
            _drop_unread(result, work, Reason.TOO_LARGE)
            continue
        doc = _load_object(item.payload) if itype in _FILTERED_TOO else None
        work.quantities = [
            (str(c), q) for c, q in item_quantities(itype, item.headers, len(item.payload), doc)
        ]
        if doc is not None and filters:
            # Sessions and replays: Sentry's inbound filters drop them too (release, client
            # addresses, user agent), or release health keeps the sessions of a release
            # whose errors are filtered, and filtered users' replays are billed. A security
            # report is filtered as the event Sentry makes of it.
            if itype == SECURITY_TYPE:
                found = _check_security(filters, doc, item, ctx)
            else:
                found = filters.check(_filter_view(itype, doc), itype, ctx)
            if found is not None:
                outcome = _outcome(work, OutcomeKind.FILTERED, found.reason, ctx, found.rule)
                drop = Dropped(work, outcome, dry_run=found.dry_run)
                result.dropped.append(drop)
                if not found.dry_run:
                    if itype == REPLAY_TYPE:
                        replay_drop = replay_drop or drop
                    elif itype == SECURITY_TYPE:
                        event_drop = event_drop or drop
                    continue
        if itype in SESSION_TYPES and not _check_session(result, work, doc):
            continue
        if itype in RECORD_TYPES and filters and filters.reads_records(itype):
            if itype == "log" or (itype == "span" and is_container(item.headers)):
                if not _filter_records(result, work, filters, splits):
                    continue
            elif not _filter_item(result, work, filters):
                continue
        if itype == "attachment":
            if drop_attachments:
                outcome = _outcome(work, OutcomeKind.FILTERED, Reason.ATTACHMENTS_POLICY, ctx)
                result.dropped.append(Dropped(work, outcome, private=True))
                continue
            if len(item.payload) > limits.max_attachment_bytes:
                result.dropped.append(
                    Dropped(work, _outcome(work, OutcomeKind.INVALID, Reason.TOO_LARGE, ctx))
                )
                continue
        if not room.admit(item):
            # Past a count or total: the items before it fit, so they are the ones kept.
            result.dropped.append(
                Dropped(work, _outcome(work, OutcomeKind.INVALID, Reason.TOO_LARGE, ctx))
            )
            continue
        result.kept.append(work)
    if splits:
        envelope.items = [part for item in envelope.items for part in splits.get(id(item), [item])]
    if event_drop is not None:
        _drop_dependents(result, event_drop)
    if replay_drop is not None:
        _drop_dependents(result, replay_drop, REPLAY_PARTS)
    _find_event(result)
    return result


def _drop_unread(result: Prepared, work: WorkItem, reason: str) -> None:
    """Drop an item as `invalid` before its payload is read (its quantities from its
    headers and length)."""
    item = work.item
    work.quantities = [
        (str(c), q) for c, q in item_quantities(item.type, item.headers, len(item.payload))
    ]
    result.dropped.append(Dropped(work, _outcome(work, OutcomeKind.INVALID, reason, result.ctx)))


#: A security report as the browser sent it (the security endpoint's item).
SECURITY_TYPE = "raw_security"
#: Item types filtered on their own (not events): their payloads are read for it.
_FILTERED_TOO = frozenset({"session", "sessions", "replay_event", SECURITY_TYPE})
#: The items of a replay that go with its `replay_event` when that is filtered.
REPLAY_PARTS = frozenset({"replay_recording", "replay_video"})


def _load_object(payload: bytes) -> dict[str, Any] | None:
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    return doc if isinstance(doc, dict) and not json_exceeds_depth(payload) else None


def _check_security(
    filters: FilterStage, doc: dict[str, Any], item: Item, ctx: RequestContext
) -> Decision | None:
    """The filters' decision on a security report: checked as the `security` event Sentry
    makes of it (its item headers give the release and environment); a report Sentry would
    not convert is not checked."""
    event = security_event(doc, item.headers, ctx)
    return None if event is None else filters.check(event, "security", ctx)


def _filter_view(item_type: str, doc: dict[str, Any]) -> dict[str, Any]:
    """What the filters read of a session (its `attrs` as an event's release, environment,
    user address and user agent) or a replay (an event already)."""
    if item_type == REPLAY_TYPE:
        return doc
    attrs = doc.get("attrs")
    if not isinstance(attrs, dict):
        return {}
    view: dict[str, Any] = {
        "release": attrs.get("release"),
        "environment": attrs.get("environment"),
    }
    if attrs.get("ip_address") is not None:
        view["user"] = {"ip_address": attrs["ip_address"]}
    if isinstance(attrs.get("user_agent"), str):
        view["request"] = {"headers": [["User-Agent", attrs["user_agent"]]]}
    return view


def _check_session(result: Prepared, work: WorkItem, doc: dict[str, Any] | None) -> bool:
    """Drop a session Sentry would discard (`relay.processing.sessions`) before it counts
    against a quota; an aggregate sheds only its buckets out of the time window (its payload
    rewritten without them, their drop counted apart). Returns whether the item is kept."""
    ctx = result.ctx
    if doc is None:
        verdict = sessions.Verdict(Reason.INVALID_JSON)
    else:
        sent_at = result.envelope.headers.get("sent_at")
        verdict = sessions.check(work.type, doc, ctx.received_at, sent_at)
    if verdict.reason is not None:
        outcome = _outcome(work, OutcomeKind.INVALID, verdict.reason, ctx)
        result.dropped.append(Dropped(work, outcome))
        return False
    if verdict.stale and doc is not None:
        # The same item, for `relay scrub`'s report; the outcome counts the buckets dropped.
        stale = WorkItem(work.item, work.category, [(work.category, len(verdict.stale))])
        outcome = _outcome(stale, OutcomeKind.INVALID, sessions.TIMESTAMP, ctx)
        result.dropped.append(Dropped(stale, outcome))
        kept = sessions.without_buckets(doc, verdict.stale)
        item = work.item
        item.set_payload(orjson.dumps(kept))
        work.quantities = [
            (str(c), q)
            for c, q in item_quantities(work.type, item.headers, len(item.payload), kept)
        ]
    return True


#: Log and span items, filtered one record at a time: containers of records (`log`, and
#: `span` with a container content type) and single records (`otel_log`, a standalone `span`).
RECORD_TYPES = frozenset({"log", "span", "otel_log"})


def _filter_item(result: Prepared, work: WorkItem, filters: FilterStage) -> bool:
    """Drop an OTel log or a standalone span that an inbound filter drops, as Sentry filters
    each once converted to a log or span; returns whether the item is kept. Its outcome
    `filtered` counts it in `log_item` (client reports also list its `log_byte`, as Sentry
    counts the converted log's size) or `span`; a dry-run hit keeps it, reported the same
    way. A payload that is no JSON object is forwarded as it came (to the scrubber)."""
    doc = _load_object(work.item.payload)
    if doc is None:
        return True
    hit = filters.check_item(doc, work.type, result.ctx)
    if hit is None:
        return True
    report = None
    if work.type == "otel_log":
        size = log_byte_size(otel_log_record(doc))
        report = [(work.category, work.quantity()), (DataCategory.LOG_BYTE.value, size)]
    outcome = _outcome(work, OutcomeKind.FILTERED, hit.reason, result.ctx, hit.rule)
    result.dropped.append(Dropped(work, outcome, dry_run=hit.dry_run, report=report))
    return hit.dry_run


def _filter_records(
    result: Prepared, work: WorkItem, filters: FilterStage, splits: dict[int, list[Item]]
) -> bool:
    """Drop the records of a log or span container that an inbound filter drops, as Sentry
    filters logs and spans one by one; returns whether the item is kept.

    The records each filter drops leave as one item of their own (the container's headers,
    their `item_count`) with one `filtered` outcome, which counts them in `log_item` and,
    for logs, reports their `log_byte` as Sentry counts it (`log_byte_size`). The item
    keeps the other records: its payload is rewritten, its `item_count` and quantities
    follow. Records a dry-run filter would drop stay, and are reported the same way. A
    payload that is no container (no list of `items`) is forwarded as it came."""
    item = work.item
    container = _load_object(item.payload)
    if container is None:
        return True
    hits = filters.check_records(container, work.type, result.ctx)
    if not any(hits):
        return True
    records: list[Any] = container["items"]
    kept: list[Any] = []
    groups: dict[tuple[str, str | None, bool], list[Any]] = {}
    for record, hit in zip(records, hits, strict=True):
        if hit is not None:
            groups.setdefault((hit.reason, hit.rule, hit.dry_run), []).append(record)
        if hit is None or hit.dry_run:
            kept.append(record)
    whole = not kept and len(groups) == 1
    parts: list[Item] = [item] if kept else []
    for (reason, rule, dry_run), dropped in groups.items():
        if whole:
            part = item  # every record, for one reason: the item itself is dropped
        else:
            part = _container_item(item, container, dropped)
            parts.append(part)
        quantities = [(work.category, len(dropped))]
        if work.type == "log":
            quantities.append((DataCategory.LOG_BYTE.value, sum(map(log_byte_size, dropped))))
        gone = WorkItem(part, work.category, quantities)
        outcome = _outcome(gone, OutcomeKind.FILTERED, reason, result.ctx, rule)
        result.dropped.append(Dropped(gone, outcome, dry_run=dry_run, report=quantities))
    if not whole:
        splits[id(item)] = parts
    if not kept:
        return False
    if len(kept) < len(records):
        item.set_payload(orjson.dumps({**container, "items": kept}))
        item.set_header("item_count", len(kept))
        work.quantities = [
            (str(c), q) for c, q in item_quantities(work.type, item.headers, len(item.payload))
        ]
    return True


def _container_item(item: Item, container: dict[str, Any], records: list[Any]) -> Item:
    """A container item like `item` (headers, container fields) holding `records` only."""
    headers = {k: v for k, v in item.headers.items() if k != "length"}
    headers["item_count"] = len(records)
    part = Item(headers, b"")
    part.set_payload(orjson.dumps({**container, "items": records}))
    return part


def log_byte_size(record: object) -> int:
    """A log record's size as Sentry counts it in `log_byte`: the UTF-8 bytes of its body,
    plus each attribute's key and value (a string its UTF-8 bytes, a number 8, a boolean
    1, an array or object what it holds, object keys included); at least 1."""
    if not isinstance(record, dict):
        return 1
    body = record.get("body")
    total = _utf8_len(body) if isinstance(body, str) else 0
    attributes = record.get("attributes")
    if isinstance(attributes, dict):
        for key, attribute in attributes.items():
            total += _utf8_len(key)
            if isinstance(attribute, dict):
                total += _value_size(attribute.get("value"))
    return max(total, 1)


def _value_size(value: object) -> int:
    if isinstance(value, bool):
        return 1
    if isinstance(value, int | float):
        return 8
    if isinstance(value, str):
        return _utf8_len(value)
    if isinstance(value, list):
        return sum(_value_size(v) for v in value)
    if isinstance(value, dict):
        return sum(_utf8_len(k) + _value_size(v) for k, v in value.items())
    return 0


def _utf8_len(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def _is_user_report(doc: dict[str, Any]) -> bool:
    """A user report as Sentry reads it: an event id, and its texts strings (or null)."""
    event_id = doc.get("event_id")
    if not isinstance(event_id, str) or not is_event_id(event_id):
        return False
    return all(isinstance(doc.get(k), str | None) for k in ("name", "email", "comments"))


def _find_event(result: Prepared) -> None:
    """Mark the kept item that is the envelope's event (the first event item, as Sentry's
    `creates_event`). Without one, the first native crash report is the event and counts
    one `error`; without that either, a profile also counts `transaction` 0: Sentry drops
    a profile left without its transaction while `transaction` is limited."""
    crash: WorkItem | None = None
    profiles: list[WorkItem] = []
    for work in result.kept:
        itype = work.type
        if itype in EVENT_ITEM_TYPES:
            work.makes_event = True
            return
        if itype == "attachment":
            if crash is None and is_crash_report(itype, work.item.headers):
                crash = work
        elif itype == "profile":
            profiles.append(work)
    if crash is not None:
        crash.makes_event = True
        crash.quantities.insert(0, (DataCategory.ERROR.value, 1))
        return
    for work in profiles:
        work.quantities.append((DataCategory.TRANSACTION.value, 0))


def _decide(
    work: WorkItem,
    event: dict[str, Any],
    ctx: RequestContext,
    headers: dict[str, Any],
    filters: FilterStage | None,
    sampler: SamplingStage | None,
) -> tuple[OutcomeKind, Decision] | None:
    if filters:  # None, or compiled without any filter: nothing to check
        hit = filters.check(event, work.type, ctx)
        if hit is not None:
            return OutcomeKind.FILTERED, hit
    if sampler is not None:
        sample = sampler.decide(event, work.type, headers)
        if sample is not None and not sample.keep:
            return OutcomeKind.SAMPLED, _Sampled(sample.rule, sample.dry_run)
    return None


def _drop_dependents(
    result: Prepared, cause: Dropped, dependents: frozenset[str] = DEPENDENT_TYPES
) -> None:
    kept = []
    for work in result.kept:
        if work.type in dependents:
            out = cause.outcome
            result.dropped.append(
                Dropped(
                    work,
                    Outcome(
                        out.kind,
                        out.reason,
                        work.category,
                        work.quantity(),
                        out.project_id,
                        out.rule,
                    ),
                    report=None if cause.report is None else _counted(work.quantities),
                )
            )
        else:
            kept.append(work)
    result.kept = kept


def categories_left(prepared: Prepared, rejected: Collection[str]) -> set[str]:
    """The categories the kept items would still count in once `drop_categories` dropped
    those of `rejected` (and, with a dropped event, its dependents); nothing is changed."""
    left = [w for w in prepared.kept if not _hit(w, rejected)]
    if len(left) < len(prepared.kept) and any(
        w.makes_event and _hit(w, rejected) for w in prepared.kept
    ):
        left = [w for w in left if w.type not in DEPENDENT_TYPES]
    return {c for w in left for c, _ in w.quantities}


def _hit(work: WorkItem, rejected: Collection[str]) -> bool:
    return any(c in rejected and c not in work.exempt for c, _ in work.quantities)


def announces(prepared: Prepared, category: str) -> bool:
    """Whether a rejection of `category` is announced to the SDK (`X-Sentry-Rate-Limits`):
    not when only crash reports count in it, which an attachment limit never drops (as
    Sentry: no limit is announced for an envelope with crash reports only)."""
    return any(
        category not in w.exempt or w.type != "attachment"
        for w in prepared.kept
        if any(c == category for c, _ in w.quantities)
    )


#: Items rate limited in each of their categories separately: reported upstream in the
#: rejected ones only (Sentry limits log items and log bytes apart).
_SEPARATELY_LIMITED = frozenset({"log", "otel_log"})


def _counted(quantities: list[tuple[str, int]]) -> list[tuple[str, int]]:
    return [(c, q) for c, q in quantities if q > 0]


def drop_categories(
    prepared: Prepared,
    rejected: dict[str, tuple[str, str | None]],
    kind: OutcomeKind = OutcomeKind.RATE_LIMITED,
) -> list[Dropped]:
    """Drop kept items whose categories were rejected: `{category: (reason, rule)}`.

    An item counts in several categories (a transaction also counts spans); it is
    dropped when any of them it is not exempt from is rejected (`WorkItem.exempt`: not a
    transaction for its spans, not a crash report for attachments). Dropping the
    envelope's event drops its dependents. Each drop is reported upstream in every
    category it counted in (`Dropped.report`), a log in the rejected ones only.
    """
    if not rejected:
        return []
    kept: list[WorkItem] = []
    dropped: list[Dropped] = []
    event_drop: Dropped | None = None
    for work in prepared.kept:
        hit = next(
            (rejected[c] for c, _ in work.quantities if c in rejected and c not in work.exempt),
            None,
        )
        if hit is None:
            kept.append(work)
            continue
        reason, rule = hit
        if work.type in _SEPARATELY_LIMITED:
            report = [(c, q) for c, q in work.quantities if c in rejected and q > 0]
        else:
            report = _counted(work.quantities)
        drop = Dropped(work, _outcome(work, kind, reason, prepared.ctx, rule), report=report)
        dropped.append(drop)
        if work.makes_event:
            event_drop = event_drop or drop
    prepared.kept = kept
    prepared.dropped.extend(dropped)
    if event_drop is not None:
        before = len(prepared.dropped)
        _drop_dependents(prepared, event_drop)
        dropped.extend(prepared.dropped[before:])
    return dropped


#: Item types whose `{{auto}}` addresses are resolved: events (`resolve_client_ip`),
#: sessions (`resolve_session_ip`, found by `AUTO_IP_BYTES` in the payload) and replays
#: (`resolve_replay_ip`, and `resolve_video_ip` for a replay video's event, which Sentry
#: normalizes as events).
IP_TYPES = frozenset({"event", "transaction"})
SESSION_TYPES = frozenset({"session", "sessions"})
REPLAY_TYPE = "replay_event"
AUTO_IP_BYTES = AUTO_IP.encode()


def resolve_client_ip(event: dict[str, Any], client_ip: str | None) -> bool:
    """Fill `{{auto}}` in `user.ip_address` and `request.env.REMOTE_ADDR` with the client's
    address, as Sentry would from the request it gets (which comes from the relay, so
    left to Sentry every user would get the relay's address); and give a browser or
    Apple event without `user.ip_address` the client's, as Sentry does. With no address
    to give (`client_ip` None: the policy strips IPs), `{{auto}}` is removed instead.
    Returns whether the event changed."""
    user = event.get("user")
    changed = _resolve_auto(user, "ip_address", client_ip)
    if not changed and client_ip and event.get("platform") in INFER_IP_PLATFORMS:
        if user is None:
            event["user"] = {"ip_address": client_ip}
            changed = True
        elif isinstance(user, dict) and user.get("ip_address") is None:
            user["ip_address"] = client_ip
            changed = True
    request = event.get("request")
    env = request.get("env") if isinstance(request, dict) else None
    return _resolve_auto(env, "REMOTE_ADDR", client_ip) or changed


def resolve_session_ip(item: Item, client_ip: str | None) -> bool:
    """`{{auto}}` in a session's (or session aggregates') `attrs.ip_address`, as in events:
    the client's address, or removed without one. Returns whether the item changed; a
    payload that does not parse is left to the scrubber."""
    try:
        doc = orjson.loads(item.payload)
    except orjson.JSONDecodeError:
        return False
    if not isinstance(doc, dict) or not _resolve_auto(doc.get("attrs"), "ip_address", client_ip):
        return False
    item.set_payload(orjson.dumps(doc))
    return True


def resolve_replay_ip(item: Item, client_ip: str | None) -> bool:
    """A replay event's addresses as an event's (`resolve_client_ip`): Sentry fills them in
    the same way, from the request it gets, which comes from the relay. Returns whether
    the item changed; a payload that does not parse is left to the scrubber."""
    try:
        doc = orjson.loads(item.payload)
    except orjson.JSONDecodeError:
        return False
    if not isinstance(doc, dict) or not resolve_client_ip(doc, client_ip):
        return False
    item.set_payload(orjson.dumps(doc))
    return True


def resolve_video_ip(item: Item, client_ip: str | None) -> bool:
    """A replay video's replay event as a `replay_event` item (`resolve_replay_ip`): Sentry
    normalizes it the same way. The map is encoded again with its three parts only (as the
    scrubber does). Returns whether the item changed; a video that does not read is left to
    the scrubber."""
    try:
        parts = video_parts(item.payload)
        doc = orjson.loads(parts["replay_event"])
    except (Unreadable, orjson.JSONDecodeError):
        return False
    if not isinstance(doc, dict) or not resolve_client_ip(doc, client_ip):
        return False
    item.set_payload(msgspec.msgpack.encode({**parts, "replay_event": orjson.dumps(doc)}))
    return True


def _resolve_auto(obj: object, key: str, client_ip: str | None) -> bool:
    """`obj[key]` from `{{auto}}` to `client_ip`, or removed without one."""
    if not isinstance(obj, dict) or obj.get(key) != AUTO_IP:
        return False
    if client_ip:
        obj[key] = client_ip
    else:
        del obj[key]
    return True


def finish(
    prepared: Prepared,
    *,
    scrubber: ScrubStage | None,
    fingerprinter: FingerprintStage | None = None,
) -> Envelope:
    """Scrub and fingerprint what is kept; return the envelope to forward."""
    envelope = prepared.envelope
    envelope.items = [w.item for w in prepared.kept]
    keep_ip = scrubber is None or not scrubber.strips_client_ip
    client_ip = prepared.ctx.client_ip
    if scrubber is not None and scrubber.noop:
        scrubber = None
    parsed: set[int] = set()
    for index, work in enumerate(prepared.kept):
        if work.event is None:
            if work.type in SESSION_TYPES and AUTO_IP_BYTES in work.item.payload:
                resolve_session_ip(work.item, client_ip if keep_ip else None)
            elif work.type == REPLAY_TYPE:
                resolve_replay_ip(work.item, client_ip if keep_ip else None)
            elif work.type == "replay_video":
                resolve_video_ip(work.item, client_ip if keep_ip else None)
            continue
        if work.type in IP_TYPES and resolve_client_ip(work.event, client_ip if keep_ip else None):
            work.dirty = True
        # Scrub first: fingerprints and titles are then built from scrubbed values only.
        if scrubber is not None:
            scrubber.scrub_event(work.event, work.type, report=False)
            work.dirty = True
        if (
            fingerprinter is not None
            and work.type == "event"
            and fingerprinter.apply(work.event) is not None
        ):
            work.dirty = True
        if work.dirty:
            work.item.set_payload(orjson.dumps(work.event))
        parsed.add(index)
    if scrubber is not None:
        report = scrubber.scrub_envelope(envelope, skip=frozenset(parsed), report=False)
        if report.dropped:
            # The policy drops some items outright (e.g. `attachments: drop`), and the
            # scrubber those it cannot read (`invalid_payload`): they get outcomes.
            gone = {d.index: d.reason for d in report.dropped}
            kept = []
            for index, work in enumerate(prepared.kept):
                if index in gone:
                    kind = (
                        OutcomeKind.INVALID
                        if gone[index] == Reason.INVALID_PAYLOAD
                        else OutcomeKind.FILTERED
                    )
                    outcome = _outcome(work, kind, gone[index], prepared.ctx)
                    prepared.dropped.append(Dropped(work, outcome))
                    prepared.scrub_dropped.append(prepared.dropped[-1])
                else:
                    kept.append(work)
            prepared.kept = kept
    return envelope
