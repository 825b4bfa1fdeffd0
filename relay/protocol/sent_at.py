"""The envelope header's `sent_at`, moved by the time an envelope waited in the relay.

Sentry corrects an SDK's clock by the difference between when it received an envelope
and the `sent_at` the SDK wrote (once that is over 55 minutes). An envelope that waited
in the relay (an upstream outage, the spool replayed after a restart) would have that
wait taken for clock drift, and every timestamp in it moved forward by it. Moving
`sent_at` by the wait keeps the SDK's own drift, and only it, for Sentry to correct.

    shift_sent_at(body, seconds) -> bytes | None    the envelope with `sent_at` moved,
                                                    or None when there is none to move
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson

__all__ = ["shift_sent_at"]


def shift_sent_at(body: bytes, seconds: float) -> bytes | None:
    """`body` (a whole, uncompressed envelope) with its header's `sent_at` `seconds`
    later; None when the header has no `sent_at` that parses (nothing to correct)."""
    end = body.find(b"\n")
    line = body if end < 0 else body[:end]
    try:
        header = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(header, dict) or not isinstance(header.get("sent_at"), str):
        return None
    try:
        sent = datetime.fromisoformat(header["sent_at"])
    except ValueError:
        return None
    if sent.tzinfo is None:
        sent = sent.replace(tzinfo=UTC)
    try:
        moved = sent.astimezone(UTC) + timedelta(seconds=seconds)
    except OverflowError:
        return None
    header["sent_at"] = moved.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    rest = b"" if end < 0 else body[end:]
    return orjson.dumps(header) + rest
