"""The walker: one pass over a parsed payload, applying a compiled `Policy` in place.

Per value, in order:

1. removal of IP fields (`ip_addresses`), filtering of denylisted keys (`defaults`,
   `sensitive_fields`), cookie values; all decided per key once and cached;
2. pseudonymization of selected fields (keyed HMAC-SHA256);
3. Advanced Data Scrubbing applications whose selector matches the path;
4. strings that may hold PII are looked up in the policy's `ScanCache`; strings not
   seen before are queued, and after the walk they are joined and scanned once by the
   value detectors (`detectors.Scanner`) and their results cached. All detector
   results are then written back in document order.

Subtrees the schema marks dead (never PII, no flags below) are not entered. The path
is kept as parent links and built only for values that change, and only when the
report or `_meta` remarks (`{"": {"rem": [[rule, kind, start, end]], "len": n}}`, as
Sentry writes them) need it. Selector state (keys and value types) is tracked only
when the policy has selectors at all.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from relay.processing.scrub import detectors as det
from relay.processing.scrub import schema as sch
from relay.processing.scrub.cache import Change, ScanCache, ScanResult
from relay.processing.scrub.rules import REMARK, Application, Rule, merge_spans, rewrite
from relay.processing.scrub.selectors import (
    PII_FALSE,
    PII_MAYBE,
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
#: Stands for `_DEAD` in `Policy._fast_plans` (never walked).
_SKIP_NODE = sch.Node()
_DEAD, _FALSE, _FAST, _SLOW, _MAYBE, _ATTRS = 0, 1, 2, 3, 4, 5
_MAX_KEY_CACHE = 20000
_MAX_LEAVES = 4096


class Redaction(NamedTuple):
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
    #: Per schema node: key -> (what the walker does with it, child node); see `plan`.
    _plans: dict[sch.Node, dict[str, tuple[int, sch.Node]]] = field(
        default_factory=dict, repr=False
    )
    #: The `_FAST` and `_DEAD` entries of `_plans` alone: key -> child node, or
    #: `_SKIP_NODE` for `_DEAD`.
    _fast_plans: dict[sch.Node, dict[str, sch.Node]] = field(default_factory=dict, repr=False)
    #: Per schema node: its (`_fast_plans`, `_plans`) tables, made on first use.
    _tables: dict[sch.Node, tuple[dict[str, sch.Node], dict[str, tuple[int, sch.Node]]]] = field(
        default_factory=dict, repr=False
    )
    _plan_size: int = field(default=0, repr=False)
    _app_keys: tuple[frozenset[str] | None, ...] = field(default=(), repr=False)
    #: `_meta` value objects of `Walk._record`, shared between payloads (never mutated).
    _leaves: dict[tuple[Any, ...], dict[str, Any]] = field(default_factory=dict, repr=False)
    scanner: det.Scanner[Finding] = field(init=False, repr=False)
    #: What every `Walk` of this policy starts from (see `Walk.__init__`).
    _walk_setup: tuple[Any, ...] = field(init=False, repr=False)
    #: Detector results per string, for this policy only.
    cache: ScanCache = field(default_factory=ScanCache, repr=False)

    def __post_init__(self) -> None:
        self._app_keys = tuple(last_keys(a.selector) for a in self.applications)
        self.scanner = det.Scanner(self.entries)
        self._walk_setup = (
            self.uses_selectors,
            self.source_context,
            self.defaults,
            bool(self.entries),
            self._tables,
            self._key_cache,
            ~sch.SOURCE if self.source_context == "scrub" else -1,
        )

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

    def tables(self, node: sch.Node) -> tuple[dict[str, sch.Node], dict[str, tuple[int, sch.Node]]]:
        """The plan tables of `node` (`_fast_plans`, `_plans`), made as needed."""
        found = (self._fast_plans.setdefault(node, {}), self._plans.setdefault(node, {}))
        self._tables[node] = found
        return found

    def plan(self, node: sch.Node, key: str) -> tuple[int, sch.Node]:
        """What the walker does with `key` of an object at `node` (memoized per node).

        `_DEAD`: nothing; `_FALSE`: never PII itself, enter containers; `_FAST`: PII, no
        flags, no selectors, key not denylisted: queue strings, enter containers;
        `_MAYBE`: PII "maybe", no flags, no selectors, not an IP key: only default rules
        apply, which leave the value itself alone, so only containers are entered;
        `_ATTRS`: an attributes object under a key that is not denylisted, no
        selectors: an object value goes straight to the attributes walk;
        `_SLOW`: anything else (full per-value processing).
        """
        children = node.children
        child = children.get(key)
        if child is None:
            child = node.other if node.other is not None else node
        flags = child.flags
        if self.source_context == "scrub":
            flags &= ~sch.SOURCE
        if child.dead:
            code = _DEAD
        elif (
            flags == sch.ATTRS
            and not self.uses_selectors
            and type(key) is str
            and self.key_verdict(key) == _NONE
        ):
            code = _ATTRS
        elif flags:
            code = _SLOW
        elif child.pii == PII_FALSE:
            code = _FALSE
        elif self.uses_selectors or type(key) is not str:
            code = _SLOW
        elif child.pii == PII_TRUE and self.key_verdict(key) == _NONE:
            code = _FAST
        elif child.pii == PII_MAYBE and not (self.ip_addresses and self.key_verdict(key) == _IP):
            code = _MAYBE
        else:
            code = _SLOW
        plans = self._plans.get(node)
        if plans is None or self._plan_size > _MAX_KEY_CACHE:
            if self._plan_size > _MAX_KEY_CACHE:
                self._plans.clear()
                self._fast_plans.clear()
                self._tables.clear()
                self._plan_size = 0
            plans = self._plans.setdefault(node, {})
        found = (code, child)
        plans[key] = found
        if code == _FAST:
            self._fast_plans.setdefault(node, {})[key] = child
        elif code == _DEAD:
            self._fast_plans.setdefault(node, {})[key] = _SKIP_NODE
        self._plan_size += 1
        return found


#: A container's place: [parent ref, its key or index in the parent, its `_meta` object
#: once the walk has made one]; None for the root. One per container visited.
Ref = list[Any] | None

#: Stand-ins for lists a walk never fills (no report; no selectors): never appended to.
_NO_ROWS: list[Any] = []
_NO_STATES: list[State] = []

#: `ScanCache` lookups: the string has not been scanned yet.
_MISS: Any = object()


def _never_scan(text: str, default: Any) -> None:
    """Cache lookup of a policy without value detectors: every string is clean."""
    return None


class Walk:
    """One walk over one payload (not thread-safe; create one per payload).

    Parameters:
        policy: the compiled policy.
        meta: collect `_meta` remarks (write them with `write_meta`).
        report: collect `redactions` (path, rule, method) for the report.
    """

    __slots__ = (
        "_cget",
        "_kcache",
        "_tables",
        "changes",
        "cookies",
        "flag_mask",
        "meta",
        "p",
        "redactions",
        "remarks",
        "report",
        "scan",
        "slots",
        "slow",
        "source_mode",
        "states",
        "track",
    )

    def __init__(self, policy: Policy, *, meta: bool, report: bool = True) -> None:
        self.p = policy
        self.meta = meta
        self.report = report
        self.track = meta or report
        #: How many values were changed or removed.
        self.changes = 0
        #: (container ref, key, rule, method) per change, when `report`.
        self.redactions: list[tuple[Ref, str | int, str, str]] = [] if report else _NO_ROWS
        #: `_meta` remarks made by this walk, as a tree shaped like `_meta`, when `meta`.
        self.remarks: dict[str, Any] = {}
        #: Strings for the value detectors: (container, key, ref, text, result or _MISS).
        self.slots: list[tuple[Any, str | int, Ref, str, Any]] = []
        #: `flag_mask`: flags that need the full per-value path (source context is plain
        #: text when it is scrubbed).
        (
            self.slow,
            self.source_mode,
            self.cookies,
            self.scan,
            self._tables,
            self._kcache,
            self.flag_mask,
        ) = policy._walk_setup
        #: Selector state per level (only when the policy has selectors).
        self.states: list[State] = [] if self.slow else _NO_STATES
        self._cget = policy.cache.data.get if self.scan else _never_scan

    # --- recording ---------------------------------------------------------------------------

    def _record(
        self,
        ref: Ref,
        ckey: str | int,
        rule: str,
        method: str,
        rng: tuple[int, int] | None,
        orig_len: int | None,
    ) -> None:
        """Note a change of the value at `ckey` in the container at `ref`."""
        if self.report:
            self.redactions.append((ref, ckey, rule, method))
        if not self.meta:
            return
        memo = self.p._leaves
        mkey = (rule, method, rng, orig_len)
        leaf = memo.get(mkey)
        if leaf is None:
            rem: list[Any] = [rule, REMARK.get(method, "s")]
            if rng is not None:
                rem += [rng[0], rng[1]]
            entry: dict[str, Any] = {"rem": [rem]}
            if orig_len is not None:
                entry["len"] = orig_len
            leaf = {"": entry}
            if len(memo) > _MAX_LEAVES:
                memo.clear()
            memo[mkey] = leaf
        if ref is None:
            node = self.remarks
        else:
            node = ref[2]
            if node is None:
                node = self._meta_node(ref)
        name = ckey if type(ckey) is str else str(ckey)
        if name in node:
            _put_leaf(node, name, leaf)
        else:
            node[name] = leaf

    def _meta_node(self, ref: list[Any]) -> dict[str, Any]:
        """The object of `remarks` for the container at `ref`, created as needed."""
        parent = ref[0]
        if parent is None:
            above: dict[str, Any] = self.remarks
        else:
            above = parent[2]
            if above is None:
                above = self._meta_node(parent)
        seg = ref[1]
        name = seg if type(seg) is str else str(seg)
        node = above.get(name)
        if not isinstance(node, dict):
            node = above[name] = {}
        ref[2] = node
        return node

    def _replace_whole(
        self, container: Any, ckey: str | int, value: str, ref: Ref, rule: str, text: str
    ) -> None:
        container[ckey] = text
        self.changes += 1
        if self.track:
            self._record(ref, ckey, rule, "replace", (0, len(text)), len(value))

    def _remove(self, container: Any, ckey: str | int, ref: Ref, rule: str) -> None:
        container[ckey] = None
        self.changes += 1
        if self.track:
            self._record(ref, ckey, rule, "remove", None, None)

    def report_rows(self) -> list[tuple[str, str, str]]:
        """The redactions as (path text, rule, method), in the order they were made."""
        texts: dict[int, str] = {id(None): ""}
        out = []
        for ref, ckey, rule, method in self.redactions:
            prefix = texts.get(id(ref))
            if prefix is None:
                prefix = _ref_text(texts, ref)
            out.append((f"{prefix}{ckey}", rule, method))
        return out

    # --- walking -------------------------------------------------------------------------------

    def run(self, root: Any, node: sch.Node) -> None:
        if isinstance(root, dict):
            if self.meta:
                # Remarks go straight into a `_meta` the payload brings, when the walk
                # never enters it.
                have = root.get("_meta")
                if type(have) is dict:
                    skip = node.children.get("_meta")
                    if skip is not None and skip.dead:
                        self.remarks = have
            self._dict(root, node, None)
        elif isinstance(root, list):
            self._list(root, node, None)
        self._scan_queued()

    def _dict(self, d: dict[str, Any], node: sch.Node, ref: Ref) -> None:
        if node.flags & sch.ATTRS:
            self._attrs(d, ref)
            return
        tables = self._tables.get(node)
        if tables is None:
            tables = self.p.tables(node)
        fast, plans = tables
        live = node.live
        pairs = d.items() if live is None else [(k, d[k]) for k in live if k in d]
        cget = self._cget
        slots = self.slots
        drop: list[str] | None = None
        for k, v in pairs:
            child = fast.get(k)
            if child is not None:
                # `_FAST` (or `_DEAD`), the common case.
                if child is _SKIP_NODE:
                    continue
                tv = type(v)
                if tv is str:
                    if len(v) > 2:
                        result = cget(v, _MISS)
                        if result is not None:
                            slots.append((d, k, ref, v, result))
                elif tv is dict:
                    self._dict(v, child, [ref, k, None])
                elif tv is list:
                    self._list(v, child, [ref, k, None])
                continue
            found = plans.get(k)
            if found is None:
                found = self.p.plan(node, k)
            code, child = found
            if code == _FAST:
                tv = type(v)
                if tv is str:
                    if len(v) > 2:
                        result = cget(v, _MISS)
                        if result is not None:
                            slots.append((d, k, ref, v, result))
                elif tv is dict:
                    self._dict(v, child, [ref, k, None])
                elif tv is list:
                    self._list(v, child, [ref, k, None])
                continue
            if code == _DEAD:
                continue
            if code == _MAYBE and type(v) is not dict and type(v) is not list:
                continue
            if code == _FALSE:
                if type(v) is dict or type(v) is list:
                    self._descend(d, k, v, child, ref, k)
                continue
            if code == _ATTRS and type(v) is dict:
                self._attrs(v, [ref, k, None])
                continue
            flags = child.flags
            if flags & sch.SOURCE:
                if self.source_mode == "drop":
                    if drop is None:
                        drop = []
                    drop.append(k)
                    continue
                if self.source_mode == "keep":
                    continue
            if child.pii == PII_FALSE and not (flags & sch.IP_FIELD):
                if type(v) is dict or type(v) is list:
                    self._descend(d, k, v, child, ref, k)
                continue
            self._value(d, k, v, child, ref, k, k if type(k) is str else None)
        if drop:
            for k in drop:
                del d[k]
                self.changes += 1
                if self.track:
                    self._record(ref, k, "@source_context:drop", "remove", None, None)

    def _list(self, lst: list[Any], node: sch.Node, ref: Ref) -> None:
        item_node = node.item()
        if item_node.dead or not lst:
            return
        if type(lst[0]) is list and _is_pairs(lst):
            for i, v in enumerate(lst):
                key = v[0]
                self._value(v, 1, v[1], item_node, [ref, i, None], key, key)
            return
        pii = item_node.pii
        fast = not self.slow and pii == PII_TRUE and not (item_node.flags & self.flag_mask)
        cget = self._cget
        slots = self.slots
        if fast and type(lst[0]) is str:
            # Lines of text (source context, argv, fingerprints): strings first.
            for i, v in enumerate(lst):
                if type(v) is str:
                    if len(v) > 2:
                        result = cget(v, _MISS)
                        if result is not None:
                            slots.append((lst, i, ref, v, result))
                elif type(v) is dict:
                    self._list_item(lst, i, v, item_node, ref)
                else:
                    self._value(lst, i, v, item_node, ref, i, None)
            return
        for i, v in enumerate(lst):
            tv = type(v)
            if tv is dict:
                if pii != PII_FALSE and len(v) == 2 and type(v.get("key")) is str and "value" in v:
                    key = v["key"]
                    self._value(v, "value", v["value"], item_node, [ref, i, None], key, key)
                    continue
                if fast:
                    self._dict(v, item_node, [ref, i, None])
                    continue
            elif tv is str and fast:
                if len(v) > 2:
                    result = cget(v, _MISS)
                    if result is not None:
                        slots.append((lst, i, ref, v, result))
                continue
            self._value(lst, i, v, item_node, ref, i, None)

    def _list_item(
        self, lst: list[Any], i: int, v: dict[str, Any], item_node: sch.Node, ref: Ref
    ) -> None:
        """An object in a list of a fast list (see `_list`)."""
        if len(v) == 2 and type(v.get("key")) is str and "value" in v:
            key = v["key"]
            self._value(v, "value", v["value"], item_node, [ref, i, None], key, key)
        else:
            self._dict(v, item_node, [ref, i, None])

    def _attrs(self, d: dict[str, Any], ref: Ref) -> None:
        kcache = self._kcache
        slow = self.slow
        fast = not slow
        cget = self._cget
        slots = self.slots
        for name, attr in d.items():
            if type(attr) is dict:
                value = attr.get("value", _MISS)
                # The common case first: a string under a name seen before and not
                # denylisted (`_NONE` is 0; a name not seen yet gives None).
                if type(value) is str and fast and kcache.get(name) == _NONE:
                    if len(value) > 2:
                        found = cget(value, _MISS)
                        if found is not None:
                            slots.append((attr, "value", [ref, name, None], value, found))
                    continue
                if value is not _MISS:
                    verdict = kcache.get(name)
                    if verdict is None:
                        verdict = self.p.key_verdict(name) if type(name) is str else _NONE
                    if verdict == _NONE and not slow:
                        tv = type(value)
                        if tv is str:
                            if len(value) > 2:
                                found = cget(value, _MISS)
                                if found is not None:
                                    slots.append((attr, "value", [ref, name, None], value, found))
                            continue
                        if tv is not dict and tv is not list:
                            continue
                    if verdict == _IP:
                        self._remove(d, name, ref, "@anything:remove")
                        continue
                    if slow:
                        self.states.append((name, sch.ANY.typesets[dict]))
                    self._value(attr, "value", value, sch.ANY, [ref, name, None], "value", name)
                    if slow:
                        self.states.pop()
                    continue
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
            # Rules may have rewritten the string: the detectors see the rewritten text.
            value = container[ckey]
            tv = type(value)
        if verdict == _FILTER and pii == PII_TRUE and tv is not bool:
            if tv is str:
                self._replace_whole(container, ckey, value, ref, "@password:filter", FILTERED)
            else:
                self._remove(container, ckey, ref, "@password:filter")
            return
        if tv is str:
            if pii == PII_TRUE and verdict != _SAFE and len(value) > 2 and self.scan:
                found = self._cget(value, _MISS)
                if found is not None:
                    self.slots.append((container, ckey, ref, value, found))
            return
        if tv is dict or tv is list:
            self._descend(container, ckey, value, node, ref, seg)

    def _descend(
        self, container: Any, ckey: str | int, value: Any, node: sch.Node, ref: Ref, seg: str | int
    ) -> None:
        if node.dead:
            return
        slow = self.slow
        if slow:
            self.states.append((seg, node.typesets[type(value)]))
        if type(value) is dict:
            self._dict(value, node, [ref, ckey, None])
        else:
            self._list(value, node, [ref, ckey, None])
        if slow:
            self.states.pop()

    def _cookies(self, container: Any, ckey: str | int, value: Any, ref: Ref) -> None:
        if isinstance(value, str):
            if value:
                self._replace_whole(container, ckey, value, ref, "@anything:filter", FILTERED)
            return
        inner: Ref = [ref, ckey, None]
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
                        self._replace_whole(
                            v, 1, v[1], [inner, i, None], "@anything:filter", FILTERED
                        )
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
                    self.changes += 1
                    if self.track:
                        orig = len(value) if tv is str else None
                        self._record(ref, ckey, "@pseudonymize", "hash", (0, len(digest)), orig)
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
            if self.track:
                for rng in ranges:
                    self._record(ref, ckey, rule.origin, rule.method, rng, len(value))
            current = new
            changed = True
        if changed:
            container[ckey] = current
            self.changes += 1
        return False

    # --- value detectors ------------------------------------------------------------------------

    def _scan_queued(self) -> None:
        slots = self.slots
        if not slots:
            return
        fresh: dict[str, ScanResult] | None = None
        report = self.redactions if self.report else None
        meta = self.meta
        root = self.remarks
        n = 0
        #: The `_meta` object of the last slot's container (slots of one container
        #: are queued one after the other).
        last: Any = _MISS
        node: dict[str, Any] = root
        for container, ckey, ref, text, found in slots:
            if found is _MISS:
                if fresh is None:
                    fresh = scan_texts(self.p, [slot[3] for slot in slots if slot[4] is _MISS])
                found = fresh[text]
                if found is None:
                    continue
            new, changes, leaf = found
            container[ckey] = new
            n += 1
            if report is not None:
                for rule, _, _ in changes:
                    report.append((ref, ckey, rule, "replace"))
            if meta:
                if ref is not last:
                    last = ref
                    if ref is None:
                        node = root
                    else:
                        have = ref[2]
                        if have is None:
                            # Usually the parent's object exists: make this one inline.
                            parent = ref[0]
                            above = root if parent is None else parent[2]
                            seg = ref[1]
                            if type(seg) is not str:
                                seg = str(seg)
                            if above is not None and seg not in above:
                                have = above[seg] = ref[2] = {}
                            else:
                                have = self._meta_node(ref)
                        node = have
                name = ckey if type(ckey) is str else str(ckey)
                if name in node:
                    _put_leaf(node, name, leaf)
                else:
                    node[name] = leaf
        self.changes += n

    # --- results --------------------------------------------------------------------------------

    def write_meta(self, root: dict[str, Any]) -> None:
        """Merge the remarks into `root["_meta"]` as Sentry writes them."""
        if not self.remarks:
            return
        meta = root.get("_meta")
        if meta is self.remarks:
            return
        if isinstance(meta, dict):
            _merge_meta(meta, self.remarks)
        else:
            root["_meta"] = self.remarks


def _is_leaf(obj: dict[str, Any]) -> bool:
    """Whether `obj` has the shape of a value's remarks object, `{"": entry}` (possibly
    one shared between payloads, so never to be changed in place)."""
    return len(obj) == 1 and "" in obj


def _put_leaf(node: dict[str, Any], name: str, leaf: dict[str, Any]) -> None:
    """Add the remarks of the value object `leaf` to `node[name]`, which exists.

    Copy-on-write: neither `leaf` nor what `node[name]` holds is changed in place.
    Remarks already there come first and keep their `len`, as `_merge_meta` does.
    """
    cur = node[name]
    entry = leaf[""]
    if not isinstance(cur, dict):  # only with keys named "", "rem" or "len"
        node[name] = leaf
        return
    have = cur.get("")
    if isinstance(have, dict):
        merged = dict(have)
        rem = have.get("rem")
        merged["rem"] = rem + entry["rem"] if isinstance(rem, list) else entry["rem"]
        if "len" in entry and "len" not in have:
            merged["len"] = entry["len"]
        entry = merged
    if _is_leaf(cur):
        node[name] = {"": entry}
    else:
        # The value's object exists for remarks below it (never a shared leaf).
        cur[""] = entry


def _merge_meta(dst: dict[str, Any], src: dict[str, Any]) -> None:
    """Add the remarks of `src` to an existing `_meta` object `dst`.

    Objects of `src` may be shared leaves; they are linked into `dst`, never changed.
    Leaves already in `dst` may be shared too: they are copied before a change.
    """
    for name, value in src.items():
        have = dst.get(name)
        if not isinstance(have, dict):
            dst[name] = value
        elif name != "":
            if _is_leaf(have):
                have = dst[name] = dict(have)
            _merge_meta(have, value)
        else:
            new = dict(have)
            existing = have.get("rem")
            if isinstance(existing, list) and isinstance(value.get("rem"), list):
                new["rem"] = existing + value["rem"]
            elif "rem" in value:
                new["rem"] = value["rem"]
            if "len" in value and "len" not in have:
                new["len"] = value["len"]
            dst[""] = new


def _ref_text(texts: dict[int, str], ref: Ref) -> str:
    """`"a.b."` for the container at path a.b (memoized by id; the walker's redactions
    keep every ref alive, so ids are not reused meanwhile)."""
    chain: list[list[Any]] = []
    found = texts.get(id(ref))
    while found is None:
        assert ref is not None
        chain.append(ref)
        ref = ref[0]
        found = texts.get(id(ref))
    for link in reversed(chain):
        found = f"{found}{link[1]}."
        texts[id(link)] = found
    return found


def scan_texts(policy: Policy, texts: Sequence[str]) -> dict[str, ScanResult]:
    """Run the value detectors over `texts` (one joined pass); cache and return results."""
    uniq = list(dict.fromkeys(texts))
    out: dict[str, ScanResult] = dict.fromkeys(uniq)
    hits = policy.scanner.scan(det.SEPARATOR.join(uniq)) if uniq else []
    if hits:
        # Hits come left to right: walk the texts along with them.
        i = 0
        text = uniq[0]
        base = 0
        end = len(text)
        group: list[det.Hit[Finding]] = []
        for h in hits:
            if h.start > end:
                if group:
                    out[text] = _rewrite(text, group, base)
                    group = []
                while h.start > end:
                    base = end + 1
                    i += 1
                    text = uniq[i]
                    end = base + len(text)
            group.append(h)
        out[text] = _rewrite(text, group, base)
    policy.cache.put_all(out)
    return out


def _rewrite(text: str, hits: Sequence[det.Hit[Finding]], base: int) -> ScanResult:
    """Apply detector hits (positions offset by `base`) to `text`."""
    if len(hits) == 1:
        s, e, what = hits[0]
        s -= base
        rule, rep = what.rule, what.replacement
        b = s + len(rep)
        return (
            text[:s] + rep + text[e - base :],
            ((rule, s, b),),
            {"": {"rem": [[rule, "s", s, b]], "len": len(text)}},
        )
    parts: list[str] = []
    changes: list[Change] = []
    pos = 0
    out_len = 0
    for h in hits:
        s, e = h.start - base, h.end - base
        chunk = text[pos:s]
        parts.append(chunk)
        out_len += len(chunk)
        rep = h.what.replacement
        parts.append(rep)
        changes.append((h.what.rule, out_len, out_len + len(rep)))
        out_len += len(rep)
        pos = e
    parts.append(text[pos:])
    leaf = {"": {"rem": [[r, "s", a, b] for r, a, b in changes], "len": len(text)}}
    return "".join(parts), tuple(changes), leaf


def _is_pairs(lst: list[Any]) -> bool:
    return bool(lst) and all(type(v) is list and len(v) == 2 and type(v[0]) is str for v in lst)


def scrub_string(policy: Policy, text: str) -> tuple[str, list[tuple[str, tuple[int, int]]]]:
    """Value detectors only, on one string: the new string and (rule, range) per change."""
    if not policy.entries:
        return text, []
    found = policy.cache.data.get(text, _MISS)
    if found is _MISS:
        found = scan_texts(policy, [text])[text]
    if found is None:
        return text, []
    return found[0], [(rule, (start, end)) for rule, start, end in found[1]]


def path_text(path: Sequence[str | int]) -> str:
    return ".".join(map(str, path))
