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
            path = _FIELD_PATH.findall(name)
            node = fields
            for key in path[:-1]:
                child = node.get(key)
                node = child if isinstance(child, dict) else node.setdefault(key, {})
            node[path[-1] if path else name] = part.body.decode("utf-8", "replace")
            paths.append((part, path or [name]))
        elif not part.filename:
            with contextlib.suppress(UnicodeDecodeError):  # binary: kept like the dump
                part.body = scrubber.scrub_text(part.body.decode("utf-8")).encode("utf-8")
    if paths:
        scrubber.scrub_event(fields, "event", report=False)
        for part, path in paths:
            value: Any = fields
            for key in path:
                value = value.get(key) if isinstance(value, dict) else None
            part.body = b"" if value is None else str(value).encode("utf-8")
    return join(parts, boundary)
