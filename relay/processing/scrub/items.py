"""Scrubbing a whole envelope: the header and every item, by item type.

    event, transaction, feedback, replay_event, check_in, security, nel, log, otel_log,
    span, session(s), user_report, profile(_chunk), unknown JSON
                        parsed, walked with the item type's schema, re-serialized
    attachment          per `attachments`: `scrub_text`, `keep`, or `drop` (removed and
                        reported). `scrub_text`: the filename through the value
                        detectors; `event.payload` / `event.breadcrumbs` (JSON or
                        sentry-native MessagePack, see `native`) walked as an event /
                        as breadcrumbs, dropped when unreadable; anything else by its
                        content (see `content`): JSON walked, text through the rules
                        that select the file (`$attachments.'app.log'`) and the value
                        detectors, binary (images, archives) rewritten in place by the
                        rules that select it (see `binary`), else kept; minidumps
                        (`event.minidump`) by their parts (see `minidump_pii`)
    replay_recording    header line and JSON (plain or zlib) walked, deep ones in
    replay_video        pieces; a replay video's event and recording likewise (see
                        `replay`); dropped when unreadable
    client_report       kept (counts only)
    statsd_binary       kept (binary metrics)
    anything else       JSON walked, else text (by content) through the value
                        detectors, else kept (binary)

An item that cannot be read is dropped with outcome reason `invalid_payload`: a strict
relay never forwards what it could not read. Items forwarded or dropped unread are
described (`Unread`) when the caller asks (`notes`, the dry run does).
Items whose payload changed get new bytes through `Item.set_payload`.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import orjson

from relay.outcomes import Reason
from relay.processing.scrub import native
from relay.processing.scrub.binary import scrub_binary
from relay.processing.scrub.content import Unreadable, binary_kind, read_text
from relay.processing.scrub.deep import walk_deep
from relay.processing.scrub.minidump_pii import MINIDUMP_TYPE, scrub_minidump
from relay.processing.scrub.replay import scrub_recording, scrub_video
from relay.processing.scrub.rules import Application, Rule, merge_spans, rewrite
from relay.processing.scrub.schema import ENVELOPE_HEADER
from relay.processing.scrub.selectors import PII_TRUE, PathSel, State, matches
from relay.processing.scrub.selectors import Item as SelectorItem
from relay.processing.scrub.walker import Redaction, Walk
from relay.protocol.envelope import Item as EnvelopeItem
from relay.protocol.envelope import has_duplicate_keys, json_exceeds_depth

if TYPE_CHECKING:
    from relay.processing.scrub.scrubber import Scrubber, ScrubReport
    from relay.protocol.envelope import Envelope, Item

#: The value types of an attachment's state and of its root (`_attachment_rules`).
_ATTACHMENTS = frozenset({"attachments"})
_BINARY = frozenset({"binary"})
#: A selector's first item when it starts at `$attachments`.
_ATTACHMENTS_TYPE = SelectorItem("type", "attachments")

#: Item types forwarded as they are, and why.
_KEEP_TYPES = {
    "client_report": "a client report (outcome counts only)",
    "statsd_binary": "binary metrics",
}

#: Scrubs a payload: new bytes (None: unchanged) and redactions; `Unreadable` if it cannot.
_Reader = Callable[["Scrubber", bytes, int, bool], tuple[bytes | None, list[Redaction]]]


class Unread(NamedTuple):
    """An item the scrubber did not read through: why, and the outcome reason when it
    was dropped (None: forwarded as it came)."""

    why: str
    reason: str | None = None


def _text_redactions(
    scrubber: Scrubber, text: str, index: int, item_type: str
) -> tuple[str, list[Redaction]]:
    new, changes = scrubber.scrub_text_report(text)
    return new, [
        Redaction(f"<text>[{a}:{b}]", rule, "replace", index, item_type) for rule, (a, b) in changes
    ]


def _scrub_json_bytes(
    scrubber: Scrubber, payload: bytes, item_type: str, index: int, want: bool
) -> tuple[bytes | None, list[Redaction]] | None:
    """Walk a JSON payload; None if it is not JSON; (new bytes or None, redactions).
    JSON deeper than the depth limit is walked in pieces (`deep`), so that key-based
    rules still apply; raises `Unreadable` when it is too large for that.

    `want`: build the redactions (else the list stays empty).
    """
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, dict | list):
        return None
    if json_exceeds_depth(payload):
        return walk_deep(scrubber, data, payload, item_type, index, want)
    changed, red = scrubber.walk_payload(data, item_type, item=index, report=want)
    if not changed:
        if has_duplicate_keys(payload):
            # The walk saw only the last of each duplicate key: forward what it saw.
            return orjson.dumps(data), []
        return None, []
    return orjson.dumps(data), red


def _apply(
    item: Item, new: bytes | None, red: list[Redaction], index: int, report: ScrubReport
) -> None:
    """Record a payload's scrubbing: new bytes (if any) and the redactions."""
    if new is not None:
        item.set_payload(new)
        report.changed_items.append(index)
    if red and report.want:
        report.redactions.extend(red)


def _read(
    reader: _Reader, scrubber: Scrubber, item: Item, index: int, report: ScrubReport
) -> Unread | None:
    """Scrub `item` with `reader`; an `Unread` to drop it when it cannot be read."""
    try:
        new, red = reader(scrubber, item.payload, index, report.want)
    except Unreadable as exc:
        return Unread(f"it could not be read: {exc}", Reason.INVALID_PAYLOAD)
    _apply(item, new, red, index, report)
    return None


def _scrub_content(
    scrubber: Scrubber,
    item: Item,
    index: int,
    report: ScrubReport,
    item_type: str,
    *,
    try_json: bool = False,
    filename: str | None = None,
) -> Unread | None:
    """JSON walked, text (by content) through the value detectors, binary kept. JSON is
    tried when the content type or the first byte says so, or always with `try_json`.
    `filename`: an attachment's (see `_scrub_text`)."""
    payload = item.payload
    ctype = str(item.headers.get("content_type") or "").lower()
    if try_json or "json" in ctype or payload.lstrip()[:1] in (b"{", b"["):
        try:
            res = _scrub_json_bytes(scrubber, payload, item_type, index, report.want)
        except Unreadable as exc:
            return Unread(f"it could not be read: {exc}", Reason.INVALID_PAYLOAD)
        if res is not None:
            _apply(item, *res, index, report)
            return None
    return _scrub_text(scrubber, item, index, report, item_type, filename)


def _scrub_text(
    scrubber: Scrubber,
    item: Item,
    index: int,
    report: ScrubReport,
    item_type: str,
    filename: str | None = None,
) -> Unread | None:
    """Text (see `content`) through the rules that select the attachment `filename`
    (if any), then the value detectors; binary through the rules that select the
    attachment, else kept (an `Unread`)."""
    payload = item.payload
    text = read_text(payload)
    if text is None:
        return _scrub_binary(scrubber, item, index, report, filename)
    red: list[Redaction] = []
    current = text.text
    if filename is not None and scrubber.policy.applications:
        current, red = _attachment_rules(scrubber, filename, current, index)
    new_text, found = _text_redactions(scrubber, current, index, item_type)
    red += found
    if red:
        _apply(item, text.encode(new_text), red, index, report)
    return None


def _selected_rules(scrubber: Scrubber, filename: str) -> list[Rule]:
    """The rules, in order, of the applications whose selector matches the attachment
    `filename` as Sentry's Relay sees one (relay-pii `attachments.rs`): a binary value
    under the file name, below an `$attachments` root (`$attachments.'app.log'`,
    `$attachments.**`, `$binary`, `**`; not `$string`)."""
    states: list[State] = [("", _ATTACHMENTS), (filename, _BINARY)]
    rules: list[Rule] = []
    for app in scrubber.policy.applications:
        if matches(app.selector, states, PII_TRUE):
            rules.extend(app.rules)
    return rules


def _attachment_rules(
    scrubber: Scrubber, filename: str, text: str, index: int
) -> tuple[str, list[Redaction]]:
    """The rules that select the attachment (`_selected_rules`) applied to its text.
    The text is encoded anew, so a replacement need not keep the length."""
    current = text
    red: list[Redaction] = []
    for rule in _selected_rules(scrubber, filename):
        whole = rule.keyed and (rule.type == "anything" or rule.applies_to_key(filename))
        spans = [(0, len(current))] if whole and current else rule.spans(current)
        if not spans:
            continue
        current, ranges = rewrite(current, merge_spans(spans), rule.redaction.substitute)
        red += (
            Redaction(f"<text>[{a}:{b}]", rule.origin, rule.method, index, "attachment")
            for a, b in ranges
        )
    return current, red


def names_an_attachment(applications: Sequence[Application]) -> bool:
    """Whether an application names an attachment (`$attachments.'app.log'`): as in Sentry,
    binary attachments are rewritten only then (by every rule that selects them, `**`
    and `$binary` too); a policy without one leaves them whole."""
    for app in applications:
        sel = app.selector
        if (
            isinstance(sel, PathSel)
            and len(sel.items) >= 2
            and sel.items[0] == _ATTACHMENTS_TYPE
            and sel.items[1].kind == "key"
        ):
            return True
    return False


def _scrub_binary(
    scrubber: Scrubber,
    item: Item,
    index: int,
    report: ScrubReport,
    filename: str | None,
) -> Unread | None:
    """Binary content: rewritten in place, at the same length, by the rules that select
    the attachment `filename` (see `binary`); kept (an `Unread`) when none does or when
    it is no attachment. A minidump (`event.minidump`) is scrubbed by its parts instead
    (see `minidump_pii`)."""
    payload = item.payload
    if filename is not None and item.headers.get("attachment_type") == MINIDUMP_TYPE:
        return _scrub_minidump(scrubber, item, index, report, filename)
    rules: list[Rule] = []
    if filename is not None and scrubber.rewrites_binaries:
        rules = _selected_rules(scrubber, filename)
    if filename is None or not rules:
        return Unread(f"binary content ({binary_kind(payload) or 'binary data'})")
    new, found = scrub_binary(rules, payload, filename)
    red = [
        Redaction(f"<bytes>[{s}:{e}]", rule.origin, rule.method, index, "attachment")
        for rule, s, e in (found if report.want else ())
    ]
    _apply(item, new, red, index, report)
    return None


def _scrub_minidump(
    scrubber: Scrubber, item: Item, index: int, report: ScrubReport, filename: str
) -> Unread | None:
    """A minidump through the rules that select its parts, whatever else the policy
    names (as in Sentry); one that does not parse goes through the rules that select the
    file, as a plain binary attachment (`scrub_binary`), with what was rewritten so far.
    Kept (an `Unread`) when no rule selects anything of it."""
    payload = item.payload
    done = scrub_minidump(scrubber.policy.applications, payload, filename)
    found = [(rule, s, e) for rule, _, s, e in done.redactions]
    current, selected = done.data, done.selected
    if done.error is not None:
        rules = _selected_rules(scrubber, filename)
        selected = selected or bool(rules)
        new, more = scrub_binary(rules, current, filename)
        current = current if new is None else new
        found += more
    if not selected:
        why = "no pii_config rule selects its parts"
        if done.error is not None:
            why = f"it does not parse ({done.error}) and no pii_config rule selects it"
        return Unread(f"binary content (minidump): {why}")
    red = [
        Redaction(f"<bytes>[{s}:{e}]", rule.origin, rule.method, index, "attachment")
        for rule, s, e in (found if report.want else ())
    ]
    _apply(item, None if current == payload else current, red, index, report)
    return None


def scrub_minidump_bytes(scrubber: Scrubber, payload: bytes, filename: str) -> bytes | None:
    """A minidump's bytes (the minidump upload endpoint's dump) as an `event.minidump`
    attachment is scrubbed: the new bytes, or None when unchanged."""
    from relay.processing.scrub.scrubber import ScrubReport  # it imports this module

    item = EnvelopeItem({"type": "attachment", "attachment_type": MINIDUMP_TYPE}, payload)
    report = ScrubReport(want=False)
    _scrub_minidump(scrubber, item, 0, report, filename)
    return item.payload if report.changed_items else None


def _scrub_generic(
    scrubber: Scrubber, item: Item, index: int, report: ScrubReport
) -> Unread | None:
    """JSON walked, else text (by content) through the value detectors, binary kept."""
    if not item.payload:
        return None
    return _scrub_content(scrubber, item, index, report, item.type, try_json=True)


def _scrub_filename(scrubber: Scrubber, item: Item, index: int, report: ScrubReport) -> None:
    """An attachment's `filename` header through the value detectors."""
    name = item.headers.get("filename")
    if not isinstance(name, str) or len(name) < 3:
        return
    new, changes = scrubber.scrub_text_report(name)
    if not changes:
        return
    item.set_header("filename", new)
    report.changed_items.append(index)
    if report.want:
        report.redactions.extend(
            Redaction("<filename>", rule, "replace", index, "attachment") for rule, _ in changes
        )


def _scrub_attachment(
    scrubber: Scrubber, item: Item, index: int, report: ScrubReport
) -> Unread | None:
    """Scrub an attachment per policy (see the module docstring)."""
    mode = scrubber.policy.attachments
    if mode == "drop":
        return Unread("attachments: drop", Reason.ATTACHMENTS_POLICY)
    if mode == "keep":
        return Unread("attachments: keep")
    name = item.headers.get("filename")
    _scrub_filename(scrubber, item, index, report)
    if not item.payload:
        return None
    kind = item.headers.get("attachment_type")
    if kind == native.EVENT_PAYLOAD:
        return _read(_scrub_event_payload, scrubber, item, index, report)
    if kind == native.BREADCRUMBS:
        return _read(_scrub_breadcrumbs, scrubber, item, index, report)
    return _scrub_content(
        scrubber, item, index, report, "attachment", filename=name if isinstance(name, str) else ""
    )


def scrub_native(scrubber: Scrubber, kind: str, payload: bytes) -> bytes | None:
    """An `event.payload` or `event.breadcrumbs` payload (`kind`) of a native crash,
    scrubbed: new bytes, or None when unchanged; raises `Unreadable`."""
    reader = _scrub_event_payload if kind == native.EVENT_PAYLOAD else _scrub_breadcrumbs
    return reader(scrubber, payload, 0, False)[0]


def _is_json(payload: bytes) -> bool:
    return payload.lstrip()[:1] in (b"{", b"[")


def _scrub_event_payload(
    scrubber: Scrubber, payload: bytes, index: int, want: bool
) -> tuple[bytes | None, list[Redaction]]:
    """An `event.payload` attachment (JSON or MessagePack), walked as an event."""
    if _is_json(payload):
        res = _scrub_json_bytes(scrubber, payload, "event", index, want)
        if res is None:
            raise Unreadable("the event payload is not a JSON object within the depth limit")
        return res
    event = native.decode_event(payload)
    _, red = scrubber.walk_payload(event, "event", item=index, report=want)
    return _reencoded(native.encode_stream([event]), payload), red


def _scrub_breadcrumbs(
    scrubber: Scrubber, payload: bytes, index: int, want: bool
) -> tuple[bytes | None, list[Redaction]]:
    """An `event.breadcrumbs` attachment (JSON, or a MessagePack stream), walked as the
    breadcrumbs of an event; a cut-short last MessagePack value is left out."""
    if _is_json(payload):
        try:
            values = [orjson.loads(payload)]
        except orjson.JSONDecodeError:
            raise Unreadable("the breadcrumbs are not JSON") from None
        if json_exceeds_depth(payload):
            raise Unreadable("the breadcrumbs are nested past the depth limit")
        red = _walk_breadcrumbs(scrubber, values, index, want)
        return _reencoded(orjson.dumps(values[0] if values else []), payload), red
    values, _ = native.decode_stream(payload)
    red = _walk_breadcrumbs(scrubber, values, index, want)
    return _reencoded(native.encode_stream(values), payload), red


def _walk_breadcrumbs(
    scrubber: Scrubber, values: list[Any], index: int, want: bool
) -> list[Redaction]:
    """Walk `values` (breadcrumbs, or lists of them) as an event's breadcrumbs, in place;
    what a rule removed as a whole is left out."""
    flat: list[Any] = []
    for value in values:
        flat.extend(value if isinstance(value, list) else [value])
    wrapper: dict[str, Any] = {"breadcrumbs": {"values": flat}}
    _, red = scrubber.walk_payload(wrapper, "event", item=index, report=want)
    crumbs = wrapper.get("breadcrumbs")
    seen = crumbs.get("values") if isinstance(crumbs, dict) else None
    if seen is not flat:
        values.clear()
        return red
    pos = 0
    for i, value in enumerate(values):
        if isinstance(value, list):
            value[:] = flat[pos : pos + len(value)]
            pos += len(value)
        else:
            values[i] = flat[pos]
            pos += 1
    values[:] = [v for v in values if v is not None]
    return red


def _reencoded(new: bytes, old: bytes) -> bytes | None:
    return None if new == old else new


def _pseudonymize_header_user(scrubber: Scrubber, trace: dict[str, Any]) -> list[Redaction]:
    """Keep `trace.user_id` consistent with a pseudonymized `user.id`."""
    policy = scrubber.policy
    if not policy.pseudonymize:
        return []
    states: list[State] = [("user", frozenset({"user", "object"})), ("id", frozenset({"string"}))]
    if not any(matches(sel, states, PII_TRUE) for sel in policy.pseudonymize):
        return []
    out = []
    targets: list[tuple[dict[str, Any], str, str]] = [(trace, "user_id", "trace.user_id")]
    user = trace.get("user")
    if isinstance(user, dict):
        targets.append((user, "id", "trace.user.id"))
    for container, key, path in targets:
        value = container.get(key)
        if isinstance(value, str | int) and not isinstance(value, bool):
            container[key] = hmac.new(
                policy.pseudonymize_key, str(value).encode("utf-8"), hashlib.sha256
            ).hexdigest()
            out.append(Redaction(path, "@pseudonymize", "hash"))
    return out


def _scrub_header(scrubber: Scrubber, envelope: Envelope, report: ScrubReport) -> None:
    headers = envelope.headers
    red: list[Redaction] = []
    trace = headers.get("trace")
    if isinstance(trace, dict):
        red += _pseudonymize_header_user(scrubber, trace)
    walk = Walk(scrubber.policy, False, report.want)
    walk.run(headers, ENVELOPE_HEADER)
    red += [Redaction(path, rule, method) for path, rule, method in walk.report_rows()]
    if red or walk.changes:
        first = next(iter(headers))
        envelope.set_header(first, headers[first])
        report.header_changed = True
        if report.want:
            report.redactions.extend(red)


def scrub_envelope(
    scrubber: Scrubber,
    envelope: Envelope,
    skip: frozenset[int] = frozenset(),
    *,
    report: bool = True,
    notes: dict[int, Unread] | None = None,
) -> ScrubReport:
    """Scrub `envelope` in place: header, then every item (see module docstring).

    `skip`: indexes of items the caller already scrubbed as parsed events.
    `report`: list the redactions (dropped and changed items are listed regardless).
    `notes`: filled with an `Unread` per item (by index) that was forwarded or dropped
    without being read through.
    """
    from relay.processing.scrub.scrubber import ScrubReport

    out = ScrubReport(want=report)
    _scrub_all(scrubber, envelope, skip, out, notes)
    return out


def _scrub_all(
    scrubber: Scrubber,
    envelope: Envelope,
    skip: frozenset[int],
    report: ScrubReport,
    notes: dict[int, Unread] | None,
) -> None:
    from relay.processing.scrub.scrubber import DroppedItem

    _scrub_header(scrubber, envelope, report)
    kept: list[Item] = []
    for index, item in enumerate(envelope.items):
        item_type = item.type
        if index in skip:
            unread = None
        elif item_type == "attachment":
            unread = _scrub_attachment(scrubber, item, index, report)
        elif item_type == "replay_recording":
            unread = _read(scrub_recording, scrubber, item, index, report)
        elif item_type == "replay_video":
            unread = _read(scrub_video, scrubber, item, index, report)
        elif item_type in _KEEP_TYPES:
            unread = Unread(_KEEP_TYPES[item_type])
        else:
            unread = _scrub_generic(scrubber, item, index, report)
        if unread is not None:
            if notes is not None:
                notes[index] = unread
            if unread.reason is not None:
                report.dropped.append(DroppedItem(index, item, unread.reason))
                continue
        kept.append(item)
    if report.dropped:
        envelope.items[:] = kept
