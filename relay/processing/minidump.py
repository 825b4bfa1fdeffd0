"""Minidump uploads: scrub the event fields that travel beside the binary dump.

A minidump upload is `multipart/form-data`: the dump itself (and attachments) as
file parts, which are forwarded as they are, and the event data the SDK adds as a
`sentry` JSON part or as `sentry[user][email]`-style form fields, which are not.
"""

from __future__ import annotations

import contextlib
import re
from typing import Any

import orjson

from relay.processing.pipeline import ScrubStage
from relay.protocol.envelope import json_exceeds_depth
from relay.protocol.multipart import Part, boundary_of, join, split

_FIELD_PATH = re.compile(r"\[([^\]]*)\]")


def scrub_minidump_upload(body: bytes, content_type: str, scrubber: ScrubStage | None) -> bytes:
    """Scrub the non-binary parts of a minidump upload; binary parts are kept as they are.

    The `sentry` part is an event JSON; `sentry[user][email]`-style fields are gathered
    into one event so that key-based rules (the denylist, selectors) apply to them too.
    """
    boundary = boundary_of(content_type)
    parts = split(body, boundary)
    if scrubber is None:
        return body
    fields: dict[str, Any] = {}
    paths: list[tuple[Part, list[str]]] = []
    for part in parts:
        name = part.name or ""
        if name == "sentry":
            try:
                event = orjson.loads(part.body)
            except orjson.JSONDecodeError:
                event = None
            if isinstance(event, dict) and not json_exceeds_depth(part.body):
                scrubber.scrub_event(event, "event", report=False)
                part.body = orjson.dumps(event)
            else:
                part.body = b"{}"
        elif name.startswith("sentry[") and not part.filename:
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
        elif not part.filename:
            with contextlib.suppress(UnicodeDecodeError):  # binary: kept like the dump
                part.body = scrubber.scrub_text(part.body.decode("utf-8")).encode("utf-8")
    if paths:
        scrubber.scrub_event(fields, "event", report=False)
        for part, path in paths:
            part.body = _field_bytes(fields, path)
    return join(parts, boundary)


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
