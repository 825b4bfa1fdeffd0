"""Minidump uploads: scrub the dump by its parts, and everything that travels beside it.

A minidump upload is `multipart/form-data`. Its parts, by field name:

    upload_file_minidump    the dump: through the `pii_config` rules that select its parts
                            (stack and heap memory, module paths; see
                            `relay.processing.scrub.minidump_pii`), else as received
    sentry                  the event as JSON: walked as an event
    sentry[user][email]...  event fields as form fields: gathered into one event and
                            walked, so that key-based rules apply to them too (a name
                            nested deeper than `MAX_JSON_DEPTH` refuses the upload)
    __sentry-event          sentry-native's event, MessagePack: walked as an event
    __sentry-breadcrumb1/2  sentry-native's breadcrumbs, MessagePack: walked as
                            breadcrumbs (whatever the `attachments` policy: both are
                            the event's own data, as Sentry merges them into it)
    sentry__1, sentry__2... one event JSON in pieces (Electron splits long ones): joined
                            in their order, walked as an event, and split again into
                            as many pieces
    other file parts        attachments, per the `attachments` policy: by content,
                            JSON walked, text through the value detectors, binary kept;
                            removed under `drop`
    other form fields       the event's `extra.<field name>` to Sentry: walked as that,
                            so that key-based rules apply (a `password` field is
                            filtered); binary ones kept

Every part's `filename` goes through the value detectors. A part that cannot be read
(a native payload that does not decode) is removed rather than forwarded unread.

An upload whose whole body is the dump (`application/octet-stream` or
`application/x-dmp`, as Sentry takes them) is turned into that form first
(`wrap_raw_upload`), with the dump as its only part.

The crash reporter is answered the event's id: the upload's own when it has one, else
a new one that is added to the upload as a `sentry[event_id]` field, so that the event
the upstream makes has that id too (`prepare_minidump_upload`).
"""

from __future__ import annotations

import re
import uuid
from typing import Any

import orjson

from relay.processing.pipeline import ScrubStage
from relay.processing.scrub.content import Text, Unreadable, read_text
from relay.processing.scrub.items import scrub_minidump_bytes, scrub_native
from relay.processing.scrub.native import EVENT_PAYLOAD, FIELD_TYPES, decode_map
from relay.processing.scrub.scrubber import Scrubber
from relay.protocol.envelope import MAX_JSON_DEPTH, Envelope, Item, json_exceeds_depth
from relay.protocol.multipart import MultipartError, Part, boundary_of, join, split

_FIELD_PATH = re.compile(r"\[([^\]]*)\]")
#: A part's file name: `filename="..."`, or RFC 5987's `filename*=charset'lang'...`.
_FILENAMES = (
    re.compile(rb'(filename=")([^"\r\n]*)(")', re.IGNORECASE),
    re.compile(rb"(filename\*=[^'\r\n;]*'[^'\r\n;]*')([^;\r\n]*)()", re.IGNORECASE),
)
_CONTENT_TYPE = re.compile(rb"^content-type:[ \t]*([^\r\n]*)", re.IGNORECASE | re.MULTILINE)
#: The field name of the dump itself.
MINIDUMP_FIELD = "upload_file_minidump"
#: Attachment types of other file parts Sentry recognises by field name.
_ATTACHMENT_TYPES = {"view-hierarchy.json": "event.view_hierarchy"}


#: Content types of an upload whose whole body is the dump (no form), as Sentry takes them.
RAW_CONTENT_TYPES = frozenset({"application/octet-stream", "application/x-dmp"})
#: The first bytes of a minidump (either byte order).
_MINIDUMP_MAGIC = (b"MDMP", b"PMDM")


def is_raw_upload(content_type: str) -> bool:
    """Whether an upload of this Content-Type is the dump alone, not a form."""
    return content_type.partition(";")[0].strip().lower() in RAW_CONTENT_TYPES


def wrap_raw_upload(body: bytes) -> tuple[bytes, str]:
    """A raw dump as the form crash reporters send (its only part the dump, named as
    Sentry names it), and that form's Content-Type; MultipartError when `body` does not
    start like a minidump."""
    if not body.startswith(_MINIDUMP_MAGIC):
        raise MultipartError("the body is not a minidump (it does not start with MDMP)")
    boundary = f"relay-{uuid.uuid4().hex}"
    part = Part(
        f'Content-Disposition: form-data; name="{MINIDUMP_FIELD}"; filename="Minidump"\r\n'
        "Content-Type: application/octet-stream".encode(),
        body,
    )
    return join([part], boundary), f"multipart/form-data; boundary={boundary}"


def prepare_minidump_upload(
    body: bytes, content_type: str, scrubber: ScrubStage | None
) -> tuple[bytes, str]:
    """The upload scrubbed (`scrub_minidump_upload`), and its event id as 32 hex digits.

    The id is the event's own where the upload carries one, as Sentry takes it: the
    `sentry` JSON's `event_id`, a `sentry[event_id]` field or the native event's. Else
    it is a new one, added as a `sentry[event_id]` field, so that the event the upstream
    makes of the upload has the id the crash reporter was answered.
    """
    boundary = boundary_of(content_type)
    parts = _scrub_parts(split(body, boundary), scrubber)
    found = _event_id(parts)
    if found is None:
        found = uuid.uuid4().hex
        # First: of the form fields, the first `sentry` or `sentry[event_id]` decides.
        parts.insert(
            0, Part(b'Content-Disposition: form-data; name="sentry[event_id]"', found.encode())
        )
    elif scrubber is None:
        return body, found
    return join(parts, boundary), found


def _event_id(parts: list[Part]) -> str | None:
    """The upload's event id, where Sentry looks for it: the native event's (the first
    `__sentry-event`), else the first form field named `sentry` (its JSON's `event_id`)
    or `sentry[event_id]`. None when that holds no valid id."""
    for part in parts:
        if FIELD_TYPES.get(part.name or "") == EVENT_PAYLOAD:
            try:
                found = _uuid_hex(decode_map(part.body, "the native event").get("event_id"))
            except Unreadable:
                found = None
            if found is not None:
                return found
            break
    for part in parts:
        if part.filename:
            continue  # a file, not a form field
        if part.name == "sentry[event_id]":
            return _uuid_hex(part.body.decode("utf-8", "replace").strip())
        if part.name == "sentry":
            try:
                event = orjson.loads(part.body)
            except orjson.JSONDecodeError:
                return None
            return _uuid_hex(event.get("event_id") if isinstance(event, dict) else None)
    chunks = _chunks(parts)
    if chunks:
        event = _chunked_event(chunks)
        return _uuid_hex(event.get("event_id")) if event is not None else None
    return None


def _chunk_index(name: str) -> int | None:
    """The index of a `sentry__<n>` field (a piece of one event JSON), else None."""
    rest = name[8:] if name.startswith("sentry__") else ""
    return int(rest) if rest.isascii() and rest.isdigit() and len(rest) <= 9 else None


def _chunks(parts: list[Part]) -> list[Part]:
    """The `sentry__<n>` form fields, in the order Sentry joins them."""
    found = []
    for part in parts:
        if not part.filename:
            index = _chunk_index(part.name or "")
            if index is not None:
                found.append((index, part))
    found.sort(key=lambda pair: pair[0])
    return [part for _, part in found]


def _chunked_event(chunks: list[Part]) -> dict[str, Any] | None:
    """The event JSON the pieces make together, or None when they make none."""
    data = b"".join(part.body for part in chunks)
    try:
        event = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return event if isinstance(event, dict) and not json_exceeds_depth(data) else None


def _uuid_hex(value: object) -> str | None:
    if not isinstance(value, str):
        return None
    try:
        return uuid.UUID(value).hex
    except ValueError:
        return None


def scrub_minidump_upload(body: bytes, content_type: str, scrubber: ScrubStage | None) -> bytes:
    """Scrub every part of a minidump upload (see the module docstring).

    The `sentry` part is an event JSON; `sentry[user][email]`-style fields are gathered
    into one event so that key-based rules (the denylist, selectors) apply to them too.
    """
    if scrubber is None:
        split(body, boundary_of(content_type))  # readable, or MultipartError
        return body
    boundary = boundary_of(content_type)
    return join(_scrub_parts(split(body, boundary), scrubber), boundary)


def _scrub_parts(parts: list[Part], scrubber: ScrubStage | None) -> list[Part]:
    """The parts to forward, scrubbed (as they are without a scrubber). Raises
    MultipartError for a `sentry[...]` field whose name nests deeper than JSON may (400,
    as for a request body that deep)."""
    for part in parts:
        name = part.name or ""
        if (
            not part.filename
            and name.startswith("sentry[")
            and len(_FIELD_PATH.findall(name)) > MAX_JSON_DEPTH
        ):
            raise MultipartError(
                f"a sentry[...] field name is nested more than {MAX_JSON_DEPTH} levels deep"
            )
    if scrubber is None:
        return parts
    fields: dict[str, Any] = {}
    paths: list[tuple[Part, list[str]]] = []
    extra: dict[str, Any] = {}
    extras: list[tuple[Part, str, Text]] = []
    kept: list[Part] = []
    for part in parts:
        name = part.name or ""
        # sentry-native's payloads by their field name, file part or not (read as text,
        # a MessagePack event would pass its key-based rules by).
        if part.filename or name in FIELD_TYPES:
            if _scrub_file(part, name, scrubber):
                kept.append(part)
            continue
        kept.append(part)
        if name == "sentry":
            _scrub_sentry_json(part, scrubber)
        elif name.startswith("sentry["):
            path = _FIELD_PATH.findall(name) or [name]
            value = part.body.decode("utf-8", "replace")
            if _place(fields, path, value):
                paths.append((part, path))
            else:
                # Another field holds this path or a part of it (`sentry[user]` beside
                # `sentry[user][email]`, or the same name twice): scrubbed on its own.
                alone: dict[str, Any] = {}
                _place(alone, path, value)
                scrubber.scrub_event(alone, "event", report=False)
                part.body = _field_bytes(alone, path)
        elif _chunk_index(name) is None:
            text = read_text(part.body)
            if text is None:
                continue  # binary: kept like the dump
            if name in extra:  # the same name twice: scrubbed on its own
                single: dict[str, Any] = {"extra": {name: text.text}}
                scrubber.scrub_event(single, "event", report=False)
                part.body = _extra_bytes(single, name, text)
            else:
                extra[name] = text.text
                extras.append((part, name, text))
    if paths:
        scrubber.scrub_event(fields, "event", report=False)
        for part, path in paths:
            part.body = _field_bytes(fields, path)
    if extras:
        # To Sentry these are the event's `extra`: walked as that, key rules included.
        event: dict[str, Any] = {"extra": extra}
        scrubber.scrub_event(event, "event", report=False)
        for part, name, text in extras:
            part.body = _extra_bytes(event, name, text)
    chunks = _chunks(kept)
    if chunks:
        _scrub_chunks(chunks, scrubber)
    return kept


def _extra_bytes(event: dict[str, Any], name: str, text: Text) -> bytes:
    """The scrubbed `extra.<name>` of `event`, as the field's body (empty when removed)."""
    extra = event.get("extra")
    value = extra.get(name) if isinstance(extra, dict) else None
    return b"" if value is None else text.encode(str(value))


def _scrub_chunks(chunks: list[Part], scrubber: ScrubStage) -> None:
    """The `sentry__<n>` pieces walked as the one event they make, then split again into
    as many pieces (at character boundaries); anything else becomes `{}`."""
    event = _chunked_event(chunks)
    if event is None:
        text = "{}"
    else:
        scrubber.scrub_event(event, "event", report=False)
        text = orjson.dumps(event).decode("utf-8")
    size = -(-len(text) // len(chunks))
    for i, part in enumerate(chunks):
        part.body = text[i * size : (i + 1) * size].encode("utf-8")


def _scrub_sentry_json(part: Part, scrubber: ScrubStage) -> None:
    """The `sentry` part, an event JSON; anything else becomes `{}`."""
    try:
        event = orjson.loads(part.body)
    except orjson.JSONDecodeError:
        event = None
    if isinstance(event, dict) and not json_exceeds_depth(part.body):
        scrubber.scrub_event(event, "event", report=False)
        part.body = orjson.dumps(event)
    else:
        part.body = b"{}"


def _scrub_file(part: Part, name: str, scrubber: ScrubStage) -> bool:
    """Scrub a file part in place; False when it is to be removed."""
    filename = _scrub_filename(part, scrubber)
    if name == MINIDUMP_FIELD:
        # The dump itself: by its parts, as an envelope's `event.minidump` attachment (the
        # `attachments` policy does not apply: the dump is the event).
        if isinstance(scrubber, Scrubber):
            new = scrub_minidump_bytes(scrubber, part.body, filename)
            if new is not None:
                part.body = new
        return True
    kind = FIELD_TYPES.get(name)
    if kind is not None:
        return _scrub_native_part(part, kind, scrubber)
    headers: dict[str, Any] = {
        "type": "attachment",
        "attachment_type": _ATTACHMENT_TYPES.get(name, "event.attachment"),
        "filename": filename,
    }
    ctype = _CONTENT_TYPE.search(part.headers)
    if ctype:
        headers["content_type"] = ctype.group(1).decode("latin-1").strip()
    item = Item(headers, part.body)
    outcome = scrubber.scrub_envelope(Envelope({}, [item]), report=False)
    if outcome.dropped:
        return False
    part.body = item.payload
    return True


def _scrub_native_part(part: Part, kind: str, scrubber: ScrubStage) -> bool:
    """A sentry-native event or breadcrumbs part; False when it cannot be read."""
    if not part.body:
        return True
    if not isinstance(scrubber, Scrubber):
        return False  # only the compiled scrubber reads native payloads
    try:
        new = scrub_native(scrubber, kind, part.body)
    except Unreadable:
        return False
    if new is not None:
        part.body = new
    return True


def _scrub_filename(part: Part, scrubber: ScrubStage) -> str:
    """The part's file names (`filename=`, `filename*=`) through the value detectors,
    rewritten in its headers; the first of them, scrubbed."""
    first = ""
    for pattern in _FILENAMES:
        found = pattern.search(part.headers)
        if found is None:
            continue
        name = found.group(2).decode("utf-8", "surrogateescape")
        new = scrubber.scrub_text(name)
        if new != name:
            encoded = new.encode("utf-8", "surrogateescape").replace(b'"', b"'")
            if found.group(1).endswith(b"'"):  # percent-encoded: no spaces or separators
                encoded = encoded.replace(b" ", b"%20").replace(b";", b"%3B")
            part.headers = part.headers[: found.start(2)] + encoded + part.headers[found.end(2) :]
        first = first or new
    return first


def _place(root: dict[str, Any], path: list[str], value: str) -> bool:
    """Put `value` at `path` in `root`, making objects on the way; False (and nothing
    changed but new empty objects) when a value is already there or on the way."""
    node = root
    for key in path[:-1]:
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        elif not isinstance(child, dict):
            return False
        node = child
    if path[-1] in node:
        return False
    node[path[-1]] = value
    return True


def _field_bytes(root: dict[str, Any], path: list[str]) -> bytes:
    """The (scrubbed) value at `path` in `root`, as the part's body."""
    value: Any = root
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return b"" if value is None else str(value).encode("utf-8")
