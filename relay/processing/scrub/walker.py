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

A `_meta` object the client sent is removed wherever the walk meets one (it may hold
original values); the walk's own remarks take its place. Subtrees the schema marks
dead (never PII, no flags below) are not entered. The path is kept as parent links
and built only for values that change, and only when the report or `_meta` remarks (`{"": {"rem": [[rule, kind, start, end]], "len": n}}`, as
Sentry writes them) need it. Selector state (keys and value types) is tracked only
when the policy has selectors at all.

Pairs are read as Sentry's Relay reads them: in its pair-list fields (`schema.Node.pairlist`)
a `[name, value]` pair's value sits under its name right below the field
(`$http.headers.authorization`), elsewhere any array of two whose first item is a string is
a pair whose value sits under the name below the array, tried by index when that changed
nothing (`_pair`); `{"key": ..., "value": ...}` objects are objects (`_kv`). A query
string or cookies sent as one string are parsed into pairs when the policy has selectors
(`parse_pairs`, `Walk._pair_string`); the field stays a string unless a pair changed.

What to do with a key is decided once per schema node and key (`NodePlan`): most keys
need one table lookup, and at typed nodes (the event, frames, breadcrumbs, spans) the
keys worth visiting are planned per tuple of keys, so never-PII fields cost nothing.
Strings seen before in which nothing was found are one set test (`ScanCache.clean`).
A policy whose selectors name value types only (`$string`, `$message`, ...: `local`)
finds its rules per schema node and value type and keeps the fast paths where no rule
applies. Other selectors need the path of every value tracked. When each of them
needs a key in the path (`keyed`): the value's own (`extra.a`, `$http.headers.x-api-key`,
`user.id`) or a container's above it (`vars` of `$frame.vars.**`, `extra` of `extra.*`),
only values under those keys, and every value below such a container, take the
per-value path; the others keep the fast codes (with the rules of local applications,
if any, and of `**`), and containers are entered
with their path tracked. Anything else (`$frame.**`, `$frame.*`, `!a`) takes the
general per-value path everywhere. All give the same
results (`tests/processing/scrub/test_fast_equivalence.py`, `test_local_selectors.py`).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple
from urllib.parse import parse_qsl, unquote

from relay.processing.scrub import detectors as det
from relay.processing.scrub import schema as sch
from relay.processing.scrub.cache import Change, Mark, RulesMemo, ScanCache, ScanResult
from relay.processing.scrub.rules import (
    REMARK,
    Application,
    Rule,
    merge_spans,
    rewrite,
)
from relay.processing.scrub.selectors import (
    PII_FALSE,
    PII_MAYBE,
    PII_TRUE,
    Selector,
    State,
    is_local,
    last_keys,
    matches,
    path_keys,
)

FILTERED = det.FILTERED
_FILTERED_SPAN = (0, len(FILTERED))

#: Keys whose value is filtered when `defaults` is on, searched in the lowercased key:
#: Sentry's password key words as substrings (`author` and `tokenizer` included, as in
#: Sentry), card security codes, and words of the key (split by anything but letters
#: and digits) that are a one-time password (a word starting or ending in `otp`:
#: `otp_code`, `totp`, `user_otp`, not `footprint`), a second factor (`two_factor`,
#: `2fa`), or a cookie header (a last word `cookie`/`cookies`: `set-cookie`,
#: `http.request.header.cookie`), and a single cookie of such a header
#: (`http.request.header.cookie.<name>`).
DENY_SUBSTRING = re.compile(
    r"password|secret|passwd|api[-_]?key|auth|credential|mysql_pwd|private[-_]?key|token"
    r"|cvv|cvc"
    r"|(?<![a-z0-9])otp|otp(?![a-z0-9])"
    r"|(?<![a-z0-9])(?:two[-_.]?factor|2fa)"
    r"|(?:(?<![a-z0-9])|set)cookies?$"
    r"|header\.(?:set[-_])?cookie\."
)
#: Keys filtered when `defaults` is on (exact, case-insensitive, `-` read as `_`), whole
#: or as the last segment of a dotted name (`db.connection_string`).
DENY_EXACT = frozenset(
    {
        "pass",
        "pwd",
        "pin",
        "pincode",
        "pin_code",
        "passcode",
        "session_key",
        "sessionkey",
        "connection_string",
        "connectionstring",
        "conn_string",
        "conn_str",
        "database_url",
        "databaseurl",
        "db_url",
        "encryption_key",
        "encryptionkey",
        "signing_key",
        "signingkey",
        "master_key",
        "access_key",
        "accesskey",
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


def _denied(low: str, norm: str) -> bool:
    """Whether the default denylist filters a key (`low`: lowercased, `norm`: also with
    `-` read as `_`); decided once per distinct key (`Policy.key_verdict`)."""
    return (
        norm in DENY_EXACT
        or norm.rpartition(".")[2] in DENY_EXACT
        or DENY_SUBSTRING.search(low) is not None
    )


_NONE, _FILTER, _IP, _SAFE = 0, 1, 2, 3
(
    _DEAD,
    _FALSE,
    _FAST,
    _SLOW,
    _MAYBE,
    _ATTRS,
    _DENY,
    _RULED,
    _TRACKED,
    _TRACKED_RULED,
    _DROP,
) = range(11)
_LIST_DEAD, _LIST_SLOW, _LIST_FAST, _LIST_RULED, _LIST_TRACKED = 0, 1, 2, 3, 4
_MAX_KEY_CACHE = 20000
_MAX_SHAPES = 64
_MAX_SHAPE_KEYS = 64
_MAX_LEAVES = 4096


class Redaction(NamedTuple):
    """One change: where (JSON path), by which rule, how. Never the original value."""

    path: str
    rule: str
    method: str
    #: Index of the envelope item (None: the envelope header or a bare event).
    item: int | None = None
    item_type: str | None = None


class NodePlan:
    """What a policy's walker does at one schema node, filled in as keys show up.

    Parameters:
        node: the schema node.
        shaped: the node has dead children (see `Policy.shape_plan`).
    """

    __slots__ = ("fast", "items", "live", "node", "plans", "shapes")

    def __init__(self, node: sch.Node, shaped: bool) -> None:
        self.node = node
        #: key -> (code, child node); see `Policy.plan`.
        self.plans: dict[str, tuple[int, sch.Node]] = {}
        #: Every key of `plans` too, for the walker's one lookup per key: the child's
        #: plan for `_FAST`, None for `_DEAD`, `_PLANNED` for the other codes.
        self.fast: dict[str, NodePlan | None] = {}
        #: The keys worth visiting of a never-PII object (`Node.live`).
        self.live = node.live
        #: The keys of an object, in order -> `ShapePlan` (nodes with dead children).
        self.shapes: dict[tuple[str, ...], ShapePlan] | None = {} if shaped else None
        #: For an array at this node: (its items' plan, `_LIST_DEAD`, `_LIST_SLOW` or
        #: `_LIST_FAST`); see `Policy.list_plan`.
        self.items: tuple[NodePlan, int] | None = None


#: Stands for every code but `_FAST` and `_DEAD` in `NodePlan.fast`: see `plans`.
_PLANNED = NodePlan(sch.NONE, False)
#: The keys of an object worth visiting, in order, each with its `NodePlan.fast` entry
#: (a child's plan or `_PLANNED`); see `Policy.shape_plan`.
ShapePlan = tuple[tuple[str, NodePlan], ...]


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
    #: The hex digest that replaces a flagged user id (`schema.USER_HASH`); None (no key
    #: configured): the detectors' placeholder, as for any other value.
    did_hash: Callable[[str], str] | None = None
    _key_cache: dict[str, int] = field(default_factory=dict, repr=False)
    #: The keys of `_key_cache` whose verdict is `_NONE` (the common case, one set test),
    #: and those whose verdict is `_IP`.
    _plain_keys: set[str] = field(default_factory=set, repr=False)
    _ip_keys: set[str] = field(default_factory=set, repr=False)
    #: Per schema node: its plan, made on first use (see `node_plan`).
    _node_plans: dict[sch.Node, NodePlan] = field(default_factory=dict, repr=False)
    #: Keys planned in all `_node_plans` (bounded by `_MAX_KEY_CACHE`).
    _plan_size: int = field(default=0, repr=False)
    _app_keys: tuple[frozenset[str] | None, ...] = field(default=(), repr=False)
    #: `_meta` value objects of `Walk._record`, shared between payloads (never mutated).
    _leaves: dict[tuple[Any, ...], dict[str, Any]] = field(default_factory=dict, repr=False)
    scanner: det.Scanner[Finding] = field(init=False, repr=False)
    #: What every `Walk` of this policy starts from (see `Walk.__init__`).
    _walk_setup: tuple[Any, ...] = field(init=False, repr=False)
    #: Rules or pseudonymization may rewrite `user.ip_address` (see `Walk._move_ip`).
    moves_ip: bool = field(init=False, repr=False)
    #: Detector results per string, for this policy only.
    cache: ScanCache = field(default_factory=ScanCache, repr=False)
    #: Every selector is an application's and local (`selectors.is_local`): rules are
    #: found per schema node and value type (`local_rules`), no path is tracked.
    local: bool = field(init=False, repr=False)
    #: Selectors need the path of every value (`Walk.states`): the general path.
    tracks_paths: bool = field(init=False, repr=False)
    #: Paths are tracked, and every selector but local ones needs a key in the path
    #: (`selectors.path_keys`): only values under one of the keys they end in
    #: (`_candidates`), and every value below a container under one of the keys they
    #: need above (`_anchors`, e.g. `vars` of `$frame.vars.**`), can be selected by
    #: them. The others take the fast plan codes (scalars, with the rules of local
    #: applications) or just have their path tracked (containers).
    keyed: bool = field(init=False, repr=False)
    _candidates: frozenset[str] = field(init=False, repr=False)
    _anchors: frozenset[str] = field(init=False, repr=False)
    #: `local_rules` per (node, value type, deep), and whether any can apply at a node.
    _local_rules: dict[tuple[sch.Node, type, bool], tuple[Rule, ...]] = field(
        default_factory=dict, repr=False
    )
    _local_nodes: dict[sch.Node, bool] = field(default_factory=dict, repr=False)
    #: The applications whose selectors are local (all of them in a `local` policy), and
    #: those `local_rules` applies: these, or in a policy that tracks paths also those
    #: with `**` (`is_local(deep=True)`).
    _local_apps: tuple[Application, ...] = field(init=False, repr=False)
    _rule_apps: tuple[Application, ...] = field(init=False, repr=False)
    #: The distinct tuples `local_rules` returns (one object per list of rules), by the
    #: ids of their rules; and per such tuple whose rules never look at the key (by id;
    #: the tuples live here), what they do to strings.
    _rule_tuples: dict[tuple[int, ...], tuple[Rule, ...]] = field(default_factory=dict, repr=False)
    _rule_memos: dict[int, RulesMemo] = field(default_factory=dict, repr=False)
    #: Per rule (by id; rules live as long as the policy): strings it found nothing in.
    _rule_clean: dict[int, ScanCache] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.moves_ip = bool(self.applications or self.pseudonymize)
        self._app_keys = tuple(last_keys(a.selector) for a in self.applications)
        self.scanner = det.Scanner(self.entries)
        self._local_apps = tuple(a for a in self.applications if is_local(a.selector))
        self.local = (
            bool(self.applications)
            and not self.pseudonymize
            and not self.safe_selectors
            and len(self._local_apps) == len(self.applications)
        )
        self.tracks_paths = self.uses_selectors and not self.local
        shallow = tuple(a for a in self.applications if is_local(a.selector, deep=True))
        self._rule_apps = self._local_apps if self.local else shallow
        needs = [
            path_keys(sel)
            for sel in (
                *self.safe_selectors,
                *self.pseudonymize,
                *(a.selector for a in self.applications if a not in shallow),
            )
        ]
        self.keyed = self.tracks_paths and all(keys is not None for keys in needs)
        self._candidates = frozenset(k for keys in needs if keys is not None for k in keys[0])
        self._anchors = frozenset(k for keys in needs if keys is not None for k in keys[1])
        local_any = self.local_possible(sch.ANY)
        self._walk_setup = (
            self.tracks_paths,
            self._plain_keys,
            bool(self.entries),
            self.local,
            local_any,
            # Attributes objects take the fast loop unless local rules may apply there, or
            # (paths tracked) a selector may select an attribute's value.
            not local_any
            and (
                not self.tracks_paths
                or (self.keyed and "value" not in self._candidates and not self._anchors)
            ),
            self._anchors if self.keyed else frozenset(),
        )

    @property
    def uses_selectors(self) -> bool:
        return bool(self.applications or self.pseudonymize or self.safe_selectors)

    def local_rules(self, node: sch.Node, tv: type, deep: bool) -> tuple[Rule, ...]:
        """The rules, in application order, of local applications (`_rule_apps`) that
        apply to a value of type `tv` at `node`, `deep` when its path has two states or
        more: what `Walk._selected` finds with the path tracked, since such a selector
        looks at the last state only (`(segment, types)`, the segment unused) and the
        value's PII attribute (`**` alone matches at any depth: the root counts as a
        state above the top-level fields, so `deep` changes nothing)."""
        found = self._local_rules.get((node, tv, deep))
        if found is None:
            state: list[State] = [("", node.typesets.get(tv, node.types))]
            if deep:
                state.insert(0, ("", frozenset()))
            rules: list[Rule] = []
            for app in self._rule_apps:
                if matches(app.selector, state, node.pii):
                    rules.extend(app.rules)
            ids = tuple(map(id, rules))
            found = self._rule_tuples.get(ids)
            if found is None:
                # `setdefault`: with two threads walking (`services.offload`), the memo
                # belongs to the one tuple kept, whose id stays taken.
                made = tuple(rules)
                found = self._rule_tuples.setdefault(ids, made)
                if found is made and rules and not any(r.keyed for r in rules):
                    self._rule_memos[id(found)] = RulesMemo()
            self._local_rules[(node, tv, deep)] = found
        return found

    def local_possible(self, node: sch.Node) -> bool:
        """Can a rule of a local application (`_rule_apps`) apply to some value at `node`?
        Where one can, the walker applies them on `_RULED` or `_TRACKED` keys, or takes
        the per-value path (`_value`)."""
        if not self._rule_apps:
            return False
        found = self._local_nodes.get(node)
        if found is None:
            found = self._local_nodes[node] = any(
                self.local_rules(node, tv, deep) for tv in _VALUE_TYPES for deep in (False, True)
            )
        return found

    def rule_spans(self, rule: Rule, text: str) -> list[tuple[int, int]]:
        """`rule.spans(text)`, remembering the strings in which it found nothing (most)."""
        clean = self._rule_clean.get(id(rule))
        if clean is None:
            clean = self._rule_clean[id(rule)] = ScanCache(max_entries=5_000, max_chars=250_000)
        elif text in clean.clean:
            return []
        spans = rule.spans(text)
        if not spans:
            clean.put(text, None)
        return spans

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
        elif (self.defaults and _denied(low, norm)) or (
            self.sensitive is not None and self.sensitive.search(low)
        ):
            verdict = _FILTER
        if len(cache) > _MAX_KEY_CACHE:
            cache.clear()
            self._plain_keys.clear()
            self._ip_keys.clear()
        cache[key] = verdict
        if verdict == _NONE:
            self._plain_keys.add(key)
        elif verdict == _IP:
            self._ip_keys.add(key)
        return verdict

    def node_plan(self, node: sch.Node) -> NodePlan:
        """The plan of `node`, made as needed."""
        found = self._node_plans.get(node)
        if found is None:
            shaped = node.live is None and any(c.dead for c in node.children.values())
            found = self._node_plans[node] = NodePlan(node, shaped)
        return found

    def shape_plan(self, np: NodePlan, keys: tuple[str, ...]) -> ShapePlan | None:
        """The keys of an object at `np` with `keys` (in that order) that are not dead,
        each with its `NodePlan.fast` entry; memoized per node, None once the node has
        `_MAX_SHAPES` of them (the walker then looks keys up one by one).

        Objects at a typed node (frames, breadcrumbs, spans, the event) mostly come
        with the same keys, many of them never PII: this skips those at no cost.
        """
        shapes = np.shapes
        if shapes is None or len(shapes) >= _MAX_SHAPES or len(keys) > _MAX_SHAPE_KEYS:
            return None
        fast = np.fast
        out = []
        for key in keys:
            entry = fast.get(key, _MISS)  # one lookup: another thread may clear `fast`
            if entry is _MISS:
                entry = self._fast_entry(*self.plan(np, key))
            if entry is not None:
                out.append((key, entry))
        found = shapes[keys] = tuple(out)
        return found

    def list_plan(self, np: NodePlan) -> tuple[NodePlan, int]:
        """The items' plan of an array at `np` and what the walker does with them.

        `_LIST_DEAD`: nothing; `_LIST_FAST`: PII, no flags that need the full per-value
        path, no selectors: strings are queued, objects walked; `_LIST_RULED`: the same
        but where a rule of a local policy may apply: objects no rule applies to are
        walked, anything else takes the per-value path; `_LIST_TRACKED`: the same as
        fast under a keyed policy, objects and arrays entered with their path tracked (no
        selector ends in an index); `_LIST_SLOW`: full per-value processing.
        """
        item = np.node.item()
        flag_mask = ~sch.SOURCE if self.source_context == "scrub" else -1
        if item.dead:
            mode = _LIST_DEAD
        elif (
            (self.keyed or not self.tracks_paths)
            and item.pii == PII_TRUE
            and not (item.flags & flag_mask)
        ):
            if self.local_possible(item):
                mode = _LIST_SLOW if self.keyed else _LIST_RULED
            else:
                mode = _LIST_TRACKED if self.keyed else _LIST_FAST
        else:
            mode = _LIST_SLOW
        found = np.items = (self.node_plan(item), mode)
        return found

    def _fast_entry(self, code: int, child: sch.Node) -> NodePlan | None:
        return self.node_plan(child) if code == _FAST else None if code == _DEAD else _PLANNED

    def plan(self, np: NodePlan, key: str) -> tuple[int, sch.Node]:
        """What the walker does with `key` of an object at `np` (memoized in it).

        `_DEAD`: nothing; `_FALSE`: never PII itself, enter containers; `_FAST`: PII, no
        flags, no selectors, key not denylisted: queue strings, enter containers;
        `_MAYBE`: PII "maybe", no flags, no selectors, not an IP key: only default rules
        apply, which leave the value itself alone, so only containers are entered;
        `_ATTRS`: an attributes object under a key that is not denylisted, no
        selectors: an object value goes straight to the attributes walk;
        `_DENY`: PII, no flags, no selectors, key denylisted: the value is filtered
        (a string) or removed (anything but null and booleans);
        `_SLOW`: anything else (full per-value processing). With a `keyed` policy, a key
        no selector ends in is `_TRACKED` instead of `_FAST` (scalars as `_FAST`,
        containers entered with their path tracked; `_TRACKED_RULED` where rules of
        local applications may apply), and one that a selector ends in is
        `_SLOW` (below a container under an anchor key, the walk reads all three as
        `_SLOW`); the general path (`tracks_paths`) has only `_DEAD`, `_FALSE` and
        `_SLOW`. With a `local` policy, a key where a rule may apply is `_RULED` (`_FAST`
        for value types no rule applies to) instead of `_FAST`, and `_SLOW` instead of
        `_MAYBE`, `_ATTRS` or `_DENY`. `_DROP`: a `_meta` the client sent, at any
        level: removed.
        """
        node = np.node
        children = node.children
        child = children.get(key.lower() if node.fold and type(key) is str else key)
        if child is None:
            child = node.other if node.other is not None else node
        flags = child.flags
        if self.source_context == "scrub":
            flags &= ~sch.SOURCE
        if key == sch.META_KEY:
            code = _DROP
        elif child.dead:
            code = _DEAD
        elif (
            flags == sch.ATTRS
            and not self.tracks_paths
            and type(key) is str
            and self.key_verdict(key) == _NONE
        ):
            code = _ATTRS
        elif flags:
            code = _SLOW
        elif child.pii == PII_FALSE:
            code = _FALSE
        elif (self.tracks_paths and not self.keyed) or type(key) is not str:
            code = _SLOW
        elif child.pii == PII_TRUE and self.key_verdict(key) == _NONE:
            code = _FAST
        elif child.pii == PII_TRUE and self.key_verdict(key) == _FILTER:
            code = _DENY
        elif child.pii == PII_MAYBE and not (self.ip_addresses and self.key_verdict(key) == _IP):
            code = _MAYBE
        else:
            code = _SLOW
        if child.pairstr is not None and self.uses_selectors and code != _DEAD and code != _DROP:
            # A query string or cookies sent as one string: `_value` parses it so that
            # selectors reach its pairs (`Walk._pair_string`).
            code = _SLOW
        if self.keyed and code in (_FAST, _DENY, _MAYBE):
            if key.lower() in self._candidates:
                code = _SLOW  # a selector may select it
            elif code == _FAST:
                # With the rules of local applications where one may apply.
                code = _TRACKED_RULED if self.local_possible(child) else _TRACKED
            elif self.local_possible(child):
                code = _SLOW
        elif code != _DEAD and code != _FALSE and code != _SLOW and self.local_possible(child):
            # A local rule may apply: `_FAST` but for the values it applies to, anything
            # else by the per-value path.
            code = _RULED if code == _FAST else _SLOW
        if self._plan_size > _MAX_KEY_CACHE:
            # Bounded memory: start over (plans in use stay valid, just unlisted).
            # A copy: another thread may add a node plan meanwhile (`services.offload`).
            for known in tuple(self._node_plans.values()):
                known.plans.clear()
                known.fast.clear()
                if known.shapes is not None:
                    known.shapes.clear()
            self._plan_size = 0
        found = np.plans[key] = (code, child)
        np.fast[key] = self._fast_entry(code, child)
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
#: The types of JSON values a rule can apply to (`_value` returns early for null).
_VALUE_TYPES = (str, int, float, bool, dict, list)


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
        "_clean",
        "_plain",
        "anchored",
        "anchors",
        "attrs_fast",
        "changes",
        "hit",
        "local",
        "local_any",
        "meta",
        "p",
        "redactions",
        "remarks",
        "report",
        "slots",
        "slow",
        "states",
        "track",
    )

    def __init__(self, policy: Policy, meta: bool, report: bool = True) -> None:
        self.p = policy
        self.meta = meta
        self.report = report
        self.track = meta or report
        #: How many values were changed or removed.
        self.changes = 0
        #: Set by `_value` for a pair's value that rules changed when selected by the
        #: pair's name (see `_pair`).
        self.hit = False
        #: (container ref, key, rule, method) per change, when `report`.
        self.redactions: list[tuple[Ref, str | int, str, str]] = [] if report else _NO_ROWS
        #: `_meta` remarks made by this walk, as a tree shaped like `_meta`, when `meta`.
        self.remarks: dict[str, Any] = {}
        #: Strings for the value detectors: (container, key, its `_meta` name, ref, text,
        #: result or _MISS).
        self.slots: list[tuple[Any, str | int, str, Ref, str, Any]] = []
        #: `slow`: the policy tracks paths (selector state per level); `_plain`: keys whose
        #: verdict is known to be `_NONE`; `local`: a local policy (`_value` applies its
        #: rules); `local_any`: local rules may apply to attribute values, so attributes
        #: take the per-value path too; `attrs_fast`: attributes objects take the fast
        #: loop in `_attrs`; `anchors`: a keyed policy's `_anchors`.
        (
            slow,
            self._plain,
            scan,
            self.local,
            self.local_any,
            self.attrs_fast,
            self.anchors,
        ) = policy._walk_setup
        self.slow = slow
        #: Selector state per level (only when the policy has selectors).
        self.states: list[State] = [] if slow else _NO_STATES
        #: How many containers under one of `anchors` the walk is in: everything below
        #: one takes the per-value path (`_planned`, `_list`).
        self.anchored = 0
        #: Detector results per string (`_cget`), and the strings known clean (`_clean`,
        #: a subset; tested first, as most strings are).
        if scan:
            cache = policy.cache
            self._cget: Callable[[str, Any], Any] = cache.data.get
            self._clean: set[str] | frozenset[str] = cache.clean
        else:
            self._cget = _never_scan
            self._clean = frozenset()

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
        """The object of `remarks` for the container at `ref`, created as needed (with
        those of its containers that have none yet, outermost first)."""
        missing = [ref]
        up = ref[0]
        while up is not None and up[2] is None:
            missing.append(up)
            up = up[0]
        node: dict[str, Any] = self.remarks if up is None else up[2]
        for link in reversed(missing):
            seg = link[1]
            name = seg if type(seg) is str else str(seg)
            below = node.get(name)
            if not isinstance(below, dict):
                below = node[name] = {}
            link[2] = node = below
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
        """Walk `root` (at schema `node`) and apply the detectors' results."""
        #: `user` and its `ip_address` before the walk (see `_move_ip`).
        before: tuple[dict[str, Any], str] | None = None
        if isinstance(root, dict):
            if self.p.moves_ip and node is sch.EVENT:
                user = root.get("user")
                if type(user) is dict:
                    ip = user.get("ip_address")
                    if type(ip) is str:
                        before = (user, ip)
            if node.flags & sch.ATTRS:
                self._attrs(root, None)
            else:
                self._dict(root, self.p.node_plan(node), None)
        elif isinstance(root, list):
            self._list(root, self.p.node_plan(node), None)
        self._scan_queued()
        if before is not None and before[0].get("ip_address") != before[1]:
            self._move_ip(root, *before)

    def _move_ip(self, event: dict[str, Any], user: dict[str, Any], was: str) -> None:
        """Sentry's `process_user`: a valid `user.ip_address` (`was`) that a rule made
        invalid (hashed, masked, replaced) becomes `user.id` when the user has no id,
        username or email, so that "users affected" still counts (its remarks move
        along)."""
        ip = user.get("ip_address")
        # An empty string is what a `remove` rule left of an address: removed, as null.
        if ip is None or ip == "" or event.get("user") is not user:
            return
        if _valid_ip(ip) or not _valid_ip(was):
            return
        if any(user.get(k) is not None for k in ("id", "username", "email")):
            return
        user["id"] = ip
        user["ip_address"] = None
        if self.meta:
            above = self.remarks.get("user")
            if not isinstance(above, dict):
                above = self.remarks["user"] = {}
            moved = above.pop("ip_address", None)
            if moved is not None:
                above["id"] = moved
            above["ip_address"] = {"": {"rem": [["project:0", "x"]]}}

    def _dict(self, d: dict[str, Any], np: NodePlan, ref: Ref) -> None:
        """The keys of an object at `np` (never an attributes node: `run` and `_descend`
        send those to `_attrs`, and `_FAST` children and fast list items have no flags)."""
        clean = self._clean
        drop: list[str] | None = None
        child: NodePlan | None
        planned = None
        shapes = np.shapes
        if shapes is not None:
            keys = tuple(d)
            planned = shapes.get(keys)
            if planned is None:
                planned = self.p.shape_plan(np, keys)
        if planned is not None:
            # The keys worth visiting (dead ones left out), planned for objects with
            # these keys at this node before.
            for k, child in planned:
                v = d[k]
                if child is not _PLANNED:
                    # `_FAST`, the common case (as in the loop below).
                    tv = type(v)
                    if tv is str:
                        if v not in clean and len(v) > 2:
                            result = self._cget(v, _MISS)
                            if result is not None:
                                self.slots.append((d, k, k, ref, v, result))
                    elif tv is dict:
                        self._dict(v, child, [ref, k, None])
                    elif tv is list:
                        self._list(v, child, [ref, k, None])
                elif self._planned(d, k, v, np, ref):
                    if drop is None:
                        drop = []
                    drop.append(k)
        else:
            fast = np.fast
            live = np.live
            pairs = d.items() if live is None else [(k, d[k]) for k in live if k in d]
            for k, v in pairs:
                # Every key planned at this node before is in `fast` (see `Policy.plan`).
                try:
                    child = fast[k]
                except KeyError:
                    child = _PLANNED
                if child is None:
                    continue  # `_DEAD`
                if child is not _PLANNED:
                    # `_FAST`, the common case.
                    tv = type(v)
                    if tv is str:
                        # Most strings were seen before and are clean: one set test.
                        if v not in clean and len(v) > 2:
                            result = self._cget(v, _MISS)
                            if result is not None:
                                self.slots.append((d, k, k, ref, v, result))
                    elif tv is dict:
                        self._dict(v, child, [ref, k, None])
                    elif tv is list:
                        self._list(v, child, [ref, k, None])
                elif self._planned(d, k, v, np, ref):
                    if drop is None:
                        drop = []
                    drop.append(k)
        if drop:
            self._drop_keys(d, drop, ref)

    def _drop_keys(self, d: dict[str, Any], keys: list[str], ref: Ref) -> None:
        """Remove source context lines (noted) and client `_meta` objects (not noted:
        remarks are about values, and this one is replaced by the walk's own)."""
        for k in keys:
            del d[k]
            self.changes += 1
            if self.track and k != sch.META_KEY:
                self._record(ref, k, "@source_context:drop", "remove", None, None)

    def _planned(self, d: dict[str, Any], k: str, v: Any, np: NodePlan, ref: Ref) -> bool:
        """Key `k` of `d` (at `np`) by its plan code, unless `_FAST` or `_DEAD` was seen
        in `NodePlan.fast` already; True when the key is to be removed (source context
        to drop, a client `_meta`)."""
        found = np.plans.get(k)
        if found is None:
            found = self.p.plan(np, k)
        code, child = found
        if self.anchored and code in (_TRACKED, _TRACKED_RULED, _MAYBE, _DENY):
            code = _SLOW  # below an anchor every value may be selected
        if code == _TRACKED:
            # `_FAST` under a keyed policy: no selector can select this value (what
            # `_value` would find), but a container's path is tracked.
            tv = type(v)
            if tv is str:
                if v not in self._clean and len(v) > 2:
                    result = self._cget(v, _MISS)
                    if result is not None:
                        self.slots.append((d, k, k, ref, v, result))
            elif tv is dict or tv is list:
                self._descend(d, k, v, child, ref, k)
            return False
        if code in (_RULED, _TRACKED_RULED):
            # `_FAST` with the rules of local applications (`_RULED`: a local policy;
            # `_TRACKED_RULED`: a keyed policy, where no other selector can select this
            # value and containers are entered with their path tracked): `_value`'s steps.
            tv = type(v)
            p = self.p
            # Depth matters to `**` only, which `_RULED` (a local policy) never has.
            deep = code == _RULED or bool(self.states)
            rules = p._local_rules.get((child, tv, deep))
            if rules is None:
                if v is None:
                    return False  # as in `_value`: nothing applies to null
                rules = p.local_rules(child, tv, deep)
            if rules:
                memo = p._rule_memos.get(id(rules))
                # The common case inline: a string the rules changed nothing in before.
                if tv is not str or memo is None or v not in memo.clean:
                    rkey = _header_name(k) if child.header else k
                    if self._apply_rules(d, k, v, ref, rkey, rules):
                        return False
                    v = d[k]
                    tv = type(v)
            if tv is str:
                if v not in self._clean and len(v) > 2:
                    result = self._cget(v, _MISS)
                    if result is not None:
                        self.slots.append((d, k, k, ref, v, result))
            elif tv is dict or tv is list:
                if code == _TRACKED_RULED:
                    self._descend(d, k, v, child, ref, k)
                elif tv is dict:
                    self._dict(v, p.node_plan(child), [ref, k, None])
                else:
                    self._list(v, p.node_plan(child), [ref, k, None])
            return False
        if code == _MAYBE and type(v) is not dict and type(v) is not list:
            return False
        if code == _ATTRS and type(v) is dict:
            self._attrs(v, [ref, k, None])
            return False
        if code == _FALSE:
            if type(v) is dict or type(v) is list:
                self._descend(d, k, v, child, ref, k)
            return False
        if code == _DENY:
            # What `_value` does with a denylisted key's value (`_replace_whole` inline).
            if type(v) is str:
                d[k] = FILTERED
                self.changes += 1
                if self.track:
                    self._record(ref, k, "@password:filter", "replace", _FILTERED_SPAN, len(v))
            elif v is not None and type(v) is not bool:
                self._remove(d, k, ref, "@password:filter")
            return False
        if code == _FAST:
            # A key not planned at this node before.
            tv = type(v)
            if tv is str:
                if v not in self._clean and len(v) > 2:
                    result = self._cget(v, _MISS)
                    if result is not None:
                        self.slots.append((d, k, k, ref, v, result))
            elif tv is dict:
                self._dict(v, self.p.node_plan(child), [ref, k, None])
            elif tv is list:
                self._list(v, self.p.node_plan(child), [ref, k, None])
            return False
        if code == _DEAD:
            return False
        if code == _DROP:
            return True
        flags = child.flags
        if flags & sch.SOURCE:
            mode = self.p.source_context
            if mode == "drop":
                return True
            if mode == "keep":
                return False
        if child.pii == PII_FALSE and not (flags & sch.IP_FIELD):
            if type(v) is dict or type(v) is list:
                self._descend(d, k, v, child, ref, k)
            return False
        self._value(d, k, v, child, ref, k, k if type(k) is str else None)
        return False

    def _list(self, lst: list[Any], np: NodePlan, ref: Ref) -> None:
        items = np.items
        if items is None:
            items = self.p.list_plan(np)
        item_np, mode = items
        if mode == _LIST_DEAD or not lst:
            return
        item_node = item_np.node
        first = type(lst[0])
        node = np.node
        if (
            first is str
            and len(lst) == 2
            and lst[1] is not None
            and item_node.pii != PII_FALSE
            and not item_node.flags & sch.SOURCE
        ):
            # A `[name, value]` pair, wherever it is (Sentry: any array of two whose first
            # item is a string).
            self._pair(lst, node.child(lst[0]) if node.pairlist else item_node, ref)
            return
        if node.pairlist:
            self._pairlist(lst, node, item_node, ref)
            return
        if mode != _LIST_FAST:
            self._list_other(lst, mode, item_np, ref)
            return
        clean = self._clean
        cget = self._cget
        slots = self.slots
        if first is str:
            # Lines of text (source context, argv, fingerprints): strings first.
            for i, v in enumerate(lst):
                if type(v) is str:
                    if v not in clean and len(v) > 2:
                        result = cget(v, _MISS)
                        if result is not None:
                            slots.append((lst, i, str(i), ref, v, result))
                elif type(v) is dict:
                    self._list_item(lst, i, v, item_np, ref)
                else:
                    self._value(lst, i, v, item_node, ref, i, None)
            return
        for i, v in enumerate(lst):
            tv = type(v)
            if tv is dict:
                if len(v) == 2 and _is_pair(v):
                    self._kv(lst, i, v, item_np, ref)
                else:
                    self._dict(v, item_np, [ref, i, None])
            elif tv is str:
                if v not in clean and len(v) > 2:
                    result = cget(v, _MISS)
                    if result is not None:
                        slots.append((lst, i, str(i), ref, v, result))
            elif tv is list:
                self._descend(lst, i, v, item_node, ref, i)
            # Numbers, booleans and nulls in a fast array need nothing (see `_value`).

    def _pair(self, lst: list[Any], node: sch.Node, ref: Ref) -> None:
        """A `[name, value]` array (`lst`, at `ref`; `node`: the value's schema), as Sentry's
        PII processor reads any array of two whose first item is a string.

        The value is selected by the name right below the array (`extra.h.authorization`,
        `vars.headers.0.authorization` for pairs in a list), and the denylist and key
        patterns see the name. When nothing there changed the value, Sentry tries both
        items by their index: rules selecting `extra.h.1` then apply to the value, and
        those selecting `extra.h.0` (or `$string`) to the name. The detectors always scan
        the name (Sentry's default rules skip it when the value changed: stricter here).
        A container value is walked once, below the name.
        """
        name = lst[0]
        outer = self.hit
        self.hit = False
        self._value(lst, 1, lst[1], node, ref, name, name, 1)
        hit = self.hit
        self.hit = outer
        if not hit:
            self._value(lst, 0, name, node, ref, 0, None)
        elif node.pii == PII_TRUE and not node.flags and name not in self._clean and len(name) > 2:
            found = self._cget(name, _MISS)
            if found is not None:
                self.slots.append((lst, 0, "0", ref, name, found))

    def _pairlist(self, lst: list[Any], node: sch.Node, item_node: sch.Node, ref: Ref) -> None:
        """The items of one of Sentry's pair-list fields (headers, cookies, query string,
        tags): a `[name, value]` pair's value is selected by its name right below the list
        (`$http.headers.authorization`, no index), one whose name is not a string by the
        pair's index (`request.headers.0`); the name is a key, never scanned or rewritten.
        `{"key": name, "value": ...}` objects (not a form Sentry reads here) are read the
        same way; anything else by its index."""
        for i, v in enumerate(lst):
            tv = type(v)
            if tv is list and len(v) == 2:
                name = v[0]
                if type(name) is str:
                    self._value(v, 1, v[1], node.child(name), [ref, i, None], name, name)
                else:
                    self._value(v, 1, v[1], item_node, [ref, i, None], i, None)
            elif tv is dict and _is_pair(v):
                name = v["key"]
                self._value(v, "value", v["value"], node.child(name), [ref, i, None], name, name)
            else:
                self._value(lst, i, v, item_node, ref, i, None)

    def _kv(self, lst: list[Any], i: int, obj: dict[str, Any], item_np: NodePlan, ref: Ref) -> None:
        """A `{"key": name, "value": ...}` object at `lst[i]` outside pair-list fields: an
        object as Sentry sees it (`extra.attrs.0.key`, `extra.attrs.0.value`), except that
        the denylist and key patterns see the value under the name (`{"key": "password",
        "value": ...}` is filtered)."""
        node = item_np.node
        slow = self.slow
        if slow or self.local:
            # Rules on the object itself (`extra.attrs.0`, `$object`): only removal applies
            # to a container; a safe one is walked by `_selected`.
            if slow:
                self.states.append((i, node.typesets[dict]))
                try:
                    done = self._selected(lst, i, obj, node, ref, None, _NONE)
                finally:
                    self.states.pop()
            else:
                rules = self.p.local_rules(node, dict, True)
                done = bool(rules) and self._apply_rules(lst, i, obj, ref, None, rules)
            if done:
                return
        inner: Ref = [ref, i, None]
        if slow:
            self.states.append((i, node.typesets[dict]))
        name = obj["key"]
        self._value(obj, "key", name, node.child("key"), inner, "key", "key")
        self._value(obj, "value", obj["value"], node.child("value"), inner, "value", name)
        if slow:
            self.states.pop()

    def _list_other(self, lst: list[Any], mode: int, item_np: NodePlan, ref: Ref) -> None:
        """The items of a non-empty array that is not `_LIST_FAST` (nor pairs)."""
        item_node = item_np.node
        if mode == _LIST_RULED:
            # Objects as in a fast list when no rule applies to them, the rest by `_value`.
            objects = not self.p.local_rules(item_node, dict, True)
            for i, v in enumerate(lst):
                if type(v) is dict and (objects or _is_pair(v)):
                    self._list_item(lst, i, v, item_np, ref)
                else:
                    self._value(lst, i, v, item_node, ref, i, None)
            return
        if mode == _LIST_TRACKED and not self.anchored:
            for i, v in enumerate(lst):
                tv = type(v)
                if tv is str:
                    if v not in self._clean and len(v) > 2:
                        result = self._cget(v, _MISS)
                        if result is not None:
                            self.slots.append((lst, i, str(i), ref, v, result))
                elif tv is dict and _is_pair(v):
                    self._kv(lst, i, v, item_np, ref)
                elif tv is dict or tv is list:
                    self._descend(lst, i, v, item_node, ref, i)
            return
        # `_LIST_SLOW`, and `_LIST_TRACKED` below an anchor.
        pairs = item_node.pii != PII_FALSE
        for i, v in enumerate(lst):
            if pairs and type(v) is dict and _is_pair(v):
                self._kv(lst, i, v, item_np, ref)
            else:
                self._value(lst, i, v, item_node, ref, i, None)

    def _list_item(
        self, lst: list[Any], i: int, v: dict[str, Any], item_np: NodePlan, ref: Ref
    ) -> None:
        """An object in a list of a fast list (see `_list`)."""
        if _is_pair(v):
            self._kv(lst, i, v, item_np, ref)
        else:
            self._dict(v, item_np, [ref, i, None])

    def _attrs(self, d: dict[str, Any], ref: Ref) -> None:
        """Sentry attributes: `{name: {"value": ..., "type": ...}}`; the name is the key
        the denylist sees."""
        if not self.attrs_fast:
            for name, attr in d.items():
                self._attr(d, name, attr, ref)
            return
        plain = self._plain
        clean = self._clean
        cget = self._cget
        slots = self.slots
        track = self.track
        applied = 0
        for name, attr in d.items():
            try:
                value = attr["value"]
                # The common case first: a string seen before and clean (`clean` holds
                # strings only), under a name that is not denylisted.
                if value in clean and name in plain:
                    continue
            except (KeyError, TypeError):
                # No object with a "value", or a value that is an array or an object.
                self._attr(d, name, attr, ref)
                continue
            if type(attr) is dict:
                if name in plain:
                    if type(value) is str:
                        if len(value) > 2:
                            found = cget(value, _MISS)
                            if found is _MISS or (found is not None and track):
                                slots.append(
                                    (attr, "value", "value", [ref, name, None], value, found)
                                )
                            elif found is not None:
                                # Nothing to record (logs, spans): apply it now, in any order.
                                attr["value"] = found[0]
                                applied += 1
                        continue
                    if type(value) is not dict and type(value) is not list:
                        continue  # a number, boolean or null
                elif name in self.p._ip_keys:
                    # As `_attr` does: the attribute goes, whatever its value.
                    self._remove(d, name, ref, "@anything:remove")
                    continue
            self._attr(d, name, attr, ref)
        self.changes += applied

    def _attr(self, d: dict[str, Any], name: str, attr: Any, ref: Ref) -> None:
        """One attribute of `_attrs`, any case."""
        if type(attr) is dict:
            value = attr.get("value", _MISS)
            if value is not _MISS:
                verdict = self.p.key_verdict(name) if type(name) is str else _NONE
                slow = self.slow
                if verdict == _NONE and not slow and not self.local_any:
                    tv = type(value)
                    if tv is str:
                        if len(value) > 2:
                            found = self._cget(value, _MISS)
                            if found is not None:
                                self.slots.append(
                                    (attr, "value", "value", [ref, name, None], value, found)
                                )
                        return
                    if tv is not dict and tv is not list:
                        return
                if verdict == _IP:
                    self._remove(d, name, ref, "@anything:remove")
                    return
                anchor = False
                if slow:
                    self.states.append((name, sch.ANY.typesets[dict]))
                    if self.anchors and type(name) is str and name.lower() in self.anchors:
                        anchor = True
                        self.anchored += 1
                self._value(attr, "value", value, sch.ANY, [ref, name, None], "value", name)
                if slow:
                    self.states.pop()
                    if anchor:
                        self.anchored -= 1
                return
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
        alt: int | None = None,
    ) -> None:
        """Process one value; `ckey` is where it lives, `seg` its selector segment, `key` the
        name the denylist sees (a pair's or attribute's name). `alt`: a pair's value (see
        `_pair`), selected by its index `alt` when nothing selected by `seg` changed it;
        `hit` is set when something did."""
        tv = type(value)
        flags = node.flags
        pii = node.pii
        p = self.p
        if pii == PII_FALSE and not (flags & sch.IP_FIELD):
            if tv is dict or tv is list:
                self._descend(container, ckey, value, node, ref, seg)
            return
        given = value
        if value is None:
            return
        if flags & sch.SOURCE and p.source_context == "keep":
            return
        verdict = p.key_verdict(key) if key is not None else _NONE
        if p.ip_addresses and (verdict == _IP or flags & sch.IP_FIELD):
            self._remove(container, ckey, ref, "@anything:remove")
            return
        if (
            tv is str
            and node.pairstr is not None
            and (self.slow or self.local)
            and verdict != _FILTER
            and not (flags & sch.COOKIES and p.defaults)
            and self._pair_string(container, ckey, value, node, ref, seg)
        ):
            return
        if flags & sch.COOKIES and p.defaults:
            self._cookies(container, ckey, value, ref)
            return
        if flags & sch.DEFAULT_SAFE:
            verdict = _SAFE
        if self.slow:
            states = self.states
            types = node.typesets.get(tv, node.types)
            states.append((seg, types))
            try:
                done = self._selected(container, ckey, value, node, ref, key, verdict)
            finally:
                states.pop()
            if alt is not None:
                if container[ckey] is not value:
                    self.hit = True
                elif not done:
                    # Sentry's second try: the pair's items by their index (no key).
                    states.append((alt, types))
                    try:
                        done = self._selected(container, ckey, value, node, ref, None, verdict)
                    finally:
                        states.pop()
            if done:
                return
            # Rules may have rewritten the string: the detectors see the rewritten text.
            value = container[ckey]
            tv = type(value)
        elif self.local:
            # What `_selected` does for a local policy, without the path (and so the same
            # rules by a pair's index as by its name: one try is enough).
            rules = p.local_rules(node, tv, True)
            if rules:
                rkey = _header_name(key) if node.header and key is not None else key
                done = self._apply_rules(container, ckey, value, ref, rkey, rules)
                if alt is not None and container[ckey] is not value:
                    self.hit = True
                if done:
                    return
                value = container[ckey]
                tv = type(value)
        if verdict == _FILTER and pii == PII_TRUE and tv is not bool:
            if tv is str:
                self._replace_whole(container, ckey, value, ref, "@password:filter", FILTERED)
            else:
                self._remove(container, ckey, ref, "@password:filter")
            return
        if (
            flags & sch.USER_HASH
            and p.did_hash is not None
            and tv is str
            and value is given
            and verdict == _NONE
            and self._user_hash(container, ckey, value, ref)
        ):
            return
        if tv is str:
            if pii == PII_TRUE and verdict != _SAFE and len(value) > 2:
                found = self._cget(value, _MISS)
                if found is not None:
                    name = ckey if type(ckey) is str else str(ckey)
                    self.slots.append((container, ckey, name, ref, value, found))
            return
        if tv is dict or tv is list:
            self._descend(container, ckey, value, node, ref, seg)

    def _pair_string(
        self, container: Any, ckey: str | int, text: str, node: sch.Node, ref: Ref, seg: str | int
    ) -> bool:
        """A query string or cookies sent as one string (`node.pairstr`), as Sentry's Relay
        reads it: parsed into `[name, value]` pairs (`parse_pairs`), each value selected
        by its name right below the field (`request.query_string.token`; its remarks are
        where the list of pairs holds it, `request.query_string.0.1`). When a rule, the denylist or a detector changed anything, the
        field becomes the list of pairs (as Relay's normalized event holds it) and True is
        returned; otherwise the string is left as it was, for `_value` to go on with."""
        pairs = parse_pairs(node.pairstr or "", text)
        if not pairs:
            return False
        p = self.p
        changes = self.changes
        mark = len(self.slots)
        slow = self.slow
        # Rules on the field itself see it as Relay does: an array (only removal applies).
        key = seg if type(seg) is str else None
        if slow:
            self.states.append((seg, node.typesets[list]))
            try:
                done = self._selected(container, ckey, pairs, node, ref, key, _NONE)
            finally:
                self.states.pop()
        else:
            rules = p.local_rules(node, list, True)
            done = bool(rules) and self._apply_rules(container, ckey, pairs, ref, key, rules)
        if self.changes != changes:
            return True  # removed
        if done:
            return False  # a safe field: the string as before
        inner: Ref = [ref, ckey, None]
        anchor = False
        if slow:
            self.states.append((seg, node.typesets[list]))
            if self.anchors and type(seg) is str and seg.lower() in self.anchors:
                anchor = True
                self.anchored += 1
        try:
            for i, pair in enumerate(pairs):
                # Selected by its name, recorded where the list of pairs holds it
                # (`request.query_string.0.1`), as for a field sent as pairs.
                name = pair[0]
                self._value(pair, 1, pair[1], node.child(name), [inner, i, None], name, name)
        finally:
            if slow:
                self.states.pop()
                if anchor:
                    self.anchored -= 1
        slots = self.slots
        if len(slots) > mark:
            # Whether the detectors change a value decides the field's form: scan now.
            missed = [s[4] for s in slots[mark:] if s[5] is _MISS]
            fresh = scan_texts(p, missed) if missed else {}
            kept = []
            for slot in slots[mark:]:
                found = fresh[slot[4]] if slot[5] is _MISS else slot[5]
                if found is not None:
                    kept.append((*slot[:5], found))
            slots[mark:] = kept
        if self.changes == changes and len(slots) == mark:
            return False
        container[ckey] = pairs
        return True

    def _user_hash(self, container: Any, ckey: str | int, value: str, ref: Ref) -> bool:
        """A user id that the detectors flag becomes the policy's hash of it (see
        `schema.USER_HASH`); True when it did."""
        found = self._cget(value, _MISS)
        if found is _MISS:
            found = scan_texts(self.p, [value])[value]
        if found is None:
            return False
        did_hash = self.p.did_hash
        assert did_hash is not None
        digest = did_hash(value)
        container[ckey] = digest
        self.changes += 1
        if self.track:
            kind = found[1][0][0].split(":", 1)[0]
            self._record(ref, ckey, f"{kind}:hash", "hash", (0, len(digest)), len(value))
        return True

    def _descend(
        self, container: Any, ckey: str | int, value: Any, node: sch.Node, ref: Ref, seg: str | int
    ) -> None:
        if node.dead:
            return
        slow = self.slow
        anchor = False
        if slow:
            self.states.append((seg, node.typesets[type(value)]))
            if self.anchors and type(seg) is str and seg.lower() in self.anchors:
                anchor = True
                self.anchored += 1
        if type(value) is not dict:
            self._list(value, self.p.node_plan(node), [ref, ckey, None])
        elif node.flags & sch.ATTRS:
            self._attrs(value, [ref, ckey, None])
        else:
            self._dict(value, self.p.node_plan(node), [ref, ckey, None])
        if slow:
            self.states.pop()
            if anchor:
                self.anchored -= 1

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
        if p.safe_selectors and pii == PII_TRUE and verdict != _SAFE:
            for sel in p.safe_selectors:
                if matches(sel, states, pii):
                    verdict = _SAFE
                    break
        # Safe fields exempt a value from the denylist and the detectors only: the
        # applications of a PII config still apply (as in Sentry, where safe fields
        # narrow the legacy scrubbing only).
        if p.applications:
            seg = states[-1][0]
            low = seg.lower() if isinstance(seg, str) else None
            rules: list[Rule] = []
            for app, keys in zip(p.applications, p._app_keys, strict=True):
                if keys is not None and low not in keys:
                    continue
                if matches(app.selector, states, pii):
                    rules.extend(app.rules)
            tail = ""
            if rules and node.basename and tv is str:
                # Sentry's file paths (`NativeImagePath`): the rules see the directory
                # only, the file name stays; a bare file name is left alone.
                cut = max(value.rfind("/"), value.rfind("\\"))
                if cut < 0:
                    rules = []
                else:
                    value, tail = value[:cut], value[cut:]
            if rules and node.header and key is not None:
                key = _header_name(key)
            if rules and self._apply_rules(container, ckey, value, ref, key, rules, tail):
                return True
        if verdict == _SAFE:
            value = container[ckey]
            if type(value) is dict or type(value) is list:
                self._descend_safe(container, ckey, value, node, ref)
            return True
        return False

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
        tail: str = "",
    ) -> bool:
        """Apply `rules` to the value at `ckey`; True when it is finished (removed). A
        `tail` (a path's file name, see `_selected`) is kept after the rewritten string,
        and is all that a rule removing the value leaves (without its separator)."""
        if not isinstance(value, str):
            for rule in rules:
                if rule.removes_non_string(key) or rule.type == "anything":
                    self._remove(container, ckey, ref, rule.origin)
                    return True
            return False
        # What a tuple of local rules that never look at the key did to this string before.
        memo = self.p._rule_memos.get(id(rules))
        marks: list[Mark] | None = None
        if memo is not None:
            if value in memo.clean:
                return False
            done = memo.done.get(value)
            if done is not None:
                container[ckey] = done[0]
                self.changes += 1
                if self.track:
                    for origin, method, rng in done[1]:
                        self._record(ref, ckey, origin, method, rng, len(value))
                return False
            marks = []
        current = value
        changed = False
        for rule in rules:
            whole = rule.keyed and (rule.type == "anything" or rule.applies_to_key(key))
            if whole and rule.method == "remove":
                if tail:
                    container[ckey] = tail[1:]
                    self.changes += 1
                    if self.track:
                        self._record(ref, ckey, rule.origin, "remove", None, None)
                else:
                    self._remove(container, ckey, ref, rule.origin)
                return True
            spans = [(0, len(current))] if whole else self.p.rule_spans(rule, current)
            if not spans:
                continue
            new, ranges = rewrite(current, merge_spans(spans), rule.redaction.substitute)
            if self.track:
                for rng in ranges:
                    self._record(ref, ckey, rule.origin, rule.method, rng, len(value))
            if marks is not None:
                marks += ((rule.origin, rule.method, rng) for rng in ranges)
            current = new
            changed = True
        if changed:
            container[ckey] = current + tail
            self.changes += 1
        if memo is not None:
            memo.put(value, (current, tuple(marks or ())) if changed else None)
        return False

    # --- value detectors ------------------------------------------------------------------------

    def _scan_queued(self) -> None:
        slots = self.slots
        if not slots:
            return
        fresh: dict[str, ScanResult] | None = None
        report = self.redactions if self.report else None
        unchanged = 0
        if not self.meta:
            for container, ckey, _, ref, text, found in slots:
                if found is _MISS:
                    if fresh is None:
                        fresh = self._scan_missed()
                    found = fresh[text]
                    if found is None:
                        unchanged += 1
                        continue
                container[ckey] = found[0]
                if report is not None:
                    for rule, _, _ in found[1]:
                        report.append((ref, ckey, rule, "replace"))
            self.changes += len(slots) - unchanged
            return
        root = self.remarks
        #: The `_meta` object of the last slot's container (slots of one container
        #: are queued one after the other).
        last: Any = _MISS
        node: dict[str, Any] = root
        for container, ckey, name, ref, text, found in slots:
            if found is _MISS:
                if fresh is None:
                    fresh = self._scan_missed()
                found = fresh[text]
                if found is None:
                    unchanged += 1
                    continue
            container[ckey] = found[0]
            if report is not None:
                for rule, _, _ in found[1]:
                    report.append((ref, ckey, rule, "replace"))
            if ref is not last:
                last = ref
                if ref is None:
                    node = root
                else:
                    have = ref[2]
                    if have is None:
                        # Usually the parent's object exists: make this one inline,
                        # with its first remark.
                        parent = ref[0]
                        above = root if parent is None else parent[2]
                        seg = ref[1]
                        if type(seg) is not str:
                            seg = str(seg)
                        if above is not None and seg not in above:
                            node = above[seg] = ref[2] = {name: found[2]}
                            continue
                        have = self._meta_node(ref)
                    node = have
            if name in node:
                _put_leaf(node, name, found[2])
            else:
                node[name] = found[2]
        self.changes += len(slots) - unchanged

    def _scan_missed(self) -> dict[str, ScanResult]:
        """Scan the queued strings not seen before (one joined pass)."""
        return scan_texts(self.p, [slot[4] for slot in self.slots if slot[5] is _MISS])

    # --- results --------------------------------------------------------------------------------

    def write_meta(self, root: dict[str, Any]) -> None:
        """Put the remarks in `root["_meta"]` as Sentry writes them (any `_meta` the
        client sent is gone: the walk removed it)."""
        if self.remarks:
            root[sch.META_KEY] = self.remarks


def _put_leaf(node: dict[str, Any], name: str, leaf: dict[str, Any]) -> None:
    """Add the remarks of the value object `leaf` to `node[name]`, which exists.

    Copy-on-write: neither `leaf` nor what `node[name]` holds is changed in place
    (leaves are shared between payloads). Remarks already there come first and keep
    their `len`.
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
    if len(cur) == 1 and "" in cur:
        # A value's remarks object only, possibly a shared leaf: replaced, not changed.
        node[name] = {"": entry}
    else:
        # The value's object exists for remarks below it (never a shared leaf).
        cur[""] = entry


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


def parse_pairs(form: str, text: str) -> list[list[Any]]:
    """A query string (`form` "query") or cookies ("cookies") sent as one string, as
    Sentry's Relay parses it (`Query::parse`, `Cookies::parse`), as `[name, value]` pairs.

    Query: one leading `?` dropped; `&`-separated, empty parts skipped; split at the
    first `=` (no `=`: the value is empty; an empty name is kept); `+` is a space and
    percent escapes are decoded (invalid UTF-8 becomes U+FFFD), in names and values.
    Cookies: `;`-separated, blank parts skipped; split at the first `=`, name and value
    trimmed, then percent-decoded; a part without `=`, with an empty name or that does not
    decode to UTF-8 is left out (Relay notes an error for it).
    """
    if form == "query":
        if text.startswith("?"):
            text = text[1:]
        return [[k, v] for k, v in parse_qsl(text, keep_blank_values=True)]
    out: list[list[Any]] = []
    for part in text.split(";"):
        name, eq, value = part.partition("=")
        name = name.strip()
        if not eq or not name:
            continue
        try:
            out.append([unquote(name, errors="strict"), unquote(value.strip(), errors="strict")])
        except UnicodeDecodeError:
            continue
    return out


def _is_pair(obj: dict[str, Any]) -> bool:
    """Whether `obj` is a `{"key": name, "value": value}` pair (the name is what the
    denylist sees)."""
    return len(obj) == 2 and type(obj.get("key")) is str and "value" in obj


def _header_name(name: str) -> str:
    """A header name as Sentry normalizes it: each word's first letter upper case, the
    rest as sent (`x-api-key` -> `X-Api-Key`, `WWW-Authenticate` unchanged)."""
    return "-".join(word[:1].upper() + word[1:] for word in name.split("-"))


def _valid_ip(value: Any) -> bool:
    """Whether a `user.ip_address` is an address (or Sentry's `{{auto}}`)."""
    if type(value) is not str:
        return False
    if value == "{{auto}}":
        return True
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


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
