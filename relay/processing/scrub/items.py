"""Scrubbing a whole envelope: the header and every item, by item type.

    event, transaction, feedback, replay_event, check_in, security, nel, log, otel_log,
    span, session(s), user_report, profile(_chunk), unknown JSON
                        parsed, walked with the item type's schema, re-serialized
    attachment          per `attachments`: scrub_text (JSON walked, text through the
                        value detectors, binary kept), keep, or drop (removed and reported)
    replay_recording    its JSON (plain or zlib) walked; kept if it cannot be read
    client_report       kept (counts only)
    anything else       JSON walked, else UTF-8 text through the value detectors,
                        else kept (binary)

Items whose payload changed get new bytes through `Item.set_payload`.
"""

from __future__ import annotations

import hashlib
import hmac
import zlib
from typing import TYPE_CHECKING, Any

import orjson

from relay.outcomes import Reason
from relay.processing.scrub.schema import ENVELOPE_HEADER
from relay.processing.scrub.selectors import PII_TRUE, State, matches
from relay.processing.scrub.walker import Redaction, Walk
from relay.protocol.envelope import has_duplicate_keys, json_exceeds_depth

if TYPE_CHECKING:
    from relay.processing.scrub.scrubber import Scrubber, ScrubReport
    from relay.protocol.envelope import Envelope, Item

_KEEP_TYPES = frozenset({"client_report", "replay_video", "statsd_binary"})
_TEXT_CONTENT = ("text/", "application/json", "application/xml", "application/x-ndjson")
_BINARY_ATTACHMENTS = frozenset(
    {"event.minidump", "event.applecrashreport", "unreal.context", "unreal.logs"}
)
_MAX_INFLATE = 50 * 1024 * 1024


def _looks_text(payload: bytes) -> str | None:
    if b"\x00" in payload[:8192]:
        return None
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError:
        return None


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

    `want`: build the redactions (else the list stays empty).
    """
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, dict | list) or json_exceeds_depth(payload):
        return None  # too deep to walk: scrubbed as text instead
    changed, red = scrubber.walk_payload(data, item_type, item=index, report=want)
    if not changed:
        if has_duplicate_keys(payload):
            # The walk saw only the last of each duplicate key: forward what it saw.
            return orjson.dumps(data), []
        return None, []
    return orjson.dumps(data), red


def _scrub_generic(scrubber: Scrubber, item: Item, index: int, report: ScrubReport) -> None:
    item_type = item.type
    payload = item.payload
    if not payload:
        return
    res = _scrub_json_bytes(scrubber, payload, item_type, index, report.want)
    if res is not None:
        new, red = res
        if new is not None:
            item.set_payload(new)
            report.changed_items.append(index)
            report.redactions.extend(red)
        return
    text = _looks_text(payload)
    if text is None:
        return
    new_text, red = _text_redactions(scrubber, text, index, item_type)
    if red:
        item.set_payload(new_text.encode("utf-8"))
        report.changed_items.append(index)
        if report.want:
            report.redactions.extend(red)


def _scrub_attachment(scrubber: Scrubber, item: Item, index: int, report: ScrubReport) -> bool:
    """Scrub an attachment per policy; False when it must be dropped."""
    mode = scrubber.policy.attachments
    if mode == "keep":
        return True
    if mode == "drop":
        return False
    kind = item.headers.get("attachment_type")
    if isinstance(kind, str) and kind in _BINARY_ATTACHMENTS:  # the client's JSON: any type
        return True
    ctype = str(item.headers.get("content_type") or "").lower()
    payload = item.payload
    if not payload:
        return True
    if "json" in ctype or payload[:1] in (b"{", b"["):
        res = _scrub_json_bytes(scrubber, payload, "attachment", index, report.want)
        if res is not None:
            new, red = res
            if new is not None:
                item.set_payload(new)
                report.changed_items.append(index)
                report.redactions.extend(red)
            return True
    if ctype and not ctype.startswith(_TEXT_CONTENT) and ctype != "application/octet-stream":
        text = _looks_text(payload) if ctype.endswith(("+json", "+xml", "yaml", "csv")) else None
    else:
        text = _looks_text(payload)
    if text is None:
        return True
    new_text, red = _text_redactions(scrubber, text, index, "attachment")
    if red:
        item.set_payload(new_text.encode("utf-8"))
        report.changed_items.append(index)
        if report.want:
            report.redactions.extend(red)
    return True


def _scrub_replay_recording(
    scrubber: Scrubber, item: Item, index: int, report: ScrubReport
) -> None:
    payload = item.payload
    nl = payload.find(b"\n")
    if nl < 0:
        head, body = b"", payload
    else:
        head, body = payload[: nl + 1], payload[nl + 1 :]
    compressed = False
    if body[:1] not in (b"[", b"{"):
        try:
            inflater = zlib.decompressobj()
            raw = inflater.decompress(body, _MAX_INFLATE)
            if inflater.unconsumed_tail:
                return
            body = raw
            compressed = True
        except zlib.error:
            return
    res = _scrub_json_bytes(scrubber, body, "replay_recording", index, report.want)
    if res is None:
        return
    new, red = res
    if new is None:
        return
    out = zlib.compress(new) if compressed else new
    item.set_payload(head + out)
    report.changed_items.append(index)
    report.redactions.extend(red)


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
) -> ScrubReport:
    """Scrub `envelope` in place: header, then every item (see module docstring).

    `skip`: indexes of items the caller already scrubbed as parsed events.
    `report`: list the redactions (dropped and changed items are listed regardless).
    """
    from relay.processing.scrub.scrubber import ScrubReport

    out = ScrubReport(want=report)
    _scrub_all(scrubber, envelope, skip, out)
    return out


def _scrub_all(
    scrubber: Scrubber, envelope: Envelope, skip: frozenset[int], report: ScrubReport
) -> None:
    from relay.processing.scrub.scrubber import DroppedItem

    _scrub_header(scrubber, envelope, report)
    kept: list[Item] = []
    for index, item in enumerate(envelope.items):
        item_type = item.type
        if index in skip:
            pass
        elif item_type == "attachment":
            if not _scrub_attachment(scrubber, item, index, report):
                report.dropped.append(DroppedItem(index, item, Reason.ATTACHMENTS_POLICY))
                continue
        elif item_type == "replay_recording":
            _scrub_replay_recording(scrubber, item, index, report)
        elif item_type not in _KEEP_TYPES:
            _scrub_generic(scrubber, item, index, report)
        kept.append(item)
    if report.dropped:
        envelope.items[:] = kept
