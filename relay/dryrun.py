"""`relay scrub`: the policy dry run for humans.

Runs inbound filters, sampling, the PII scrubber and fingerprint rules on an
event JSON or an envelope, sends nothing, and prints what would happen: the
decision per item (a session aggregate forwarded without its buckets out of the time
window says how many it loses, and why), every redaction (path, rule, method — never the removed
value), the fingerprint, and the payload as it would leave the relay. Items the
scrubber did not read through are flagged, with why: forwarded unread (binary
content, `attachments: keep`, counts-only items) or dropped because they could not
be read. Quotas are not consulted (they depend on live counters).
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from typing import Any, TextIO

import orjson

from relay.config import Config
from relay.outcomes import Reason
from relay.policy.registry import Denied, PolicyRegistry, ProjectPolicy
from relay.processing.context import RequestContext
from relay.processing.pipeline import Dropped, ScrubOutcome, ScrubStage, WorkItem
from relay.processing.scrub.content import Unreadable, read_text
from relay.processing.scrub.items import Unread, scrub_envelope
from relay.processing.scrub.native import decode_raw_map, raw_string
from relay.processing.scrub.scrubber import Scrubber
from relay.protocol.envelope import Envelope, EnvelopeError, json_exceeds_depth, parse_envelope
from relay.protocol.store import StoreError, store_to_envelope


class InputError(ValueError):
    """The input is neither an event JSON nor an envelope."""


def read_input(data: bytes) -> Envelope:
    """An envelope as given, or a bare event JSON wrapped into one."""
    text = data.strip()
    if not text:
        raise InputError("empty input")
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        value = None
    if isinstance(value, dict):
        try:
            return store_to_envelope(value, event_id=None)
        except StoreError as exc:
            raise InputError(str(exc)) from None
    try:
        return parse_envelope(data)
    except EnvelopeError as exc:
        raise InputError(f"not an event JSON and not an envelope: {exc}") from None


@dataclass
class ItemReport:
    index: int
    item_type: str
    decision: str
    redactions: list[tuple[str, str, str]] = field(default_factory=list)
    fingerprint: list[str] | None = None
    title: str | None = None
    payload: Any = None
    #: Why the item was forwarded without being read through (None: it was read).
    unread: str | None = None


def _project(registry: PolicyRegistry, project_id: int | None, envelope: Envelope) -> ProjectPolicy:
    if project_id is None:
        dsn = envelope.headers.get("dsn")
        if isinstance(dsn, str) and dsn.rstrip("/").rsplit("/", 1)[-1].isdigit():
            project_id = int(dsn.rstrip("/").rsplit("/", 1)[-1])
        elif registry.config.projects:
            project_id = registry.config.projects[0].id
        else:
            project_id = 42
    configured = next((p for p in registry.config.projects if p.id == project_id), None)
    key = configured.keys[0] if configured and configured.keys else "-"
    found = registry.resolve(project_id, key)
    if isinstance(found, Denied):
        # Unknown to the config: the org policy is what would apply with accept_unknown.
        return ProjectPolicy(
            project_id, None, registry.org_policy, registry.config.upstream.url, registry.revision
        )
    return found


def dry_run(config: Config, data: bytes, project_id: int | None = None) -> list[ItemReport]:
    registry = PolicyRegistry(config)
    envelope = read_input(data)
    project = _project(registry, project_id, envelope)
    policy = project.policy
    ctx = RequestContext(project_id=project.project_id, public_key="-")
    prepared = policy.prepare(envelope, ctx)
    index_of = {id(item): i for i, item in enumerate(envelope.items)}
    reports: dict[int, ItemReport] = {}
    drops: dict[int, list[Dropped]] = {}
    for drop in prepared.dropped:
        i = index_of[id(drop.work.item)]
        drops.setdefault(i, []).append(drop)
        reports[i] = ItemReport(i, drop.work.type, _drop_decision(drop))
    for work in prepared.kept:
        i = index_of[id(work.item)]
        # A kept item that drops name too: dry-run drops, or parts of it dropped (the
        # buckets of a session aggregate out of the time window).
        notes = [_drop_decision(d, part_of=None if d.dry_run else work) for d in drops.get(i, [])]
        report = ItemReport(i, work.type, "forward" + (f" ({'; '.join(notes)})" if notes else ""))
        reports[i] = report
        if work.event is None:
            continue
        if policy.scrubber is not None:
            for r in policy.scrubber.scrub_event(work.event, work.type):
                report.redactions.append((r.path, r.rule, r.method))
        if policy.fingerprinter is not None and work.type == "event":
            policy.fingerprinter.apply(work.event)
        fp = work.event.get("fingerprint")
        report.fingerprint = fp if isinstance(fp, list) else None
        title = work.event.get("title")
        report.title = title if isinstance(title, str) else None
        report.payload = work.event
    # Non-event items: scrubbed as the relay would, reported per item.
    rest = [w for w in prepared.kept if w.event is None]
    if rest and policy.scrubber is not None:
        by_index = {i: reports[index_of[id(w.item)]] for i, w in enumerate(rest)}
        _scrub_items(
            policy.scrubber, Envelope(dict(envelope.headers), [w.item for w in rest]), by_index
        )
    return [reports[i] for i in sorted(reports)]


def _drop_decision(drop: Dropped, *, part_of: WorkItem | None = None) -> str:
    """What `drop` says: of a whole item, or of a part of the kept item `part_of`."""
    o = drop.outcome
    what = f"{o.kind.value}: {o.reason}" + (f" (rule {o.rule})" if o.rule else "")
    if drop.dry_run:
        return "would drop in enforce mode — " + what
    if part_of is None:
        return "drop — " + what
    unit = "bucket" if part_of.type == "sessions" else "part"
    return f"{o.quantity} {unit}{'' if o.quantity == 1 else 's'} dropped — {what}"


def _scrub_items(scrubber: ScrubStage, probe: Envelope, reports: dict[int, ItemReport]) -> None:
    """Scrub the non-event items of `probe` as the relay would and fill in their reports
    (by index in `probe`): redactions, drops, what was forwarded unread, the payload."""
    items = list(probe.items)
    notes: dict[int, Unread] = {}
    scrub: ScrubOutcome
    if isinstance(scrubber, Scrubber):
        scrub = scrub_envelope(scrubber, probe, notes=notes)
    else:
        scrub = scrubber.scrub_envelope(probe)
    for r in getattr(scrub, "redactions", []):
        if r.item in reports:
            reports[r.item].redactions.append((r.path, r.rule, r.method))
    for d in scrub.dropped:
        note = notes.get(d.index)
        why = f" ({note.why})" if note is not None else ""
        kind = "invalid" if d.reason == Reason.INVALID_PAYLOAD else "filtered"
        reports[d.index].decision = f"drop — {kind}: {d.reason}{why}"
    for i, note in notes.items():
        if note.reason is None:
            reports[i].unread = note.why
    dropped = {d.index for d in scrub.dropped}
    for i, item in enumerate(items):
        if i in dropped:
            # Not scrubbed (it could not be read, or the policy drops it): never shown.
            continue
        show = _show_video if item.type == "replay_video" else _show
        reports[i].payload = show(item.payload)


def _show_video(payload: bytes) -> Any:
    """A replay video's MessagePack map: its event as JSON, the recording and video as sizes."""
    try:
        parts = decode_raw_map(payload, "the replay video")
    except Unreadable:
        return _show(payload)
    shown: dict[str, Any] = {}
    for key, raw in parts.items():
        value = raw_string(raw)
        if value is not None:
            shown[key] = _show(value) if key == "replay_event" else f"<{len(value)} bytes>"
    return shown


def _show(payload: bytes) -> Any:
    try:
        value = orjson.loads(payload)
    except orjson.JSONDecodeError:
        pass
    else:
        # Deeper JSON is shown as its text: orjson writes 255 levels at most.
        if not json_exceeds_depth(payload):
            return value
    text = read_text(payload)
    if text is not None:
        return text.text.encode("utf-8", "replace").decode("utf-8")
    return f"<{len(payload)} bytes of binary data>"


#: Control characters (C0, DEL, C1): a terminal acts on them (escape sequences move the
#: cursor, rewrite lines, set the window title), so none from the input is printed raw.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
#: The same in payload text, whose line breaks and tabs are kept.
_CONTROL_IN_TEXT = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
#: What JSON output carries raw of them (it escapes the C0 ones itself).
_CONTROL_IN_JSON = re.compile(r"[\x7f-\x9f]")


def _escape(match: re.Match[str]) -> str:
    return match.group().encode("unicode_escape").decode("ascii")


def _safe(value: object, pattern: re.Pattern[str] = _CONTROL) -> str:
    """`value` as text to print, its control characters escaped (`\\x1b`, `\\r`)."""
    return pattern.sub(_escape, str(value))


def _json(text: str) -> str:
    """JSON text with the control characters it carries raw (DEL, C1) as `\\u` escapes."""
    return _CONTROL_IN_JSON.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def print_reports(
    reports: list[ItemReport], out: TextIO | None = None, *, as_json: bool = False
) -> None:
    """Print `reports`; whatever comes from the input has its control characters escaped
    (in JSON output as `\\u` escapes), so that no envelope can drive the terminal."""
    if out is None:
        out = sys.stdout  # looked up now, not at import: it may have been replaced since
    if as_json:
        data = [
            {
                "index": r.index,
                "type": r.item_type,
                "decision": r.decision,
                "redactions": [
                    {"path": p, "rule": rule, "method": m} for p, rule, m in r.redactions
                ],
                "fingerprint": r.fingerprint,
                "title": r.title,
                "unread": r.unread,
                "payload": r.payload,
            }
            for r in reports
        ]
        out.write(_json(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode()) + "\n")
        return
    for r in reports:
        out.write(f"item {r.index} ({_safe(r.item_type)}): {_safe(r.decision)}\n")
        if r.unread is not None:
            out.write(f"  WARNING: forwarded unread, its content not scrubbed: {_safe(r.unread)}\n")
        if r.redactions:
            out.write(f"  {len(r.redactions)} redaction(s):\n")
            shown = [(_safe(p), _safe(rule), _safe(m)) for p, rule, m in r.redactions]
            width = max(len(p) for p, _, _ in shown)
            for path, rule, method in shown:
                out.write(f"    {path.ljust(width)}  {rule}  {method}\n")
        if r.fingerprint is not None:
            out.write(f"  fingerprint: {_safe(r.fingerprint)}\n")
        if r.title:
            out.write(f"  title: {_safe(r.title)}\n")
        if r.payload is not None and not r.decision.startswith("drop"):
            body = (
                _safe(r.payload, _CONTROL_IN_TEXT)
                if isinstance(r.payload, str)
                else _json(orjson.dumps(r.payload, option=orjson.OPT_INDENT_2).decode())
            )
            out.write("  scrubbed payload:\n")
            out.write("".join(f"    {line}\n" for line in body.splitlines()))
    unread = sum(1 for r in reports if r.unread is not None)
    if unread:
        out.write(f"WARNING: {unread} item(s) would be forwarded unread (see above)\n")
    out.write("nothing was sent; quotas were not consulted\n")
