"""The walker: one pass over a parsed payload, applying a compiled `Policy` in place.

Per value, in order:

1. removal of IP fields (`ip_addresses`), filtering of denylisted keys (`defaults`,
   `sensitive_fields`), cookie values; all decided per key once and cached;
2. pseudonymization of selected fields (keyed HMAC-SHA256);
3. Advanced Data Scrubbing applications whose selector matches the path;
4. strings that may hold PII are queued; after the walk ALL queued strings are
   joined and scanned once by the value detectors (`detectors.scan`), and the
   hits are written back.

The path is kept as parent links and built only for values that change, for the
report and for `_meta` remarks (`{"": {"rem": [[rule, kind, start, end]], "len": n}}`,
as Sentry writes them). Selector state (keys and value types) is tracked only when
the policy has selectors at all.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from relay.processing.scrub import detectors as det
from relay.processing.scrub import schema as sch
from relay.processing.scrub.rules import REMARK, Application, Rule, merge_spans, rewrite
from relay.processing.scrub.selectors import (
    PII_FALSE,
    PII_TRUE,
    Selector,
    State,
    last_keys,
    matches,
)

FILTERED = det.FILTERED

#: Keys whose value is filtered when `defaults` is on (substring, case-insensitive).
DENY_SUBSTRING = re.compile(
    r"password|secret|passwd|api[-_]?key|auth|credentials|mysql_pwd|private[-_]?key|token"
)
#: Keys filtered when `defaults` is on (exact, case-insensitive, `-` read as `_`).
DENY_EXACT = frozenset(
    {
        "otp",
        "two_factor",
        "cookie",
        "cookies",
        "set_cookie",
        "session",
        "sessionid",
        "session_id",
        "sessid",
        "sid",
        "connect.sid",
        "phpsessid",
        "jsessionid",
        "aspsessionid",
        "asp.net_sessionid",
        "sentrysid",
        "__session",
        "_session",
        "user_session",
        "aiohttp_session",
        "symfony",
        "fasthttpsessionid",
        "mysession",
        "irissessionid",
        "_vercel_jwt",
        "csrf",
        "xsrf",
        "_csrf",
        "_xsrf",
        "_csrf_token",
        "fastcsrf",
        "_iris_csrf",
        "x_csrftoken",
    }
)
#: Keys holding the client's address, removed when `ip_addresses` is on.
IP_KEYS = frozenset(
    {
        "ip_address",
        "remote_addr",
        "client_ip",
        "x_forwarded_for",
        "x_real_ip",
        "forwarded",
        "cf_connecting_ip",
        "true_client_ip",
        "client.address",
        "user.ip",
        "user.ip_address",
    }
)

_NONE, _FILTER, _IP, _SAFE = 0, 1, 2, 3
_MAX_KEY_CACHE = 20000


@dataclass(frozen=True, slots=True)
class Redaction:
    """One change: where (JSON path), by which rule, how. Never the original value."""

    path: str
    rule: str
    method: str
    #: Index of the envelope item (None: the envelope header or a bare event).
    item: int | None = None
    item_type: str | None = None


@dataclass(frozen=True, slots=True)
class Finding:
    """What a default detector hit stands for."""

    rule: str
    replacement: str


@dataclass
class Policy:
    """Everything the walker needs, compiled once (see `relay.processing.scrub.compile`)."""

    defaults: bool = True
    ip_addresses: bool = True
    emails: bool = True
    secrets: bool = True
    source_context: str = "scrub"
    attachments: str = "scrub_text"
    meta: bool = True
    sensitive: re.Pattern[str] | None = None
    safe_keys: frozenset[str] = frozenset()
    safe_selectors: tuple[Selector, ...] = ()
    applications: tuple[Application, ...] = ()
    pseudonymize: tuple[Selector, ...] = ()
    pseudonymize_key: bytes = b""
    entries: tuple[tuple[det.Detector, Finding], ...] = ()
    _key_cache: dict[str, int] = field(default_factory=dict, repr=False)
    _app_keys: tuple[frozenset[str] | None, ...] = field(default=(), repr=False)
    scanner: det.Scanner[Finding] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._app_keys = tuple(last_keys(a.selector) for a in self.applications)
        self.scanner = det.Scanner(self.entries)

    @property
    def uses_selectors(self) -> bool:
        return bool(self.applications or self.pseudonymize or self.safe_selectors)

    def key_verdict(self, key: str) -> int:
        cache = self._key_cache
        found = cache.get(key)
        if found is not None:
            return found
        low = key.lower()
        norm = low.replace("-", "_")
        verdict = _NONE
        if self.ip_addresses and norm in IP_KEYS:
            verdict = _IP
        elif low in self.safe_keys:
            verdict = _SAFE
        elif (self.defaults and (norm in DENY_EXACT or DENY_SUBSTRING.search(low))) or (
            self.sensitive is not None and self.sensitive.search(low)
        ):
            verdict = _FILTER
        if len(cache) > _MAX_KEY_CACHE:
            cache.clear()
        cache[key] = verdict
        return verdict


#: A container's place: (parent ref, its key or index in the parent).
Ref = tuple[Any, str | int] | None


def _path_of(ref: Ref, last: str | int | None = None) -> list[str | int]:
    out: list[str | int] = [] if last is None else [last]
    while ref is not None:
        ref, seg = ref
        out.append(seg)
    out.reverse()
    return out


class Walk:
    """One walk over one payload (not thread-safe; create one per payload)."""

    def __init__(self, policy: Policy, *, meta: bool) -> None:
        self.p = policy
        self.meta = meta
        self.redactions: list[tuple[list[str | int], str, str]] = []
        self.remarks: dict[tuple[str | int, ...], tuple[list[list[Any]], int | None]] = {}
        self.texts: list[str] = []
        self.slots: list[tuple[Any, str | int, Ref]] = []
        self.slow = policy.uses_selectors
        self.states: list[State] = []
        self.source_mode = policy.source_context
        self.cookies = policy.defaults

    # --- recording ---------------------------------------------------------------------------

    def _record(
        self,
        path: list[str | int],
        rule: str,
        method: str,
        rng: tuple[int, int] | None,
        orig_len: int | None,
    ) -> None:
        self.redactions.append((path, rule, method))
        if not self.meta:
            return
        key = tuple(path)
        rem: list[Any] = [rule, REMARK.get(method, "s")]
        if rng is not None:
            rem += [rng[0], rng[1]]
        entry = self.remarks.get(key)
        if entry is None:
            self.remarks[key] = ([rem], orig_len)
        else:
            entry[0].append(rem)

    def _replace_whole(
        self, container: Any, ckey: str | int, value: str, ref: Ref, rule: str, text: str
    ) -> None:
        container[ckey] = text
        self._record(_path_of(ref, ckey), rule, "replace", (0, len(text)), len(value))

    def _remove(self, container: Any, ckey: str | int, ref: Ref, rule: str) -> None:
        container[ckey] = None
        self._record(_path_of(ref, ckey), rule, "remove", None, None)

    # --- walking -------------------------------------------------------------------------------

    def run(self, root: Any, node: sch.Node) -> None:
        if isinstance(root, dict):
            self._dict(root, node, None)
        elif isinstance(root, list):
            self._list(root, node, None)
        self._scan_queued()

    def _dict(self, d: dict[str, Any], node: sch.Node, ref: Ref) -> None:
        if node.flags & sch.ATTRS:
            self._attrs(d, ref)
            return
        children = node.children
        other = node.other if node.other is not None else node
        key_verdict = self.p.key_verdict
        slow = self.slow
        drop: list[str] | None = None
        texts = self.texts
        slots = self.slots
        for k, v in d.items():
            child = children.get(k, other)
            flags = child.flags
            pii = child.pii
            if flags:
                if flags & sch.SKIP:
                    continue
                if flags & sch.SOURCE:
                    if self.source_mode == "drop":
                        if drop is None:
                            drop = []
                        drop.append(k)
                        continue
                    if self.source_mode == "keep":
                        continue
            if pii == PII_FALSE and not (flags & sch.IP_FIELD):
                if type(v) is dict or type(v) is list:
                    self._descend(d, k, v, child, ref, k)
                continue
            if not slow and not flags and pii == PII_TRUE:
                tv = type(v)
                if tv is str:
                    if key_verdict(k) == _NONE:
                        if len(v) > 2:
                            texts.append(v)
                            slots.append((d, k, ref))
                        continue
                elif tv is dict:
                    if key_verdict(k) == _NONE:
                        self._dict(v, child, (ref, k))
                        continue
                elif tv is list:
                    if key_verdict(k) == _NONE:
                        self._list(v, child, (ref, k))
                        continue
                elif (tv is int or tv is float or tv is bool or v is None) and (
                    tv is bool or v is None or key_verdict(k) == _NONE
                ):
                    continue
            self._value(d, k, v, child, ref, k, k if type(k) is str else None)
        if drop:
            for k in drop:
                del d[k]
                self._record(_path_of(ref, k), "@source_context:drop", "remove", None, None)

    def _list(self, lst: list[Any], node: sch.Node, ref: Ref) -> None:
        item_node = node.item()
        pairs = _is_pairs(lst)
        for i, v in enumerate(lst):
            if pairs:
                key = v[0]
                self._value(v, 1, v[1], item_node, (ref, i), key, key)
                continue
            if (
                type(v) is dict
                and len(v) == 2
                and type(v.get("key")) is str
                and "value" in v
                and item_node.pii != PII_FALSE
            ):
                key = v["key"]
                self._value(v, "value", v["value"], item_node, (ref, i), key, key)
                continue
            if (
                type(v) is str
                and not self.slow
                and item_node.pii == PII_TRUE
                and not item_node.flags
            ):
                if len(v) > 2:
                    self.texts.append(v)
                    self.slots.append((lst, i, ref))
                continue
            self._value(lst, i, v, item_node, ref, i, None)

    def _attrs(self, d: dict[str, Any], ref: Ref) -> None:
        for name, attr in d.items():
            if type(attr) is dict and "value" in attr:
                verdict = self.p.key_verdict(name) if type(name) is str else _NONE
                if verdict == _IP:
                    self._remove(d, name, ref, "@anything:remove")
                    continue
                if self.slow:
                    self.states.append((name, sch.ANY.typesets[dict]))
                self._value(attr, "value", attr["value"], sch.ANY, (ref, name), "value", name)
                if self.slow:
                    self.states.pop()
            else:
                self._value(d, name, attr, sch.ANY, ref, name, name)

    def _value(
        self,
        container: Any,
        ckey: str | int,
        value: Any,
        node: sch.Node,
        ref: Ref,
        seg: str | int,
        key: str | None,
    ) -> None:
        """Process one value; `ckey` is where it lives, `seg` its selector segment, `key` the
        name the denylist sees (a pair's or attribute's name)."""
        tv = type(value)
        flags = node.flags
        pii = node.pii
        p = self.p
        if pii == PII_FALSE and not (flags & sch.IP_FIELD):
            if tv is dict or tv is list:
                self._descend(container, ckey, value, node, ref, seg)
            return
        if value is None:
            return
        if flags & sch.SOURCE and self.source_mode == "keep":
            return
        verdict = p.key_verdict(key) if key is not None else _NONE
        if p.ip_addresses and (verdict == _IP or flags & sch.IP_FIELD):
            self._remove(container, ckey, ref, "@anything:remove")
            return
        if flags & sch.COOKIES and self.cookies:
            self._cookies(container, ckey, value, ref)
            return
        if self.slow:
            self.states.append((seg, node.typesets.get(tv, node.types)))
            try:
                if self._selected(container, ckey, value, node, ref, key, verdict):
                    return
            finally:
                self.states.pop()
        if verdict == _FILTER and pii == PII_TRUE and tv is not bool:
            if tv is str:
                self._replace_whole(container, ckey, value, ref, "@password:filter", FILTERED)
            else:
                self._remove(container, ckey, ref, "@password:filter")
            return
        if tv is str:
            if pii == PII_TRUE and verdict != _SAFE and len(value) > 2:
                self.texts.append(value)
                self.slots.append((container, ckey, ref))
            return
        if tv is dict or tv is list:
            self._descend(container, ckey, value, node, ref, seg)

    def _descend(
        self, container: Any, ckey: str | int, value: Any, node: sch.Node, ref: Ref, seg: str | int
    ) -> None:
        slow = self.slow
        if slow:
            self.states.append((seg, node.typesets[type(value)]))
        if type(value) is dict:
            self._dict(value, node, (ref, ckey))
        else:
            self._list(value, node, (ref, ckey))
        if slow:
            self.states.pop()

    def _cookies(self, container: Any, ckey: str | int, value: Any, ref: Ref) -> None:
        if isinstance(value, str):
            if value:
                self._replace_whole(container, ckey, value, ref, "@anything:filter", FILTERED)
            return
        inner: Ref = (ref, ckey)
        if isinstance(value, dict):
            for k, v in value.items():
                if isinstance(v, str) and v:
                    self._replace_whole(value, k, v, inner, "@anything:filter", FILTERED)
                elif v is not None:
                    self._remove(value, k, inner, "@anything:filter")
        elif isinstance(value, list):
            for i, v in enumerate(value):
                if isinstance(v, list) and len(v) == 2:
                    if isinstance(v[1], str) and v[1]:
                        self._replace_whole(v, 1, v[1], (inner, i), "@anything:filter", FILTERED)
                else:
                    self._remove(value, i, inner, "@anything:filter")

    # --- selectors ------------------------------------------------------------------------------

    def _selected(
        self,
        container: Any,
        ckey: str | int,
        value: Any,
        node: sch.Node,
        ref: Ref,
        key: str | None,
        verdict: int,
    ) -> bool:
        """Pseudonymization and PII-config rules; True when the value is finished."""
        p = self.p
        states = self.states
        pii = node.pii
        tv = type(value)
        if p.pseudonymize and (tv is str or tv is int or tv is float) and tv is not bool:
            for sel in p.pseudonymize:
                if matches(sel, states, pii):
                    digest = hmac.new(
                        p.pseudonymize_key, str(value).encode("utf-8"), hashlib.sha256
                    ).hexdigest()
                    container[ckey] = digest
                    orig = len(value) if tv is str else None
                    self._record(
                        _path_of(ref, ckey), "@pseudonymize", "hash", (0, len(digest)), orig
                    )
                    return True
        if p.safe_selectors and pii == PII_TRUE:
            for sel in p.safe_selectors:
                if matches(sel, states, pii):
                    verdict = _SAFE
                    break
        if verdict == _SAFE:
            if tv is dict or tv is list:
                self._descend_safe(container, ckey, value, node, ref)
            return True
        if not p.applications:
            return False
        seg = states[-1][0]
        low = seg.lower() if isinstance(seg, str) else None
        rules: list[Rule] = []
        for app, keys in zip(p.applications, p._app_keys, strict=True):
            if keys is not None and low not in keys:
                continue
            if matches(app.selector, states, pii):
                rules.extend(app.rules)
        if not rules:
            return False
        return self._apply_rules(container, ckey, value, ref, key, rules)

    def _descend_safe(
        self, container: Any, ckey: str | int, value: Any, node: sch.Node, ref: Ref
    ) -> None:
        """A safe container's children are still walked (Sentry exempts the node only)."""
        seg = self.states.pop()
        try:
            self._descend(container, ckey, value, node, ref, seg[0])
        finally:
            self.states.append(seg)

    def _apply_rules(
        self,
        container: Any,
        ckey: str | int,
        value: Any,
        ref: Ref,
        key: str | None,
        rules: Sequence[Rule],
    ) -> bool:
        if not isinstance(value, str):
            for rule in rules:
                if rule.removes_non_string(key) or rule.type == "anything":
                    self._remove(container, ckey, ref, rule.origin)
                    return True
            return False
        current = value
        changed = False
        for rule in rules:
            whole = rule.type == "anything" or rule.applies_to_key(key)
            if whole and rule.method == "remove":
                self._remove(container, ckey, ref, rule.origin)
                return True
            spans = [(0, len(current))] if whole else rule.spans(current)
            if not spans:
                continue
            new, ranges = rewrite(current, merge_spans(spans), rule.redaction.substitute)
            path = _path_of(ref, ckey)
            for rng in ranges:
                self._record(path, rule.origin, rule.method, rng, len(value))
            current = new
            changed = True
        if changed:
            container[ckey] = current
        return False

    # --- value detectors ------------------------------------------------------------------------

    def _scan_queued(self) -> None:
        texts = self.texts
        entries = self.p.entries
        if not texts or not entries:
            return
        joined = det.SEPARATOR.join(texts)
        hits = self.p.scanner.scan(joined)
        if not hits:
            return
        starts: list[int] = []
        pos = 0
        for t in texts:
            starts.append(pos)
            pos += len(t) + 1
        by_slot: dict[int, list[det.Hit[Finding]]] = {}
        for h in hits:
            i = bisect_right(starts, h.start) - 1
            by_slot.setdefault(i, []).append(h)
        for i, slot_hits in by_slot.items():
            container, ckey, ref = self.slots[i]
            original = texts[i]
            base = starts[i]
            parts: list[str] = []
            pos = 0
            out_len = 0
            path = _path_of(ref, ckey)
            for h in slot_hits:
                s, e = h.start - base, h.end - base
                chunk = original[pos:s]
                parts.append(chunk)
                out_len += len(chunk)
                rep = h.what.replacement
                parts.append(rep)
                self._record(
                    path, h.what.rule, "replace", (out_len, out_len + len(rep)), len(original)
                )
                out_len += len(rep)
                pos = e
            parts.append(original[pos:])
            container[ckey] = "".join(parts)

    # --- results --------------------------------------------------------------------------------

    def write_meta(self, root: dict[str, Any]) -> None:
        """Merge the remarks into `root["_meta"]` as Sentry writes them."""
        if not self.remarks:
            return
        meta = root.get("_meta")
        if not isinstance(meta, dict):
            meta = {}
            root["_meta"] = meta
        for path, (rems, orig_len) in self.remarks.items():
            node = meta
            for seg in path:
                nxt = node.get(str(seg))
                if not isinstance(nxt, dict):
                    nxt = {}
                    node[str(seg)] = nxt
                node = nxt
            entry = node.get("")
            if not isinstance(entry, dict):
                entry = {}
                node[""] = entry
            existing = entry.get("rem")
            if isinstance(existing, list):
                existing.extend(rems)
            else:
                entry["rem"] = rems
            if orig_len is not None and "len" not in entry:
                entry["len"] = orig_len


def _is_pairs(lst: list[Any]) -> bool:
    return bool(lst) and all(type(v) is list and len(v) == 2 and type(v[0]) is str for v in lst)


def scrub_string(policy: Policy, text: str) -> tuple[str, list[tuple[str, tuple[int, int]]]]:
    """Value detectors only, on one string: the new string and (rule, range) per change."""
    hits = policy.scanner.scan(text)
    if not hits:
        return text, []
    parts: list[str] = []
    changes: list[tuple[str, tuple[int, int]]] = []
    pos = 0
    out_len = 0
    for h in hits:
        chunk = text[pos : h.start]
        parts.append(chunk)
        out_len += len(chunk)
        rep = h.what.replacement
        parts.append(rep)
        changes.append((h.what.rule, (out_len, out_len + len(rep))))
        out_len += len(rep)
        pos = h.end
    parts.append(text[pos:])
    return "".join(parts), changes


def path_text(path: Sequence[str | int]) -> str:
    return ".".join(map(str, path))
