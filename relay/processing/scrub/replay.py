"""Session replay payloads: recordings, and the replay videos of mobile SDKs.

    replay_recording  a header line (`{"segment_id":0}`), then the rrweb events as
                      JSON, plain or zlib-compressed. The header is walked (or, not
                      JSON, scanned as text); the events are walked, in pieces when
                      deeper than the envelope depth limit (see `deep`: DOM snapshots
                      are), and compressed again when they came compressed.
    replay_video      a MessagePack map of `replay_event` (the replay event's JSON),
                      `replay_recording` (a recording as above) and `replay_video`
                      (the video, binary, kept). The event is walked as a
                      `replay_event` item, the recording as above, and the map is
                      encoded again with these three keys only (as Sentry's Relay
                      does), so nothing unread goes along.

What cannot be read (neither JSON nor zlib, cut short, not MessagePack, a key
missing) raises `Unreadable`: the caller drops it.
"""

from __future__ import annotations

import zlib
from typing import TYPE_CHECKING, Any

import msgspec
import orjson

from relay.processing.scrub.content import Unreadable
from relay.processing.scrub.deep import walk_deep
from relay.processing.scrub.native import decode_raw_map, raw_string
from relay.processing.scrub.walker import Redaction
from relay.protocol.envelope import MAX_JSON_DEPTH, has_duplicate_keys, json_exceeds_depth

if TYPE_CHECKING:
    from relay.processing.scrub.scrubber import Scrubber

#: The most a compressed recording may inflate to. Recordings are walked on the event
#: loop (about a quarter of a second per MiB on the benchmark host); a larger one is
#: `Unreadable`, so dropped, rather than hold every other request for seconds.
MAX_INFLATE = 8 * 1024 * 1024
_VIDEO_KEYS = ("replay_event", "replay_recording", "replay_video")

Scrubbed = tuple[bytes | None, list[Redaction]]


def scrub_recording(scrubber: Scrubber, payload: bytes, index: int, want: bool) -> Scrubbed:
    """A `replay_recording` payload: its new bytes (None: unchanged) and redactions."""
    nl = payload.find(b"\n")
    head, body = (b"", payload) if nl < 0 else (payload[: nl + 1], payload[nl + 1 :])
    new_head, redactions = _scrub_header_line(scrubber, head, index, want)
    new_body = None
    if body.strip():
        compressed = body.lstrip()[:1] not in (b"[", b"{")
        if not compressed and len(body) > MAX_INFLATE:
            raise Unreadable(f"the recording is larger than {MAX_INFLATE // (1024 * 1024)} MiB")
        events, found = _scrub_events(scrubber, _inflate(body) if compressed else body, index, want)
        redactions += found
        if events is not None:
            new_body = zlib.compress(events) if compressed else events
    if new_head is None and new_body is None:
        return None, redactions
    return (new_head or head) + (body if new_body is None else new_body), redactions


def scrub_video(scrubber: Scrubber, payload: bytes, index: int, want: bool) -> Scrubbed:
    """A `replay_video` payload: its new bytes (None: unchanged) and redactions."""
    parts = video_parts(payload)
    event, found = _scrub_replay_event(scrubber, parts["replay_event"], index, want)
    redactions = [r._replace(path=f"replay_event.{r.path}") for r in found]
    recording, found = scrub_recording(scrubber, parts["replay_recording"], index, want)
    redactions += [r._replace(path=f"replay_recording.{r.path}") for r in found]
    out = msgspec.msgpack.encode(
        {
            "replay_event": event,
            "replay_recording": parts["replay_recording"] if recording is None else recording,
            "replay_video": parts["replay_video"],
        }
    )
    return (None if out == payload else out), redactions


def video_parts(payload: bytes) -> dict[str, bytes]:
    """The three byte strings of a replay video's MessagePack map.

    The map's values are first taken as undecoded slices, and each of the three is then
    decoded only as a string: anything else in the map is never built (a MessagePack
    array of nils would take 8 bytes of memory per byte of payload)."""
    value = decode_raw_map(payload, "the replay video")
    parts: dict[str, bytes] = {}
    for key in _VIDEO_KEYS:
        raw = value.get(key)
        part = None if raw is None else raw_string(raw)
        if part is None:
            raise Unreadable(f"the replay video has no `{key}` bytes")
        parts[key] = part
    return parts


def _scrub_replay_event(
    scrubber: Scrubber, raw: bytes, index: int, want: bool
) -> tuple[bytes, list[Redaction]]:
    """The replay event of a replay video, walked as a `replay_event` item."""
    event = _load_json(raw, "replay event")
    if not isinstance(event, dict):
        raise Unreadable("the replay event is not a JSON object")
    if json_exceeds_depth(raw):
        raise Unreadable(f"the replay event is nested deeper than {MAX_JSON_DEPTH} levels")
    _, redactions = scrubber.walk_payload(event, "replay_event", item=index, report=want)
    return orjson.dumps(event), redactions


def _scrub_header_line(scrubber: Scrubber, head: bytes, index: int, want: bool) -> Scrubbed:
    """The recording's header line: walked when it is a small JSON object, else its text
    scanned; new bytes (with the line feed) or None."""
    line = head.rstrip(b"\r\n")
    if not line.strip():
        return None, []
    try:
        value = orjson.loads(line)
    except orjson.JSONDecodeError:
        value = None
    if isinstance(value, dict) and not json_exceeds_depth(line):
        changed, redactions = scrubber.walk_payload(
            value, "replay_recording", item=index, report=want
        )
        if changed or has_duplicate_keys(line):
            return orjson.dumps(value) + head[len(line) :], redactions
        return None, []
    text = line.decode("utf-8", "surrogateescape")
    new, changes = scrubber.scrub_text_report(text)
    if not changes:
        return None, []
    redactions = [
        Redaction("<header line>", rule, "replace", index, "replay_recording")
        for rule, _ in (changes if want else [])
    ]
    return new.encode("utf-8", "surrogateescape") + head[len(line) :], redactions


def _inflate(body: bytes) -> bytes:
    """The zlib-compressed recording `body`, inflated (at most `MAX_INFLATE` bytes)."""
    inflater = zlib.decompressobj()
    try:
        raw = inflater.decompress(body, MAX_INFLATE)
    except zlib.error:
        raise Unreadable("the recording is neither JSON nor zlib-compressed JSON") from None
    if inflater.unconsumed_tail:
        raise Unreadable(f"the recording inflates past {MAX_INFLATE // (1024 * 1024)} MiB")
    if not inflater.eof:
        raise Unreadable("the recording's zlib stream is cut short")
    if inflater.unused_data.strip():
        raise Unreadable("the recording has bytes after its zlib stream")
    return raw


def _scrub_events(scrubber: Scrubber, raw: bytes, index: int, want: bool) -> Scrubbed:
    """The recording's JSON: new text (None: unchanged) and redactions."""
    data = _load_json(raw, "recording")
    if not isinstance(data, list | dict):
        raise Unreadable("the recording is not a JSON array")
    if json_exceeds_depth(raw):
        return walk_deep(scrubber, data, raw, "replay_recording", index, want)
    changed, redactions = scrubber.walk_payload(data, "replay_recording", item=index, report=want)
    if changed or has_duplicate_keys(raw):
        # Duplicate keys: the walk saw only the last of each; forward what it saw.
        return orjson.dumps(data), redactions
    return None, []


def _load_json(raw: bytes, what: str) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise Unreadable(f"the {what} is not JSON (or nested past 1024 levels)") from None
