"""What the walker knows about the shape of Sentry payloads.

A `Node` says, for one position in a payload, which Sentry value types it has (for
`$frame`, `$http`, `$user`... selectors) and whether it may hold PII:

    PII_TRUE   scrubbed by every default rule and matched by `**` and `$string`
    PII_MAYBE  left alone by default rules; only specific selectors reach it
               (`$frame.abs_path`), as in Sentry
    PII_FALSE  never touched: ids, timestamps, releases, versions, SDK info, line numbers

Unknown keys take the parent's `other` node; anything not described is PII_TRUE, so
new fields are scrubbed rather than trusted.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from relay.processing.scrub.selectors import PII_FALSE, PII_MAYBE, PII_TRUE

#: `flags` bits.
SKIP = 1  # leave the whole subtree alone (the envelope's `dsn`)
SOURCE = 2  # source context lines (policy decides)
ATTRS = 4  # Sentry attributes: {name: {"type": ..., "value": ...}}
COOKIES = 8  # every value is filtered
IP_FIELD = 16  # removed when `ip_addresses` is on
CLIENT_META = 32  # a client's `_meta`: kept live so that the walker meets it, and drops it
DEFAULT_SAFE = 64  # a safe field: no denylist, no detectors; rules still apply (User-Agent)
#: A user's distinct id (sessions' `did`): what a value detector flags in it makes the
#: whole value the policy's keyed hash of it (`Policy.did_hash`), not a placeholder,
#: so that distinct users stay distinct; a rule that changes the value wins.
USER_HASH = 128

#: The key of Sentry's metadata tree (remarks, errors, original values).
META_KEY = "_meta"

_BASIC_TYPES = {
    str: "string",
    int: "number",
    float: "number",
    bool: "boolean",
    dict: "object",
    list: "array",
}


@dataclass(eq=False, slots=True)
class Node:
    """Schema of one payload position (see module docstring)."""

    pii: int = PII_TRUE
    types: frozenset[str] = frozenset()
    children: dict[str, Node] = field(default_factory=dict)
    other: Node | None = None
    items: Node | None = None
    flags: int = 0
    typesets: dict[type, frozenset[str]] = field(init=False, default_factory=dict)
    #: Nothing at or below this position is ever touched (set by `finish`).
    dead: bool = field(init=False, default=False)
    #: For a PII_FALSE object whose unknown keys are dead: the keys worth visiting.
    live: tuple[str, ...] | None = field(init=False, default=None)
    #: A file path (Sentry's `NativeImagePath`): rules never touch its file name.
    basename: bool = field(init=False, default=False)
    #: One of Sentry's pair-list fields (headers, cookies, query string, tags): a
    #: `[name, value]` pair's value is selected by its name right below the list, without
    #: its index, and the name is a key (never scanned nor rewritten).
    pairlist: bool = field(init=False, default=False)
    #: A pair-list field that Sentry also reads from one string (`"a=1&b=2"`,
    #: `"sid=abc; theme=dark"`): "query" or "cookies" (see `walker.parse_pairs`).
    pairstr: str | None = field(init=False, default=None)
    #: Children are named case-insensitively (header names): `children` keys are lowercase.
    fold: bool = field(init=False, default=False)
    #: A header's value: key patterns (`redact_pair`, `password`) see the header's name as
    #: Sentry normalizes it (`x-api-key` -> `X-Api-Key`).
    header: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        self.typesets = {t: self.types | {name} for t, name in _BASIC_TYPES.items()}

    def child(self, key: str) -> Node:
        found = self.children.get(key.lower() if self.fold else key)
        if found is not None:
            return found
        return self.other if self.other is not None else self

    def item(self) -> Node:
        return self.items if self.items is not None else self.child("")


def _n(
    pii: int = PII_TRUE,
    types: tuple[str, ...] = (),
    children: dict[str, Node] | None = None,
    other: Node | None = None,
    items: Node | None = None,
    flags: int = 0,
) -> Node:
    return Node(pii, frozenset(types), children or {}, other, items, flags)


#: Any JSON below this point may hold PII.
ANY = _n()
ANY.other = ANY
ANY.items = ANY
#: Nothing below this point is PII.
NONE = _n(PII_FALSE)
NONE.other = NONE
NONE.items = NONE
F = NONE
MAYBE = _n(PII_MAYBE)
SKIPPED = _n(PII_FALSE, flags=SKIP)
#: Where payloads carry their `_meta`: never trusted, as it may hold original values
#: (`val`); the walker removes it before writing remarks of its own.
DROPPED_META = _n(PII_FALSE, flags=CLIENT_META)
IP = _n(flags=IP_FIELD)
#: A file path, pii "maybe": frames' `filename` / `abs_path`, images' `code_file` /
#: `debug_file`. Rules that select it rewrite the directory and keep the file name.
PATH = _n(PII_MAYBE)
PATH.basename = True


def _obj(types: tuple[str, ...] = (), /, **children: Node) -> Node:
    return _n(PII_TRUE, types, dict(children), ANY)


def _values(item: Node) -> Node:
    """Sentry's `{"values": [...]}` wrapper, also accepted as a bare list."""
    wrapper = _obj(values=_n(items=item))
    wrapper.items = item
    return wrapper


FRAME = _obj(
    ("frame",),
    function=F,
    raw_function=F,
    symbol=F,
    module=MAYBE,
    package=F,
    filename=PATH,
    abs_path=PATH,
    lineno=F,
    colno=F,
    in_app=F,
    instruction_addr=F,
    addr_mode=F,
    symbol_addr=F,
    image_addr=F,
    function_id=F,
    platform=F,
    trust=F,
    lock=F,
    stack_start=F,
    source_link=F,
    data=F,
    context_line=_n(flags=SOURCE),
    pre_context=_n(items=_n(flags=SOURCE), flags=SOURCE),
    post_context=_n(items=_n(flags=SOURCE), flags=SOURCE),
)
STACKTRACE = _obj(
    ("stacktrace",),
    frames=_n(items=FRAME),
    registers=F,
    lang=F,
    snapshot=F,
    instruction_addr_adjustment=F,
)
MECHANISM = _obj(
    type=F,
    handled=F,
    synthetic=F,
    exception_id=F,
    parent_id=F,
    source=F,
    is_exception_group=F,
    help_link=F,
    meta=F,
)
EXCEPTION = _obj(
    ("exception",),
    type=F,
    module=F,
    thread_id=F,
    mechanism=MECHANISM,
    stacktrace=STACKTRACE,
    raw_stacktrace=STACKTRACE,
)
THREAD = _obj(
    ("thread",),
    id=F,
    crashed=F,
    current=F,
    main=F,
    state=F,
    held_locks=F,
    stacktrace=STACKTRACE,
    raw_stacktrace=STACKTRACE,
)
BREADCRUMB = _obj(("breadcrumb",), timestamp=F, type=F, category=F, level=F, event_id=F, origin=F)
#: `formatted` and `message` are Sentry's `Message` values: `$message` selects them.
LOGENTRY = _obj(("logentry",), formatted=_obj(("message",)), message=_obj(("message",)))
USER = _obj(("user",), ip_address=IP, sentry_user=ANY)


def _pairlist(node: Node) -> Node:
    """Mark `node` as one of Sentry's pair-list fields (see `Node.pairlist`)."""
    node.pairlist = True
    return node


def _pairstr(node: Node, form: str) -> Node:
    """Mark `node` as a pair list that may be sent as one string (see `Node.pairstr`)."""
    node.pairstr = form
    return _pairlist(node)


def _header(node: Node) -> Node:
    """Mark `node` as a header's value (see `Node.header`)."""
    node.header = True
    return node


def _headers(**children: Node) -> Node:
    """Sentry's `Headers`: a pair list whose names are case-insensitive."""
    node = _pairlist(_n(PII_TRUE, (), children, _header(_n(other=ANY, items=ANY))))
    node.fold = True
    return node


#: Sentry's `Cookies`: every value is filtered by the default scrubbing.
COOKIE_JAR = _pairstr(_n(other=ANY, items=ANY, flags=COOKIES), "cookies")
REQUEST = _obj(
    ("request",),
    method=F,
    inferred_content_type=F,
    api_target=F,
    body_size=F,
    protocol=F,
    cookies=COOKIE_JAR,
    env=_obj(REMOTE_ADDR=IP),
    # As in Sentry: headers are PII, the User-Agent exempt from the default scrubbing only
    # (its version numbers look like IP addresses), not from rules; in any case.
    headers=_headers(**{"user-agent": _header(_n(flags=DEFAULT_SAFE))}),
    query_string=_pairstr(_obj(), "query"),
)
TAGS = _pairlist(_obj())
SDK = _n(PII_FALSE, ("sdk",), {"client_ip": IP}, NONE)
ATTRIBUTES = _n(flags=ATTRS)
TRACE_CONTEXT = _obj(
    trace_id=F,
    span_id=F,
    parent_span_id=F,
    op=F,
    status=F,
    origin=F,
    type=F,
    sampled=F,
    exclusive_time=F,
    client_sample_rate=F,
    dynamic_sampling_context=F,
)
#: Sentry's `ResponseContext` (`contexts.response`): headers and cookies as the request's.
RESPONSE_CONTEXT = _obj(headers=_headers(), cookies=COOKIE_JAR)
CONTEXTS = _obj(trace=TRACE_CONTEXT, response=RESPONSE_CONTEXT)
#: A span link: the linked span's ids, and attributes as free-form as the span's own.
SPAN_LINK = _obj(trace_id=F, span_id=F, sampled=F, attributes=ATTRIBUTES)
SPAN = _obj(
    ("span",),
    timestamp=F,
    start_timestamp=F,
    end_timestamp=F,
    exclusive_time=F,
    op=F,
    span_id=F,
    parent_span_id=F,
    trace_id=F,
    segment_id=F,
    is_segment=F,
    is_remote=F,
    status=F,
    origin=F,
    same_process_as_parent=F,
    hash=F,
    sampled=F,
    kind=F,
    received=F,
    measurements=F,
    _metrics_summary=F,
    profile_id=F,
    links=_n(items=SPAN_LINK),
    attributes=ATTRIBUTES,
    sentry_tags=_obj(**{"user.ip": IP}),
)

_EVENT_FALSE = (
    "event_id",
    "timestamp",
    "start_timestamp",
    "received",
    "release",
    "dist",
    "environment",
    "platform",
    "level",
    "logger",
    "type",
    "version",
    "fingerprint",
    "modules",
    "measurements",
    "breakdowns",
    "transaction_info",
    "errors",
    "key_id",
    "project",
    "grouping_config",
    "_metrics",
    "_dsc",
    "check_in_id",
    "monitor_slug",
    "status",
    "duration",
    "monitor_config",
    "segment_id",
    "replay_id",
    "replay_type",
    "replay_start_timestamp",
    "segment_count",
    "trace_ids",
    "error_ids",
)
#: Sentry's `debug_meta.images`: only the module paths may be selected (pii "maybe").
DEBUG_META = _n(
    PII_FALSE,
    children={
        "images": _n(
            PII_FALSE,
            items=_n(PII_FALSE, children={"code_file": PATH, "debug_file": PATH}, other=NONE),
        )
    },
    other=NONE,
)
EVENT = _obj(
    ("event",),
    **{name: NONE for name in _EVENT_FALSE},
    debug_meta=DEBUG_META,
    tags=TAGS,
    _meta=DROPPED_META,
    sdk=SDK,
    user=USER,
    request=REQUEST,
    contexts=CONTEXTS,
    exception=_values(EXCEPTION),
    threads=_values(THREAD),
    breadcrumbs=_values(BREADCRUMB),
    logentry=LOGENTRY,
    message=_obj(("message", "logentry")),
    stacktrace=STACKTRACE,
    spans=_n(items=SPAN),
)

LOG = _obj(
    ("log",),
    timestamp=F,
    observed_timestamp=F,
    trace_id=F,
    span_id=F,
    level=F,
    severity_number=F,
    severity_text=F,
    attributes=ATTRIBUTES,
    _meta=DROPPED_META,
)
LOG_CONTAINER = _obj(items=_n(items=LOG), version=F)
SPAN_CONTAINER = _obj(items=_n(items=SPAN), version=F)

_SESSION_ATTRS = _obj(release=F, environment=F, ip_address=IP, user_agent=MAYBE)
DID = _n(flags=USER_HASH)
SESSION = _obj(
    sid=F,
    did=DID,
    seq=F,
    init=F,
    timestamp=F,
    started=F,
    duration=F,
    status=F,
    errors=F,
    abnormal_mechanism=F,
    attrs=_SESSION_ATTRS,
)
SESSIONS = _obj(
    aggregates=_n(
        items=_obj(started=F, did=DID, exited=F, errored=F, abnormal=F, crashed=F, unhandled=F)
    ),
    attrs=_SESSION_ATTRS,
)
USER_REPORT = _obj(event_id=F)
PROFILE = _obj(
    profile=NONE,
    debug_meta=NONE,
    measurements=NONE,
    timestamp=F,
    version=F,
    platform=F,
    release=F,
    environment=F,
    event_id=F,
    profile_id=F,
    chunk_id=F,
    client_sdk=NONE,
    runtime=NONE,
    os=NONE,
    duration_ns=F,
)
ENVELOPE_HEADER = _obj(
    event_id=F,
    sent_at=F,
    dsn=SKIPPED,
    sdk=NONE,
    trace=_obj(
        trace_id=F,
        public_key=F,
        release=F,
        environment=F,
        sample_rate=F,
        sample_rand=F,
        sampled=F,
        replay_id=F,
        org_id=F,
    ),
)

#: Item type -> schema of its JSON payload.
ITEM_SCHEMAS: dict[str, Node] = {
    "event": EVENT,
    "transaction": EVENT,
    "feedback": EVENT,
    "replay_event": EVENT,
    "check_in": EVENT,
    "security": ANY,
    "nel": ANY,
    "raw_security": ANY,
    "log": LOG_CONTAINER,
    "otel_log": ANY,
    "span": SPAN,
    "otel_span": ANY,
    "session": SESSION,
    "sessions": SESSIONS,
    "user_report": USER_REPORT,
    "profile": PROFILE,
    "profile_chunk": PROFILE,
    "profile_chunk_ui": PROFILE,
}


def _successors(node: Node) -> list[Node]:
    out = list(node.children.values())
    out.append(node.other if node.other is not None else node)
    if node.items is not None:
        out.append(node.items)
    return out


def finish(*roots: Node) -> None:
    """Mark `dead` subtrees and `live` keys below `roots` (call after building nodes).

    A node is dead when it is skipped (`SKIP`) or is never PII, carries no flag and
    leads only to dead nodes; the walker does not enter dead subtrees at all.
    """
    nodes: list[Node] = []
    seen: set[int] = set()
    stack = list(roots)
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        nodes.append(node)
        stack.extend(_successors(node))
    # Greatest fixpoint: assume dead, then revive whatever can reach PII or a flag.
    for node in nodes:
        node.dead = bool(node.flags & SKIP) or (node.pii == PII_FALSE and not node.flags)
    changed = True
    while changed:
        changed = False
        for node in nodes:
            if node.dead and not node.flags & SKIP and any(not n.dead for n in _successors(node)):
                node.dead = False
                changed = True
    for node in nodes:
        other = node.other if node.other is not None else node
        if node.pii == PII_FALSE and not node.flags and not node.dead and other.dead:
            node.live = tuple(k for k, c in node.children.items() if not c.dead)


def item_schema(item_type: str, payload: object = None) -> Node:
    """The schema for an item type (span containers are recognised by their `items`)."""
    if item_type == "span" and isinstance(payload, dict) and isinstance(payload.get("items"), list):
        return SPAN_CONTAINER
    return ITEM_SCHEMAS.get(item_type, ANY)


finish(ANY, NONE, MAYBE, SKIPPED, IP, ENVELOPE_HEADER, *ITEM_SCHEMAS.values())
