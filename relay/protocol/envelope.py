"""The Sentry envelope: a JSON header line, then items (header line + payload).

    envelope := header "\\n" (item)*
    item     := item_header "\\n" payload ("\\n" | EOF)

An item header with `length` is followed by exactly that many payload bytes;
without it the payload runs to the next newline (or the end). Header lines we do
not modify are kept byte-for-byte, so unknown item types and unknown header keys
reach the upstream exactly as the SDK wrote them.

A header line with a duplicate key is not kept byte-for-byte: the parsed value
(the last duplicate wins) is what the relay checks and scrubs, so it is also what
it forwards; the upstream never sees a value the relay did not look at.
`has_duplicate_keys` is the same check for payloads.

A header line that ends in a carriage return, a space or a tab is not kept
byte-for-byte either: Sentry refuses a header not followed by a bare newline, so the
relay accepts it and forwards the parsed header on a line of its own.

Refused as Sentry's Relay refuses them (the whole envelope, 400): an envelope header
whose `event_id` is not a UUID or whose `sent_at` is not an RFC 3339 timestamp with an
offset (`is_sent_at`), items of the types Sentry keeps for its own use
(`INTERNAL_TYPES`), and item headers Sentry reads with a type holding another
(`ITEM_HEADER_TYPES`: `item_count` a 32-bit count, `attachment_type`, `content_type`,
`filename` and `platform` strings, `routing_hint` a UUID, flags booleans; null stands for
absent but in flags). Forwarded, such an envelope would be refused upstream after the
SDK was told it was accepted. Other item header keys, and unknown `attachment_type`
names, are forwarded as sent.

JSON nested deeper than `MAX_JSON_DEPTH` levels (Sentry's own parser stops at
the same depth) is refused in headers; `exceeds_depth` is the check for parsed
payloads, which the pipeline drops as `invalid`.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from typing import Any

import orjson

#: Deepest JSON nesting accepted in headers and payloads (arrays and objects).
MAX_JSON_DEPTH = 128
#: Item types Sentry's Relay creates itself and refuses from clients.
INTERNAL_TYPES = frozenset({"integration"})
#: The most a `length` or `item_count` header holds (Sentry reads both as 32-bit counts).
MAX_U32 = 2**32 - 1
_HEX32 = re.compile(r"[0-9a-fA-F]{32}")
#: The last byte of a header line kept byte-for-byte: anything but whitespace.
_TRAILING_SPACE = frozenset(b" \t\r")


class EnvelopeError(ValueError):
    """The body is not a valid envelope; the message says where and why."""


def exceeds_depth(value: Any, limit: int = MAX_JSON_DEPTH) -> bool:
    """True when parsed JSON `value` nests arrays and objects more than `limit` levels deep.

    Iterative, so it is safe on any input; stages that recurse over events (and
    orjson, which cannot serialize past 254 levels) rely on this bound.
    """
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth > limit:
            return True
        for child in children:
            if isinstance(child, dict | list):
                stack.append((child, depth + 1))
    return False


class Item:
    """One envelope item. Mutate through `set_payload` / `set_header`."""

    __slots__ = ("_raw_header", "headers", "payload")

    def __init__(
        self, headers: dict[str, Any], payload: bytes, raw_header: bytes | None = None
    ) -> None:
        self.headers = headers
        self.payload = payload
        self._raw_header = raw_header

    @property
    def type(self) -> str:
        t = self.headers.get("type")
        return t if isinstance(t, str) else ""

    def set_payload(self, payload: bytes) -> None:
        self.payload = payload
        if "length" in self.headers or b"\n" in payload:
            self.headers["length"] = len(payload)
            self._raw_header = None

    def set_header(self, key: str, value: Any) -> None:
        self.headers[key] = value
        self._raw_header = None

    def serialize_header(self) -> bytes:
        raw = self._raw_header
        if raw is not None:
            length = self.headers.get("length")
            if (length is None and b"\n" not in self.payload) or length == len(self.payload):
                return raw
        headers = self.headers
        if "length" in headers or b"\n" in self.payload:
            headers = {**headers, "length": len(self.payload)}
        return orjson.dumps(headers)

    def __repr__(self) -> str:
        return f"Item(type={self.type!r}, {len(self.payload)} bytes)"


class Envelope:
    """Parsed envelope: `headers` (dict) and `items`, serializable back to bytes."""

    __slots__ = ("_raw_header", "headers", "items")

    def __init__(
        self, headers: dict[str, Any], items: list[Item], raw_header: bytes | None = None
    ) -> None:
        self.headers = headers
        self.items = items
        self._raw_header = raw_header

    @property
    def event_id(self) -> str | None:
        value = self.headers.get("event_id")
        return value if isinstance(value, str) else None

    def set_header(self, key: str, value: Any) -> None:
        self.headers[key] = value
        self._raw_header = None

    def pop_header(self, key: str) -> Any:
        if key in self.headers:
            self._raw_header = None
            return self.headers.pop(key)
        return None

    def serialize(self) -> bytes:
        head = self._raw_header if self._raw_header is not None else orjson.dumps(self.headers)
        parts = [head, b"\n"]
        for item in self.items:
            parts += (item.serialize_header(), b"\n", item.payload, b"\n")
        return b"".join(parts)

    def __repr__(self) -> str:
        return f"Envelope(event_id={self.event_id!r}, items={self.items!r})"


_KEEP = b'"[]{}'
_DROP = bytes(b for b in range(256) if b not in _KEEP)
_STRINGS = re.compile(rb'"[^"]*"')
_SQUARE = bytes.maketrans(b"{}", b"[]")
#: Every byte but the openers: what `translate` deletes to leave only `{` and `[`.
_NOT_OPENERS = bytes(b for b in range(256) if b not in b"{[")


def json_exceeds_depth(data: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """`exceeds_depth` for JSON text `data` that orjson parsed, read from the bytes.

    1. No more `{`/`[` bytes (or bytes at all) than the limit: it cannot nest deeper
       (the common case; one `translate` pass keeping only those, ~40% cheaper than
       two `count` passes).
    2. Else drop escaped backslashes and escaped quotes, keep only `"{}[]`, drop the
       strings (now `"..."` with no quote inside) and read `{`/`}` as `[`/`]`: what is
       left is the containers' bracket tree, whose height is the depth. Each pass of
       `replace(b"[]", b"")` takes off the innermost level (at most `limit` passes).
    """
    if len(data) <= limit or len(data.translate(None, _NOT_OPENERS)) <= limit:
        return False
    tree = data.replace(b"\\\\", b"").replace(b'\\"', b"").translate(None, _DROP)
    tree = _STRINGS.sub(b"", tree).translate(_SQUARE)
    depth = 0
    while tree:
        if depth >= limit:
            return True
        tree = tree.replace(b"[]", b"")
        depth += 1
    return False


class _Duplicate(Exception):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise _Duplicate
    return out


def has_duplicate_keys(data: bytes) -> bool:
    """True when the JSON text `data` repeats a key within one object (anywhere).

    Compact JSON that orjson writes back identically has none, so that common case
    costs one serialization; other text is checked with a second parse.
    """
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        value = _UNPARSED
    return _duplicates(data, value)


_UNPARSED = object()


def _duplicates(data: bytes, value: Any) -> bool:
    if value is not _UNPARSED:
        try:
            if orjson.dumps(value) == data.strip():
                return False
        except TypeError:
            pass
    try:
        json.loads(data, object_pairs_hook=_no_duplicates)
    except _Duplicate:
        return True
    except (ValueError, RecursionError):
        return False
    return False


def _load_header(line: bytes, what: str) -> dict[str, Any]:
    try:
        value = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise EnvelopeError(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise EnvelopeError(f"{what} must be a JSON object")
    if json_exceeds_depth(line):
        raise EnvelopeError(f"{what} is nested more than {MAX_JSON_DEPTH} levels deep")
    return value


def is_event_id(value: object) -> bool:
    """A UUID as Sentry reads an event id: 32 hex digits, or a UUID in a common spelling."""
    if not isinstance(value, str):
        return False
    if _HEX32.fullmatch(value):
        return True
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def _check_envelope_header(headers: dict[str, Any]) -> None:
    event_id = headers.get("event_id")
    if event_id is not None and not is_event_id(event_id):
        raise EnvelopeError(f"envelope header event_id is not a UUID: {event_id!r:.80}")
    sent_at = headers.get("sent_at")
    if sent_at is not None and not is_sent_at(sent_at):
        raise EnvelopeError(
            "envelope header sent_at is not an ISO 8601 timestamp with an offset "
            f"(RFC 3339): {sent_at!r:.80}"
        )


#: RFC 3339 as Sentry reads `sent_at`: the offset is required (`Z`, `UTC`, `+hh:mm`,
#: `+hhmm`), the seconds too; `T`, `t` or a space between date and time; numbers need no
#: padding, and whitespace may stand between the parts.
_RFC3339 = re.compile(
    r"\s*([+-]\d{1,6}|\d{1,4})\s*-\s*(\d{1,2})\s*-\s*(\d{1,2})[Tt ]"
    r"\s*(\d{1,2})\s*:\s*(\d{1,2})\s*:\s*(\d{1,2})(?:\.\d+)?\s*"
    r"(?:[Zz]|[Uu][Tt][Cc]|[+\-\u2212](\d{2})\s*:?\s*(\d{2}))\s*",
    re.ASCII,
)
_MONTH_DAYS = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def is_sent_at(value: object) -> bool:
    """A timestamp Sentry reads as an envelope's `sent_at` (RFC 3339, with an offset; a
    timestamp without one is not read as UTC, but refused)."""
    if not isinstance(value, str):
        return False
    m = _RFC3339.fullmatch(value)
    if m is None:
        return False
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
    if not (1 <= month <= 12 and 1 <= day <= _MONTH_DAYS[month - 1]):
        return False
    if month == 2 and day == 29 and not leap:
        return False
    if hour > 23 or minute > 59 or second > 60:  # 60: a leap second
        return False
    off_hours, off_minutes = m.group(7), m.group(8)
    return off_hours is None or (int(off_hours) <= 23 and int(off_minutes) <= 59)


def _is_u32(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_U32


def _is_str(value: object) -> bool:
    return value is None or isinstance(value, str)


def _is_uuid(value: object) -> bool:
    return value is None or is_event_id(value)


def _is_bool(value: object) -> bool:
    return isinstance(value, bool)


#: Item headers Sentry reads with a type, and what it accepts: an item header of another
#: type has Sentry refuse the whole envelope. `null` is read as absent, but in flags.
ITEM_HEADER_TYPES: dict[str, tuple[Callable[[object], bool], str]] = {
    "item_count": (lambda v: v is None or _is_u32(v), "an integer from 0 to 2**32-1"),
    "attachment_type": (_is_str, "a string"),
    "content_type": (_is_str, "a string"),
    "filename": (_is_str, "a string"),
    "platform": (_is_str, "a string"),
    "routing_hint": (_is_uuid, "a UUID"),
    "metrics_extracted": (_is_bool, "true or false"),
    "spans_extracted": (_is_bool, "true or false"),
    "fully_normalized": (_is_bool, "true or false"),
    "sampled": (_is_bool, "true or false"),
}


def _check_item_header(headers: dict[str, Any], index: int) -> None:
    for key, value in headers.items():
        typed = ITEM_HEADER_TYPES.get(key)
        if typed is not None and not typed[0](value):
            raise EnvelopeError(f"item {index} header {key} is not {typed[1]}: {value!r:.80}")


def parse_envelope(data: bytes, *, max_items: int = 10000) -> Envelope:
    """Parse envelope bytes; raise EnvelopeError with a precise message on bad input."""
    if data[:1].isspace():
        data = data.lstrip()  # as Sentry reads it: whitespace before the header is skipped
    if not data.strip():
        raise EnvelopeError("empty envelope")
    end = data.find(b"\n")
    if end < 0:
        end = len(data)
    raw_header: bytes | None = data[:end]
    headers = _load_header(data[:end], "envelope header")
    _check_envelope_header(headers)
    if _duplicates(data[:end], headers) or (end and data[end - 1] in _TRAILING_SPACE):
        raw_header = None
    items: list[Item] = []
    pos = end + 1
    size = len(data)
    while pos < size:
        nl = data.find(b"\n", pos)
        if nl < 0:
            nl = size
        line = data[pos:nl]
        if not line.strip():
            pos = nl + 1
            continue
        index = len(items)
        item_headers = _load_header(line, f"item {index} header")
        item_type = item_headers.get("type")
        if not isinstance(item_type, str) or not item_type:
            raise EnvelopeError(f"item {index} header has no type")
        if item_type in INTERNAL_TYPES:
            raise EnvelopeError(f"item {index} has the type {item_type!r}, which only Sentry sends")
        _check_item_header(item_headers, index)
        pos = min(nl + 1, size)
        length = item_headers.get("length")
        if length is not None:
            if not _is_u32(length):
                raise EnvelopeError(f"item {index} header has an invalid length")
            if pos + length > size:
                raise EnvelopeError(
                    f"item {index} ({item_type}) is truncated: length {length}, {max(size - pos, 0)} bytes left"
                )
            payload = data[pos : pos + length]
            pos += length
            if pos < size:
                if data[pos : pos + 1] != b"\n":
                    raise EnvelopeError(
                        f"item {index} ({item_type}) payload is not followed by a newline"
                    )
                pos += 1
        else:
            nl = data.find(b"\n", pos)
            if nl < 0:
                nl = size
            payload = data[pos:nl]
            pos = nl + 1
        raw_line = None if line[-1] in _TRAILING_SPACE or _duplicates(line, item_headers) else line
        items.append(Item(item_headers, payload, raw_header=raw_line))
        if len(items) > max_items:
            raise EnvelopeError(f"too many items (more than {max_items})")
    return Envelope(headers, items, raw_header=raw_header)


def make_envelope(headers: dict[str, Any], items: list[tuple[dict[str, Any], bytes]]) -> Envelope:
    """Build an envelope from scratch (store endpoint, client reports, tests)."""
    built = []
    for h, payload in items:
        hdr = dict(h)
        hdr["length"] = len(payload)
        built.append(Item(hdr, payload))
    return Envelope(dict(headers), built)
