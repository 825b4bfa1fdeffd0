"""`compile_scrubber`: merge the org and project sections and compile them once.

Merging: a switch set by the project wins over the org's (validation has made sure it
is not weaker); unset switches take the org's value, then the strict default.
Sensitive and safe fields, pseudonymized fields and PII configs add up; each PII
config keeps its own rule names.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from relay.config.scrubbing import ScrubbingConfig
from relay.processing.scrub import detectors as det
from relay.processing.scrub.rules import Application, compile_pii_config, hash_value
from relay.processing.scrub.schema import EVENT, item_schema
from relay.processing.scrub.selectors import (
    PathSel,
    Selector,
    parse_key_or_selector,
    parse_selector,
)
from relay.processing.scrub.walker import (
    Finding,
    Policy,
    Redaction,
    Walk,
    scrub_string,
)

#: Item types whose payload is an event and may carry `_meta`.
META_ITEM_TYPES = frozenset({"event", "transaction", "feedback", "replay_event"})


def _pick(project: Any, org: Any, default: Any) -> Any:
    if project is not None:
        return project
    if org is not None:
        return org
    return default


def default_entries(
    *, defaults: bool, ip_addresses: bool, emails: bool, secrets: bool, sensitive: list[str]
) -> tuple[tuple[det.Detector, Finding], ...]:
    """The value detectors of the switches, in priority order (earlier wins on overlap)."""
    f = det.FILTERED
    out: list[tuple[det.Detector, Finding]] = []
    if defaults or secrets:
        out.append((det.PEMKEY, Finding("@pemkey:filter", f)))
        out.append((det.URL_PASSWORD, Finding("@urlauth:legacy", f)))
    if secrets:
        out += [(d, Finding(f"@{d.kind}:filter", f)) for d in det.SECRET_TOKENS]
    if defaults or secrets or sensitive:
        words = sensitive
        if not (defaults or secrets):
            assign = det.assignment_detectors(words)[len(det.ASSIGNMENT_KEYWORDS) :]
        else:
            assign = det.assignment_detectors(words)
        out += [(d, Finding("@password:filter", f)) for d in assign]
    if defaults or secrets:
        out += [(d, Finding("@password:filter", f)) for d in det.SESSION_COOKIES]
        out.append((det.QUERY_PASSWORD, Finding("@password:filter", f)))
        out.append((det.BEARER, Finding("@bearer:filter", f)))
    if emails:
        out.append((det.EMAIL, Finding("@email:replace", "[email]")))
        out.append((det.EMAIL_ENCODED, Finding("@email:replace", "[email]")))
    if defaults:
        out.append((det.IBAN, Finding("@iban:filter", f)))
        out.append((det.CREDITCARD, Finding("@creditcard:filter", f)))
        out.append((det.USSSN, Finding("@usssn:filter", f)))
    if ip_addresses:
        out.append((det.IPV4, Finding("@ip:replace", "[ip]")))
        out.append((det.IPV6, Finding("@ip:replace", "[ip]")))
        out.append((det.IPV6_FULL, Finding("@ip:replace", "[ip]")))
    if defaults:
        out += [(d, Finding("@userpath:filter", f)) for d in det.USERPATHS]
    return tuple(out)


def _sha256_hex(key: bytes, value: str) -> str:
    return hmac.new(key, value.encode("utf-8"), hashlib.sha256).hexdigest()


def _did_hash(key: bytes, *cfgs: ScrubbingConfig) -> Callable[[str], str] | None:
    """What a session's flagged `did` becomes: the pseudonymization HMAC-SHA256 with
    `pseudonymize.key`; without one, the `hash` method's HMAC-SHA1 with `vars.hashKey`
    (the project's over the org's). Without either key, None: a digest keyed with nothing
    could be checked against guessed addresses, so the detectors' placeholder stays."""
    if key:
        return functools.partial(_sha256_hex, key)
    hash_key = b""
    for cfg in cfgs:
        found = ((cfg.pii_config or {}).get("vars") or {}).get("hashKey")
        if isinstance(found, str) and found:
            hash_key = found.encode()
    return functools.partial(hash_value, key=hash_key) if hash_key else None


def build_policy(org: ScrubbingConfig | None, project: ScrubbingConfig | None) -> Policy:
    """Merge and compile (raises ValueError on an invalid section)."""
    o = org or ScrubbingConfig()
    p = project or ScrubbingConfig()
    defaults = bool(_pick(p.defaults, o.defaults, True))
    ip_addresses = bool(_pick(p.ip_addresses, o.ip_addresses, True))
    emails = bool(_pick(p.emails, o.emails, True))
    secrets = bool(_pick(p.secrets, o.secrets, True))
    sensitive = list(
        dict.fromkeys(
            f.strip().lower() for f in [*o.sensitive_fields, *p.sensitive_fields] if f.strip()
        )
    )
    safe_keys: set[str] = set()
    safe_selectors: list[Selector] = []
    for text in [*o.safe_fields, *p.safe_fields]:
        sel = parse_key_or_selector(text)
        if isinstance(sel, PathSel) and len(sel.items) == 1 and sel.items[0].kind == "key":
            safe_keys.add(str(sel.items[0].value))
        else:
            safe_selectors.append(sel)
    applications: list[Application] = []
    for cfg in (o, p):
        if cfg.pii_config:
            applications += compile_pii_config(cfg.pii_config)
    pseudo: list[Selector] = []
    key = b""
    for cfg in (o, p):
        if cfg.pseudonymize is not None:
            pseudo += [parse_selector(t) for t in cfg.pseudonymize.fields]
            if cfg.pseudonymize.key is not None and cfg.pseudonymize.key.reveal():
                key = cfg.pseudonymize.key.reveal().encode()
    if pseudo and not key:
        raise ValueError("pseudonymize.fields is set but no pseudonymize.key")
    did_hash = _did_hash(key, o, p)
    sensitive_re = re.compile("|".join(re.escape(s) for s in sensitive)) if sensitive else None
    return Policy(
        defaults=defaults,
        ip_addresses=ip_addresses,
        emails=emails,
        secrets=secrets,
        source_context=str(_pick(p.source_context, o.source_context, "scrub")),
        attachments=str(_pick(p.attachments, o.attachments, "scrub_text")),
        meta=bool(_pick(p.meta, o.meta, True)),
        sensitive=sensitive_re,
        safe_keys=frozenset(safe_keys),
        safe_selectors=tuple(safe_selectors),
        applications=tuple(applications),
        pseudonymize=tuple(pseudo),
        pseudonymize_key=key,
        did_hash=did_hash,
        entries=default_entries(
            defaults=defaults,
            ip_addresses=ip_addresses,
            emails=emails,
            secrets=secrets,
            sensitive=sensitive,
        ),
    )


@dataclass(frozen=True, slots=True)
class DroppedItem:
    """An item the policy removed from the envelope (emit an outcome for it)."""

    index: int
    item: Any
    reason: str


@dataclass
class ScrubReport:
    """What `scrub_envelope` did: redactions (path, rule, method) and dropped items."""

    redactions: list[Redaction] = field(default_factory=list)
    dropped: list[DroppedItem] = field(default_factory=list)
    #: Indexes of items whose payload was rewritten.
    changed_items: list[int] = field(default_factory=list)
    header_changed: bool = False
    #: Whether `redactions` is filled (`report=True`).
    want: bool = True


class Scrubber:
    """A compiled scrubbing policy. Build with `compile_scrubber`; reuse for every event."""

    def __init__(self, policy: Policy) -> None:
        from relay.processing.scrub.items import names_an_attachment

        self.policy = policy
        #: Rules rewrite binary attachments (see `items.names_an_attachment`).
        self.rewrites_binaries = names_an_attachment(policy.applications)

    @property
    def strips_client_ip(self) -> bool:
        """True when the client's address must not be passed upstream (no X-Forwarded-For)."""
        return self.policy.ip_addresses

    @property
    def attachments(self) -> str:
        return self.policy.attachments

    @property
    def noop(self) -> bool:
        """True when every switch is off: no item, string or header can change.

        Only an org that turns off `defaults`, `ip_addresses`, `emails` and `secrets`, sets
        no sensitive fields, rules or pseudonymization, and neither drops source context
        nor attachments gets this; the ingest path then skips the scrubber entirely.
        """
        p = self.policy
        return not (
            p.defaults
            or p.ip_addresses
            or p.emails
            or p.secrets
            or p.sensitive is not None
            or p.applications
            or p.pseudonymize
            or p.entries
            or p.source_context == "drop"
            or p.attachments == "drop"
        )

    def scrub_event(
        self, event: dict[str, Any], item_type: str = "event", *, report: bool = True
    ) -> list[Redaction]:
        """Scrub a parsed payload of `item_type` in place; return what changed.

        `report=False` skips building the redaction list (returns `[]`); the payload and
        its `_meta` remarks come out the same. The objects under `_meta` may be shared
        with other payloads scrubbed by this scrubber: read or serialize them, do not
        change them in place.
        """
        if report:
            return self.walk_payload(event, item_type, report=True)[1]
        # The ingest path: `walk_payload` inlined, nothing to report.
        policy = self.policy
        node = EVENT if item_type == "event" else item_schema(item_type, event)
        meta = policy.meta and item_type in META_ITEM_TYPES and isinstance(event, dict)
        walk = Walk(policy, meta, False)
        walk.run(event, node)
        if meta:
            walk.write_meta(event)
        return []

    def scrub_payload(
        self, payload: Any, item_type: str, *, item: int | None = None, report: bool = True
    ) -> list[Redaction]:
        return self.walk_payload(payload, item_type, item=item, report=report)[1]

    def walk_payload(
        self, payload: Any, item_type: str, *, item: int | None = None, report: bool = True
    ) -> tuple[int, list[Redaction]]:
        """`scrub_payload`, also returning how many values changed."""
        node = EVENT if item_type == "event" else item_schema(item_type, payload)
        meta = self.policy.meta and item_type in META_ITEM_TYPES and isinstance(payload, dict)
        walk = Walk(self.policy, meta, report)
        walk.run(payload, node)
        if meta and isinstance(payload, dict):
            walk.write_meta(payload)
        if not report:
            return walk.changes, []
        return walk.changes, [
            Redaction(path, rule, method, item, item_type)
            for path, rule, method in walk.report_rows()
        ]

    def scrub_text(self, text: str) -> str:
        """Value detectors only, for free text (log lines, shadow tags, text attachments)."""
        return scrub_string(self.policy, text)[0]

    def scrub_text_report(self, text: str) -> tuple[str, list[tuple[str, tuple[int, int]]]]:
        """`scrub_text`, also returning (rule, range in the result) per replacement."""
        return scrub_string(self.policy, text)

    def scrub_envelope(
        self, envelope: Any, *, skip: frozenset[int] = frozenset(), report: bool = True
    ) -> ScrubReport:
        """Scrub every item and the header of `envelope` in place (see `items.py`).

        `skip`: indexes of items already scrubbed through `scrub_event`.
        `report=False` leaves `ScrubReport.redactions` empty (dropped and changed items
        are still reported).
        """
        from relay.processing.scrub.items import scrub_envelope

        return scrub_envelope(self, envelope, skip, report=report)


def compile_scrubber(
    org: ScrubbingConfig | None, project: ScrubbingConfig | None = None
) -> Scrubber:
    """The merged, compiled policy of an org section and an optional project section.

    `compile_scrubber(None)` is the strict default policy. Sections are assumed to be
    validated (`validate_scrubbing`, `validate_scrubbing_override`); anything invalid
    raises ValueError.
    """
    return Scrubber(build_policy(org, project))
