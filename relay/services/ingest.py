"""The ingest path of one envelope, in order; the HTTP endpoints call `Ingest.submit`.

    prepare (parse, filters, sampling)          pure   relay.processing.pipeline
    cached upstream 429s, quotas                IO     upstream_limits, limiter
    shadow copies of what was dropped           pure + queue  shadow
    ---- with the memory outbox: room reserved, the SDK answered, the rest later
    finish (fingerprint, scrub)                 pure   relay.processing.pipeline
    rewrite routing headers, serialize, enqueue IO     outbox

With the memory outbox, the steps after the line run from the backlog
(`relay.services.backlog`), after the answer: nothing they do changes it. With the
disk spool they run before it, so that an answered envelope is on disk. For an envelope
whose kept payloads reach `offload.MIN_BYTES` they run on the offload thread, so that the
event loop goes on serving meanwhile (`relay.services.offload`).

Every dropped item gets its outcome here; delivered items get theirs from the
forwarder. Only the scrubbed, serialized envelope reaches the outbox.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

from relay.logs import log_unexpected
from relay.outcomes import Outcome, OutcomeKind, OutcomeSink, Reason
from relay.policy.compile import CompiledPolicy
from relay.policy.registry import ProjectPolicy
from relay.policy.targets import Target
from relay.processing import pipeline
from relay.processing.context import RequestContext
from relay.processing.quotas import Counter, Scoping
from relay.protocol.categories import item_quantities, primary_category
from relay.protocol.compress import gzip_worth
from relay.protocol.envelope import Envelope, Item
from relay.protocol.ratelimit_header import RateLimit
from relay.services.backlog import Backlog
from relay.services.client_reports import ClientReports
from relay.services.limiter import REDIS_UNAVAILABLE, Limiter
from relay.services.offload import Offload
from relay.services.outbox import MemoryOutbox, Outbox, OutboxEntry, OutboxFull
from relay.services.upstream_limits import UpstreamLimits

log = logging.getLogger("relay.ingest")


class ShadowSink(Protocol):
    def mirror(
        self,
        envelope_headers: dict[str, Any],
        drops: list[pipeline.Dropped],
        policy: CompiledPolicy,
        client_ip: str | None = None,
    ) -> None: ...


@dataclass(frozen=True, slots=True)
class Received:
    """A request body as it came: `decoded`, and `gzip`, one plain gzip member that
    encodes exactly `decoded` (see `relay.web.body.read_body`, `keep_gzip`)."""

    decoded: bytes
    gzip: bytes


@dataclass
class IngestResult:
    """What the endpoint answers: the event id, active limits, and whether anything was kept."""

    event_id: str | None
    #: Limits to announce in `X-Sentry-Rate-Limits` (on 200 or 429).
    rate_limits: list[RateLimit] = field(default_factory=list)
    #: Every item was dropped by rate limits: answer 429.
    all_rate_limited: bool = False
    #: Every item was invalid: still answered 200 (413 when too large), as Sentry does.
    all_invalid: bool = False
    too_large: bool = False
    #: No room in the outbox: answer 503.
    overloaded: bool = False
    #: Quotas could not be checked (`redis.on_error: reject`): answer 503.
    store_unavailable: bool = False
    kept: int = 0


@dataclass
class UploadAdmission:
    """Whether a minidump upload may be queued (`Ingest.admit_upload`)."""

    admitted: bool
    #: Quotas could not be checked (`redis.on_error: reject`): answer 503.
    store_unavailable: bool = False
    #: The counters it incremented, for a refund if it is not queued after all.
    counted: list[Counter] = field(default_factory=list)


class Ingest:
    """Composes the pipeline with the IO it needs.

    Parameters:
        outbox: where scrubbed envelopes wait for the forwarder.
        upstream_limits: the cache of limits the upstream answered with.
        outcomes: where every dropped item's outcome goes.
        backlog: where the steps after the answer run, with a memory outbox (without a
            backlog, or with the disk spool, they run before the answer).
        offload: the worker thread that takes those steps for large envelopes.
    """

    def __init__(
        self,
        outbox: Outbox,
        upstream_limits: UpstreamLimits,
        outcomes: OutcomeSink,
        shadow: ShadowSink | None = None,
        limiter: Limiter | None = None,
        client_reports: ClientReports | None = None,
        backpressure_wait: float = 2.0,
        backlog: Backlog | None = None,
        gzip_level: int | None = None,
        offload: Offload | None = None,
    ) -> None:
        self.outbox = outbox
        self.offload = offload
        #: Queued copies are gzipped at this level (None: as they are); see `_finish`.
        self.gzip_level = gzip_level
        self.backlog = backlog
        self.upstream_limits = upstream_limits
        self.outcomes = outcomes
        self.shadow = shadow
        self.limiter = limiter
        self.client_reports = client_reports
        self.backpressure_wait = backpressure_wait

    async def _check_quotas(
        self,
        prepared: pipeline.Prepared,
        ctx: RequestContext,
        policy: CompiledPolicy,
        result: IngestResult,
    ) -> dict[str, list[Counter]]:
        """Quotas, budgets and spike protection: one limiter call for the whole envelope.
        Returns the counters it incremented for what is still kept, per category (for a
        refund if the envelope is not queued after all)."""
        assert self.limiter is not None
        asked = prepared.quantities()
        checked = await self.limiter.check(
            Scoping(ctx.project_id, ctx.public_key),
            list(asked.items()),
            policy.quotas,
            partial(pipeline.categories_left, prepared),
        )
        rejected: dict[str, tuple[str, str | None]] = {}
        for category, rejection in checked.rejected.items():
            rejected[category] = (rejection.reason, rejection.quota_id)
            if rejection.rate_limit not in result.rate_limits and pipeline.announces(
                prepared, category
            ):
                result.rate_limits.append(rejection.rate_limit)
        if checked.rejected and all(
            r.quota_id == REDIS_UNAVAILABLE for r in checked.rejected.values()
        ):
            result.store_unavailable = True
        pipeline.drop_categories(prepared, rejected)
        consumed = checked.consumed
        if rejected and consumed:
            # Items dropped for a category rejected by this very check were counted in their
            # other ones too (a transaction whose spans hit a quota; an event's attachments):
            # each counter gets back what the dropped items added to it, so that it holds
            # what is kept. (A category known full beforehand had them skipped: `left`.)
            gone = _uncount(consumed, asked, prepared.quantities())
            if gone:
                await self.limiter.refund(gone)
        if checked.dry_run:
            # Would-be drops: kept and forwarded, mirrored to the shadow project as dry-run.
            hits = {hit.category: hit for hit in checked.dry_run}
            for work in prepared.kept:
                hit = next(
                    (hits[c] for c, _ in work.quantities if c in hits and c not in work.exempt),
                    None,
                )
                if hit is not None:
                    outcome = Outcome(
                        OutcomeKind.RATE_LIMITED,
                        hit.reason,
                        work.category,
                        work.quantity(),
                        ctx.project_id,
                        hit.quota_id,
                    )
                    prepared.dropped.append(pipeline.Dropped(work, outcome, dry_run=True))
        return consumed

    async def admit_upload(
        self, ctx: RequestContext, policy: CompiledPolicy, target: Target, size: int
    ) -> UploadAdmission:
        """Quotas, spike protection and cached upstream limits for a minidump upload (an
        error event with its dump as an attachment), as for an envelope with both.

        As in Sentry: the upload is dropped only when its error is rejected (outcome
        `rate_limited` for both), and the SDK still gets 200 (crash reporters retry a 429
        at once); attachment quotas count the dump but never drop it (it is what makes
        the event). `counted` is what a refund takes back if it is not queued after all.
        """
        quantities = [*upload_quantities(size), ("attachment_item", 1)]
        rejected: dict[str, str] = {}
        if self.upstream_limits.has(target.key):
            limit = self.upstream_limits.check(target.key, "error")
            if limit is not None:
                rejected["error"] = limit.reason or Reason.RATELIMIT_BACKOFF
        counted: list[Counter] = []
        if not rejected and self.limiter is not None and policy.quotas:
            checked = await self.limiter.check(
                Scoping(ctx.project_id, ctx.public_key),
                quantities,
                policy.quotas,
                lambda gone: set() if "error" in gone else {c for c, _ in quantities},
            )
            counted = [c for counters in checked.consumed.values() for c in counters]
            error = checked.rejected.get("error")
            if error is not None:
                if error.quota_id == REDIS_UNAVAILABLE:
                    return UploadAdmission(admitted=False, store_unavailable=True)
                rejected["error"] = error.reason
                if counted:
                    await self.limiter.refund(counted)
                counted = []
        if not rejected:
            return UploadAdmission(admitted=True, counted=counted)
        for category, quantity in quantities[:2]:
            outcome = Outcome(
                OutcomeKind.RATE_LIMITED, rejected["error"], category, quantity, ctx.project_id
            )
            # Reported upstream as an envelope's dump would be: with its `attachment_item`.
            report = quantities[1:] if category == "attachment" else None
            self._dropped(target, outcome, report)
        return UploadAdmission(admitted=False)

    async def refund(self, counted: list[Counter]) -> None:
        """Give back what `admit_upload` counted, for an upload that was not queued."""
        if counted and self.limiter is not None:
            await self.limiter.refund(counted)

    def _overloaded(self, quantities: list[tuple[str, int]], project_id: int) -> None:
        for category, quantity in quantities:
            self.outcomes.emit(
                Outcome(OutcomeKind.INTERNAL, Reason.OUTBOX_FULL, category, quantity, project_id)
            )

    async def submit(
        self,
        envelope: Envelope,
        ctx: RequestContext,
        project: ProjectPolicy,
        received: Received | None = None,
    ) -> IngestResult:
        """Process one envelope and queue what is kept.

        `received`: the body as it came, when it was gzip; if processing leaves the
        envelope byte-for-byte unchanged, those bytes are queued as they are (already
        compressed) instead of compressing the same bytes again.
        """
        policy = project.policy
        result = IngestResult(event_id=envelope.event_id)
        target = project.target(ctx.public_key)
        total_items = len(envelope.items)
        if self.outbox.over_high_water():
            await self.outbox.wait_for_room(self.backpressure_wait)
        size = sum(len(i.payload) for i in envelope.items)
        if not self.outbox.has_room(size):
            # Overloaded: refuse before spending CPU on an envelope that cannot be queued.
            self._overloaded([_quantity(i) for i in envelope.items], ctx.project_id)
            result.overloaded = True
            return result

        prepared = policy.prepare(envelope, ctx)

        if self.upstream_limits.has(target.key):
            rejected: dict[str, tuple[str, str | None]] = {}
            for category in prepared.categories():
                limit = self.upstream_limits.check(target.key, category)
                if limit is not None:
                    rejected[category] = (limit.reason or Reason.RATELIMIT_BACKOFF, None)
                    if limit not in result.rate_limits and pipeline.announces(prepared, category):
                        result.rate_limits.append(limit)
            pipeline.drop_categories(prepared, rejected)

        counted: dict[str, list[Counter]] = {}
        if self.limiter is not None and policy.quotas and prepared.kept:
            counted = await self._check_quotas(prepared, ctx, policy, result)

        if not prepared.kept:
            kinds = {d.outcome.kind for d in prepared.dropped if not d.dry_run}
            if total_items and kinds == {OutcomeKind.RATE_LIMITED}:
                result.all_rate_limited = True
            elif total_items and kinds == {OutcomeKind.INVALID}:
                result.all_invalid = True
                result.too_large = any(
                    d.outcome.reason == Reason.TOO_LARGE for d in prepared.dropped
                )
        # Answered 413, the SDK counts the items lost itself (`send_error`): reported by
        # both, Sentry's stats would count them twice.
        upstream = not (result.all_invalid and result.too_large)
        for dropped in prepared.dropped:
            if not dropped.dry_run:
                # Reported upstream in every category the item counted in (a transaction
                # in `span` too), as Sentry reports a drop, whatever made it.
                report = dropped.report
                if report is None and len(dropped.work.quantities) > 1:
                    report = [(c, q) for c, q in dropped.work.quantities if q > 0]
                self._dropped(target, dropped.outcome, report, upstream=upstream)
        if self.shadow is not None and prepared.dropped and policy.shadow is not None:
            self.shadow.mirror(envelope.headers, prepared.dropped, policy, ctx.client_ip)
        if not prepared.kept:
            return result

        outbox = self.outbox
        finish = partial(self._finish, prepared, policy, target, ctx, received)
        # Room for what is left to queue: items dropped above take none.
        size = sum(len(work.item.payload) for work in prepared.kept)
        large = self.offload is not None and self.offload.wants(size)
        # Should processing fail (or be given up at shutdown), every item kept now gets its
        # outcome: `finish` takes those it drops from `prepared.kept` as it goes.
        kept = list(prepared.kept)
        if self.backlog is not None and isinstance(outbox, MemoryOutbox):
            if not outbox.reserve(size):
                await self._refused(prepared, ctx, counted, result)
                return result
            if large:
                assert self.offload is not None
                self.offload.submit(
                    finish,
                    partial(self._queue_reserved, outbox, size, prepared, target),
                    partial(self._finish_failed, outbox, size, kept, ctx, target),
                )
            else:
                self.backlog.push(
                    partial(self._finish_later, outbox, size, kept, prepared, ctx, target, finish)
                )
            result.kept = len(prepared.kept)
            return result
        try:
            if large:
                assert self.offload is not None
                entry = await self.offload.call(finish)
            else:
                entry = finish()
        except Exception:
            # As from the backlog: logged, and the items end `internal` (answered 200, so
            # that the SDK does not send again what would fail again).
            log_unexpected(log, "processing an accepted envelope failed; its items are dropped")
            self._processing_failed(kept, ctx, target, Reason.PROCESSING_FAILED)
            return result
        self._emit_scrub_dropped(prepared, target)
        if entry is None:
            return result
        try:
            await outbox.put(entry)
        except OutboxFull:
            await self._refused(prepared, ctx, counted, result)
            return result
        result.kept = len(prepared.kept)
        return result

    async def _refused(
        self,
        prepared: pipeline.Prepared,
        ctx: RequestContext,
        counted: dict[str, list[Counter]],
        result: IngestResult,
    ) -> None:
        """No room in the outbox after all (it filled while this envelope was checked)."""
        if counted and self.limiter is not None:
            # The client retries it later, and the retry must not be charged twice.
            await self.limiter.refund(c for counters in counted.values() for c in counters)
        self._overloaded([(w.category, w.quantity()) for w in prepared.kept], ctx.project_id)
        result.overloaded = True

    def _finish(
        self,
        prepared: pipeline.Prepared,
        policy: CompiledPolicy,
        target: Target,
        ctx: RequestContext,
        received: Received | None,
    ) -> OutboxEntry | None:
        """Fingerprint, scrub and serialize what is kept: the outbox entry, or None when
        scrubbing left nothing (`_emit_scrub_dropped` gives those items their outcomes).

        Pure: this runs on the offload thread for large envelopes (`relay.services.offload`).
        """
        envelope = prepared.envelope
        forwarded = pipeline.finish(
            prepared, scrubber=policy.scrubber, fingerprinter=policy.fingerprinter
        )
        if not forwarded.items:
            return None
        route_to(forwarded, target, ctx.public_key)
        user_agent, client = sdk_headers(policy, ctx)
        body = forwarded.serialize()
        encoding = ""
        if not target.is_file:
            # Queued as it will be sent: the client's own gzip when nothing changed, else
            # gzipped here, while the body is fresh in the cache (and from the backlog,
            # after the answer), so the outbox and the spool hold it compressed.
            if received is not None and body == received.decoded:
                body, encoding = received.gzip, "gzip"
            else:
                gzipped = gzip_worth(body, self.gzip_level)
                if gzipped is not None:
                    body, encoding = gzipped, "gzip"
        return OutboxEntry(
            target=target,
            body=body,
            encoding=encoding,
            app_key=ctx.public_key,
            project_id=ctx.project_id,
            quantities=[(w.category, w.quantity()) for w in prepared.kept],
            event_id=envelope.event_id,
            user_agent=user_agent,
            client=client,
        )

    def _dropped(
        self,
        target: Target,
        outcome: Outcome,
        report: list[tuple[str, int]] | None = None,
        *,
        upstream: bool = True,
    ) -> None:
        """One dropped item's outcome: counted, and reported upstream (client reports,
        unless not `upstream`), in the categories of `report` when given (every category
        it counted in), else in the outcome's."""
        self.outcomes.emit(outcome)
        if upstream and self.client_reports is not None:
            self.client_reports.record(target, outcome, report)

    def _emit_scrub_dropped(self, prepared: pipeline.Prepared, target: Target) -> None:
        """Outcomes of the items scrubbing dropped (on the event loop, after `_finish`)."""
        for dropped in prepared.scrub_dropped:
            self._dropped(target, dropped.outcome)

    def _finish_later(
        self,
        outbox: MemoryOutbox,
        size: int,
        kept: list[pipeline.WorkItem],
        prepared: pipeline.Prepared,
        ctx: RequestContext,
        target: Target,
        finish: Callable[[], OutboxEntry | None],
    ) -> None:
        """`_finish` from the backlog, into the room reserved for it. The SDK has its
        answer: a failure here is logged, and the items (`kept` before `finish` began)
        get an `internal` outcome."""
        try:
            entry = finish()
        except Exception:
            log_unexpected(log, "processing an accepted envelope failed; its items are dropped")
            self._finish_failed(outbox, size, kept, ctx, target, Reason.PROCESSING_FAILED)
            return
        self._queue_reserved(outbox, size, prepared, target, entry)

    def _queue_reserved(
        self,
        outbox: MemoryOutbox,
        size: int,
        prepared: pipeline.Prepared,
        target: Target,
        entry: OutboxEntry | None,
    ) -> None:
        """A finished envelope into the room reserved for it (released when nothing is left)."""
        self._emit_scrub_dropped(prepared, target)
        if entry is None:
            outbox.release(size)
        else:
            outbox.put_reserved(entry, size)

    def _finish_failed(
        self,
        outbox: MemoryOutbox,
        size: int,
        kept: list[pipeline.WorkItem],
        ctx: RequestContext,
        target: Target,
        reason: str,
    ) -> None:
        """`_finish` raised after the answer (or was given up at shutdown): the room goes
        back, the items it was given (`kept`) get `internal` with `reason`. Not
        `prepared.kept`, which `finish` changes as it goes (on another thread, maybe)."""
        outbox.release(size)
        self._processing_failed(kept, ctx, target, reason)

    def _processing_failed(
        self, kept: list[pipeline.WorkItem], ctx: RequestContext, target: Target, reason: str
    ) -> None:
        for work in kept:
            self._dropped(
                target,
                Outcome(
                    OutcomeKind.INTERNAL,
                    reason,
                    work.category,
                    work.quantity(),
                    ctx.project_id,
                ),
            )


def sdk_headers(policy: CompiledPolicy, ctx: RequestContext) -> tuple[str, str]:
    """The SDK's `User-Agent` and `sentry_client` for an outbox entry (forwarded upstream,
    as Sentry's Relay forwards them), through the policy's value detectors: nothing
    leaves unscrubbed, not even a header. Most SDKs send the same few values, which the
    detectors' cache answers."""
    sent = (ctx.user_agent or "", ctx.sdk_client or "")
    scrubber = policy.scrubber
    if scrubber is None or scrubber.noop or sent == ("", ""):
        return sent
    memo = _SDK_HEADERS.get(sent)
    if memo is None or memo[0] is not scrubber:
        user_agent, client = sent
        scrubbed = (
            scrubber.scrub_text(user_agent) if user_agent else "",
            scrubber.scrub_text(client) if client else "",
        )
        if len(_SDK_HEADERS) >= _SDK_HEADERS_MAX:
            _SDK_HEADERS.clear()
        memo = _SDK_HEADERS[sent] = (scrubber, scrubbed)
    return memo[1]


#: `sdk_headers`' answers by what the SDK sent, with the scrubber that gave them (another
#: policy revision asks again): most SDKs send the same few values.
_SDK_HEADERS: dict[tuple[str, str], tuple[object, tuple[str, str]]] = {}
_SDK_HEADERS_MAX = 1024


def _quantity(item: Item) -> tuple[str, int]:
    """An unprocessed item's primary category and its quantity in it (attachment bytes,
    log items, ...), as for the items refused after processing."""
    category = primary_category(item.type, item.headers)
    counted = item_quantities(item.type, item.headers, len(item.payload))
    return str(category), next((q for c, q in counted if c == category), 1)


def upload_quantities(size: int) -> list[tuple[str, int]]:
    """What a minidump upload of `size` bytes counts for in outcomes: an error, and its
    dump as attachment bytes (delivered, dropped or refused alike)."""
    return [("error", 1), ("attachment", size)]


def _uncount(
    consumed: dict[str, list[Counter]], asked: dict[str, int], kept: dict[str, int]
) -> list[Counter]:
    """What to give back of `consumed` (counted for the quantities `asked`) now that only
    `kept` is left: a category with nothing left gets its counters back whole; one partly
    kept, the difference (a budget's cost is recomputed, so rounding stays with the
    kept quantity). `consumed` is left holding what stays counted."""
    gone: list[Counter] = []
    for category in list(consumed):
        left = kept.get(category, 0)
        if left >= asked.get(category, 0):
            continue
        if left == 0:
            gone += consumed.pop(category)
            continue
        stays: list[Counter] = []
        for counter in consumed[category]:
            keep = counter.quota.cost(category, left) if counter.quota is not None else left
            if counter.increment > keep:
                gone.append(dataclasses.replace(counter, increment=counter.increment - keep))
                counter = dataclasses.replace(counter, increment=keep)
            stays.append(counter)
        consumed[category] = stays
    return gone


def route_to(envelope: Envelope, target: Target, app_key: str) -> None:
    """Point the envelope's routing headers at the upstream; never leak the app's DSN onward."""
    if target.dsn is None:
        envelope.pop_header("dsn")
        return
    if "dsn" in envelope.headers:
        envelope.set_header("dsn", str(target.dsn))
    trace = envelope.headers.get("trace")
    if (
        isinstance(trace, dict)
        and trace.get("public_key") == app_key
        and target.dsn.public_key != app_key
    ):
        envelope.set_header("trace", {**trace, "public_key": target.dsn.public_key})
