"""The legacy store endpoint: decode its body and turn the event into an envelope.

Sentry accepts three body shapes on `POST /api/{project_id}/store/`:

- a JSON object;
- base64 of a JSON object;
- base64 of zlib-deflated JSON (old SDKs, without any Content-Encoding header).

Old Python SDKs write `NaN` and `Infinity`, which are not JSON; Sentry reads them
anyway, and so do we (as `null`). Like Sentry, we refuse JSON nested deeper than
`MAX_JSON_DEPTH`, strings with unpaired UTF-16 surrogates (`"\\ud800"`), and an
`event_id` that is not a UUID: `decode_store_body` returns only events that
`store_to_envelope` can convert.

    StoreError(ValueError)   .too_large: the inflated body passed the cap (answer 413)
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import uuid
from typing import Any

import orjson

from relay.protocol.decompress import DecompressionError, TooLarge, make_decompressor
from relay.protocol.envelope import (
    MAX_JSON_DEPTH,
    Envelope,
    exceeds_depth,
    json_exceeds_depth,
    make_envelope,
)

__all__ = ["StoreError", "decode_store_body", "normalize_event_id", "store_to_envelope"]

_HEX32 = re.compile(r"[0-9a-f]{32}")
_WHITESPACE = re.compile(rb"\s+")

#: `type` values of events that Sentry files as security reports.
_SECURITY_EVENT_TYPES = frozenset({"csp", "hpkp", "expectct", "expectstaple"})


class StoreError(ValueError):
    """The store body is not an event; `too_large` is set when it inflates past the cap."""

    def __init__(self, message: str, *, too_large: bool = False) -> None:
        super().__init__(message)
        self.too_large = too_large


def _loads(data: bytes) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        first_error = str(exc)
    # NaN / Infinity from old SDKs, or integers beyond 64 bits.
    try:
        value = json.loads(data, parse_constant=lambda _: None)
    except (ValueError, RecursionError):
        raise StoreError(f"invalid JSON: {first_error}") from None
    if exceeds_depth(value):
        raise StoreError(f"invalid JSON: nested more than {MAX_JSON_DEPTH} levels deep")
    try:
        # The fallback parser lets unpaired surrogates through; orjson (and Sentry) do not.
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise StoreError("invalid JSON: a string holds an unpaired surrogate") from None
    return value


def _inflate(data: bytes, max_decompressed: int) -> bytes:
    dec = make_decompressor("deflate", max_decompressed)
    try:
        dec.feed(data)
        return dec.finish()
    except TooLarge:
        raise StoreError(
            f"decompressed event exceeds {max_decompressed} bytes", too_large=True
        ) from None
    except DecompressionError:
        raise StoreError("body is neither JSON, base64 JSON nor base64 zlib JSON") from None


def decode_store_body(body: bytes, *, max_decompressed: int) -> dict[str, Any]:
    """The event of a store request body (JSON, base64 JSON or base64 zlib JSON).

    `max_decompressed` caps the inflated size of a zlib body. Raises StoreError.
    """
    data = body.strip()
    if not data:
        raise StoreError("empty body")
    if data[:1] != b"{":
        try:
            decoded = base64.b64decode(_WHITESPACE.sub(b"", data), validate=True)
        except (binascii.Error, ValueError):
            raise StoreError("body is neither JSON, base64 JSON nor base64 zlib JSON") from None
        is_json = decoded.lstrip()[:1] == b"{"
        data = decoded if is_json else _inflate(decoded, max_decompressed)
        if len(data) > max_decompressed:
            raise StoreError(f"decoded event exceeds {max_decompressed} bytes", too_large=True)
    event = _loads(data)
    if not isinstance(event, dict):
        raise StoreError("event must be a JSON object")
    if json_exceeds_depth(data):
        raise StoreError(f"invalid JSON: nested more than {MAX_JSON_DEPTH} levels deep")
    if event.get("event_id") is not None and normalize_event_id(event["event_id"]) is None:
        raise StoreError("invalid event id")
    return event


def normalize_event_id(value: object) -> str | None:
    """An event id as 32 lowercase hex digits (UUIDs in any common spelling), else None."""
    if not isinstance(value, str):
        return None
    text = value.strip().lower()
    if _HEX32.fullmatch(text):
        return text
    try:
        return uuid.UUID(text).hex
    except ValueError:
        return None


def _dumps(event: dict[str, Any]) -> bytes:
    try:
        return orjson.dumps(event)
    except TypeError:  # integers beyond 64 bits
        return json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode()


def _item_type(event: dict[str, Any]) -> str:
    event_type = event.get("type")
    if event_type == "transaction":
        return "transaction"
    if isinstance(event_type, str) and event_type in _SECURITY_EVENT_TYPES:
        return "security"
    return "event"


def store_to_envelope(event: dict[str, Any], *, event_id: str | None) -> Envelope:
    """Wrap a store event into an envelope with one `event` (or `transaction`) item.

    The id is `event_id` if given, else the event's own `event_id`, else a new
    uuid4; it is written into the event and the envelope header. Raises
    StoreError when the id given or found is not a UUID.
    """
    if event_id is not None:
        eid = normalize_event_id(event_id)
        if eid is None:
            raise StoreError(f"invalid event id: {event_id!r}")
    elif event.get("event_id") is not None:
        eid = normalize_event_id(event["event_id"])
        if eid is None:
            raise StoreError("invalid event id")
    else:
        eid = uuid.uuid4().hex
    event["event_id"] = eid
    payload = _dumps(event)
    item_headers = {"type": _item_type(event), "content_type": "application/json"}
    return make_envelope({"event_id": eid}, [(item_headers, payload)])
