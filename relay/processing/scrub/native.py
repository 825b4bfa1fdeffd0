"""sentry-native's MessagePack payloads: the event and the breadcrumb files.

Native crash uploads (the minidump endpoint, or envelope attachments of type
`event.payload` / `event.breadcrumbs`) carry the event as one MessagePack map
(`__sentry-event`) and breadcrumbs as `__sentry-breadcrumb1` / `2`: append-only
streams of MessagePack values, one map per breadcrumb, the last one possibly cut
short by the crash. A cut-short tail is left out (it cannot be read); anything else
that does not decode, or is larger than `MAX_BYTES` (Sentry's event size limit; the
stream is split in Python), is `Unreadable`.

Decoded values are made JSON-like for the walker: binary strings are read as UTF-8
text, timestamps become ISO 8601 strings, extension values null, map keys strings.
Values nested deeper than the envelope's JSON depth limit are unreadable, as in JSON.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

from relay.processing.scrub.content import Unreadable
from relay.protocol.envelope import MAX_JSON_DEPTH

#: Attachment types of native payloads, and the multipart field names they come as.
EVENT_PAYLOAD = "event.payload"
BREADCRUMBS = "event.breadcrumbs"
FIELD_TYPES = {
    "__sentry-event": EVENT_PAYLOAD,
    "__sentry-breadcrumb1": BREADCRUMBS,
    "__sentry-breadcrumb2": BREADCRUMBS,
}

#: The largest native payload read.
MAX_BYTES = 1024 * 1024
#: The most values (of any kind, nested ones too) a breadcrumb stream may hold: its
#: splitting reads every value's header in Python (sentry-native keeps 100 breadcrumbs
#: a file; a stream of a million one-byte values would hold the loop for seconds).
MAX_ELEMENTS = 50_000
_FIXED = {0xCA: 5, 0xCB: 9, 0xCC: 2, 0xCD: 3, 0xCE: 5, 0xCF: 9, 0xD0: 2, 0xD1: 3, 0xD2: 5}
_FIXED |= {0xD3: 9, 0xD4: 3, 0xD5: 4, 0xD6: 6, 0xD7: 10, 0xD8: 18}
#: Type byte -> (width of the length field, extra header bytes) for bin, ext and str.
_SIZED = {0xC4: (1, 0), 0xC5: (2, 0), 0xC6: (4, 0), 0xC7: (1, 1), 0xC8: (2, 1), 0xC9: (4, 1)}
_SIZED |= {0xD9: (1, 0), 0xDA: (2, 0), 0xDB: (4, 0)}
#: Type byte -> (width of the count field, values per count) for arrays and maps.
_COUNTED = {0xDC: (2, 1), 0xDD: (4, 1), 0xDE: (2, 2), 0xDF: (4, 2)}


def decode_event(payload: bytes) -> dict[str, Any]:
    """The event of a `__sentry-event` payload: one MessagePack map, decoded at once."""
    if len(payload) > MAX_BYTES:
        raise Unreadable(f"larger than {MAX_BYTES // 1024} KiB")
    value = decode_map(payload, "the native event")
    if _depth_over(value, MAX_JSON_DEPTH):
        raise Unreadable(f"MessagePack nested deeper than {MAX_JSON_DEPTH} levels")
    event: dict[str, Any] = _plain(value)
    return event


def decode_map(payload: bytes, what: str) -> dict[Any, Any]:
    """`payload` as one MessagePack map (raw values); `Unreadable` naming `what` if not."""
    try:
        value = msgspec.msgpack.decode(payload)
    except (msgspec.DecodeError, RecursionError):
        raise Unreadable(f"{what} is not MessagePack") from None
    if not isinstance(value, dict):
        raise Unreadable(f"{what} is not a MessagePack map")
    return value


def decode_raw_map(payload: bytes, what: str) -> dict[str, msgspec.Raw]:
    """`payload` as one MessagePack map with string keys, its values left undecoded
    (slices of `payload`); `Unreadable` naming `what` if not."""
    try:
        return msgspec.msgpack.decode(payload, type=dict[str, msgspec.Raw])
    except msgspec.ValidationError:
        raise Unreadable(f"{what} is not a MessagePack map with string keys") from None
    except msgspec.DecodeError:
        raise Unreadable(f"{what} is not MessagePack") from None


def raw_string(raw: msgspec.Raw) -> bytes | None:
    """An undecoded MessagePack `bin` or `str` value's bytes (UTF-8 for a `str`); None if
    it is another kind of value (which is not decoded)."""
    try:
        return msgspec.msgpack.decode(raw, type=bytes)
    except msgspec.ValidationError:
        pass
    try:
        return msgspec.msgpack.decode(raw, type=str).encode("utf-8")
    except msgspec.ValidationError:
        return None


def _depth_over(root: Any, limit: int) -> bool:
    """Whether containers in `root` nest deeper than `limit` (without recursion)."""
    stack = [(root, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        children = node.values() if isinstance(node, dict) else node
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))
    return False


def decode_stream(payload: bytes) -> tuple[list[Any], int]:
    """The MessagePack values one after another in `payload`, and how many bytes of a
    cut-short last value were left out."""
    if len(payload) > MAX_BYTES:
        raise Unreadable(f"larger than {MAX_BYTES // 1024} KiB")
    values: list[Any] = []
    pos = 0
    budget = [MAX_ELEMENTS]
    while pos < len(payload):
        end = _value_end(payload, pos, budget)
        if end is None:
            if not values:
                raise Unreadable("truncated MessagePack")
            break
        try:
            value = msgspec.msgpack.decode(payload[pos:end])
        except (msgspec.DecodeError, RecursionError):
            raise Unreadable("malformed MessagePack") from None
        values.append(_plain(value))
        pos = end
    return values, len(payload) - pos


def encode_stream(values: list[Any]) -> bytes:
    """`values` as MessagePack, one after another."""
    return b"".join(msgspec.msgpack.encode(v) for v in values)


def _value_end(data: bytes, pos: int, budget: list[int]) -> int | None:
    """Where the MessagePack value at `pos` ends; None when `data` ends first.

    Reads headers only (no values are built), so that a stream can be split into its
    values; raises `Unreadable` for a reserved type byte, nesting past the limit, or
    more elements than `budget` has left (the count is taken from it).
    """
    size = len(data)
    pending = [1]  # values still to read, per open container (the first: the root)
    while pending:
        if pending[-1] == 0:
            pending.pop()
            continue
        pending[-1] -= 1
        budget[0] -= 1
        if budget[0] < 0:
            raise Unreadable(f"more than {MAX_ELEMENTS} MessagePack values")
        if pos >= size:
            return None
        head, children, length = _header(data, pos)
        if pos + head > size:
            return None
        pos += head + length
        if children:
            if children > size - pos:
                return None  # every value takes a byte at least
            if len(pending) > MAX_JSON_DEPTH:
                raise Unreadable(f"MessagePack nested deeper than {MAX_JSON_DEPTH} levels")
            pending.append(children)
    return pos if pos <= size else None


def _header(data: bytes, pos: int) -> tuple[int, int, int]:
    """(header bytes, values inside, payload bytes) of the value whose type byte is at
    `pos`. A length field past the end of `data` reads short; the caller sees it end."""
    b = data[pos]
    if b <= 0x7F or b >= 0xE0 or b in (0xC0, 0xC2, 0xC3):
        return 1, 0, 0
    if b <= 0x8F:
        return 1, 2 * (b & 0x0F), 0
    if b <= 0x9F:
        return 1, b & 0x0F, 0
    if b <= 0xBF:
        return 1, 0, b & 0x1F
    if b in _FIXED:
        return _FIXED[b], 0, 0
    if b in _SIZED:
        width, extra = _SIZED[b]
        return 1 + width + extra, 0, _number(data, pos + 1, width)
    if b in _COUNTED:
        width, per = _COUNTED[b]
        return 1 + width, per * _number(data, pos + 1, width), 0
    raise Unreadable("malformed MessagePack")


def _number(data: bytes, start: int, width: int) -> int:
    field = data[start : start + width]
    return int.from_bytes(field, "big") if len(field) == width else 0


def _plain(root: Any) -> Any:
    """`root` with every value made JSON-like (see the module docstring), in place."""
    root = _scalar(root)
    stack = [root]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if any(type(k) is not str for k in node):
                pairs = list(node.items())
                node.clear()
                node.update((_key(k), v) for k, v in pairs)
            for k, v in node.items():
                if isinstance(v, dict | list):
                    stack.append(v)
                else:
                    node[k] = _scalar(v)
        elif isinstance(node, list):
            for i, v in enumerate(node):
                if isinstance(v, dict | list):
                    stack.append(v)
                else:
                    node[i] = _scalar(v)
    return root


def _scalar(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, msgspec.msgpack.Ext):
        return None
    return value


def _key(key: Any) -> str:
    if isinstance(key, str):
        return key
    if isinstance(key, bytes):
        return key.decode("utf-8", "replace")
    return str(key)
