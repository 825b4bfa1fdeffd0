"""Payloads that used to go out unread: replay videos, deep or unreadable recordings,
sentry-native MessagePack, attachments by content (not content type), filenames, and
the dry run's word on what it did not read."""

from __future__ import annotations

import gzip
import io
import json
import random
import tracemalloc
import zipfile
import zlib
from pathlib import Path
from typing import Any

import msgspec
import orjson
import pytest

from relay.dryrun import dry_run, print_reports
from relay.outcomes import OutcomeKind, Reason
from relay.processing import pipeline
from relay.processing.context import RequestContext
from relay.processing.minidump import scrub_minidump_upload
from relay.processing.scrub import compile_scrubber
from relay.processing.scrub.content import read_text
from relay.protocol.envelope import Envelope, make_envelope, parse_envelope
from relay.protocol.multipart import split
from tests.processing.scrub.conftest import cfg
from tests.support.relay import make_config

EMAIL = "alice.smith@example.com"
CARD = "4111111111111111"
AWS = "AKIAIOSFODNN7EXAMPLE"
SECRETS = (EMAIL.encode(), CARD.encode(), AWS.encode(), b"hunter2")
LOG = f"user {EMAIL} paid with {CARD} password=hunter2 key {AWS}\n"
CTX = RequestContext(42, "abc", "203.0.113.9", "sentry.cocoa/8.40.0")
EVENT_ID = "fe4272fa94e54186acc6e75b1bb21a2c"


def env_of(*items: tuple[dict[str, Any], bytes]) -> Envelope:
    built = make_envelope({"event_id": EVENT_ID}, list(items))
    return parse_envelope(built.serialize())


def scrub(*items: tuple[dict[str, Any], bytes], **policy: Any) -> tuple[Envelope, Any]:
    env = env_of(*items)
    report = compile_scrubber(cfg(**policy) if policy else None).scrub_envelope(env)
    return env, report


def leaks(data: bytes) -> list[bytes]:
    return [s for s in SECRETS if s in data]


def attachment(payload: bytes, **headers: Any) -> tuple[dict[str, Any], bytes]:
    return {"type": "attachment", "filename": "file", **headers}, payload


# --- replay recordings and videos ------------------------------------------------------


def rrweb_events(dom_depth: int) -> list[Any]:
    """A mobile/web replay segment: meta, a full snapshot whose DOM is `dom_depth`
    elements deep (a text node, an input and a `data-password` attribute at the bottom),
    and a breadcrumb."""
    leaf: dict[str, Any] = {
        "type": 2,
        "tagName": "form",
        "attributes": {"data-password": "hunter2"},
        "childNodes": [
            {"type": 3, "textContent": f"Signed in as {EMAIL}", "id": 9000},
            {"type": 2, "tagName": "input", "attributes": {"value": CARD}, "childNodes": []},
        ],
        "id": 8999,
    }
    node = leaf
    for i in range(dom_depth):
        node = {"type": 2, "tagName": "div", "attributes": {"class": f"l{i}"}, "childNodes": [node]}
    return [
        {"type": 4, "timestamp": 1, "data": {"href": "https://shop.example.com/", "width": 390}},
        {"type": 2, "timestamp": 2, "data": {"node": node, "initialOffset": {"top": 0}}},
        {
            "type": 5,
            "timestamp": 3,
            "data": {"tag": "breadcrumb", "payload": {"message": f"login {EMAIL} key {AWS}"}},
        },
    ]


def dumps(value: Any) -> bytes:
    """JSON text of any depth (orjson writes at most 254 levels)."""
    return json.dumps(value, separators=(",", ":")).encode()


def recording(events: list[Any], *, compress: bool = True) -> bytes:
    body = dumps(events)
    return b'{"segment_id":0}\n' + (zlib.compress(body) if compress else body)


def read_recording(payload: bytes) -> tuple[bytes, Any]:
    head, body = payload.split(b"\n", 1)
    if body[:1] not in (b"[", b"{"):
        body = zlib.decompress(body)
    return head, orjson.loads(body)


def depth(value: Any) -> int:
    best, stack = 0, [(value, 1)]
    while stack:
        node, d = stack.pop()
        if isinstance(node, dict | list):
            best = max(best, d)
            stack += [(v, d + 1) for v in (node.values() if isinstance(node, dict) else node)]
    return best


def replay_video(**parts: Any) -> bytes:
    event = {
        "type": "replay_event",
        "replay_id": "a" * 32,
        "segment_id": 0,
        "replay_type": "session",
        "urls": [f"MainActivity?email={EMAIL}"],
        "user": {"email": EMAIL, "ip_address": "203.0.113.77"},
        "tags": {"card": CARD},
    }
    video = b"\x00\x00\x00\x18ftypmp42" + random.Random(7).randbytes(2048)
    fields = {
        "replay_event": orjson.dumps(event),
        "replay_recording": recording(rrweb_events(3), compress=False),
        "replay_video": video,
    }
    fields.update(parts)
    return msgspec.msgpack.encode({k: v for k, v in fields.items() if v is not None})


def test_replay_video_event_and_recording_are_scrubbed_video_kept() -> None:
    payload = replay_video()
    env, report = scrub(({"type": "replay_video"}, payload))
    (item,) = env.items
    out = msgspec.msgpack.decode(item.payload)
    assert list(out) == ["replay_event", "replay_recording", "replay_video"]
    assert out["replay_video"] == msgspec.msgpack.decode(payload)["replay_video"]
    assert leaks(out["replay_event"]) == [] and leaks(out["replay_recording"]) == []
    event = orjson.loads(out["replay_event"])
    assert event["user"] == {"email": "[email]", "ip_address": None}
    assert "_meta" in event  # walked as a replay_event item, remarks and all
    head, events = read_recording(out["replay_recording"])
    assert head == b'{"segment_id":0}' and events[0]["type"] == 4
    assert report.dropped == [] and report.changed_items == [0]


@pytest.mark.parametrize(
    "payload",
    [
        b"\x93\x01\x02\x03",  # MessagePack, but not a map
        b"\x83\xacreplay_event",  # cut short
        replay_video(replay_video=None),  # a key missing
        replay_video(replay_recording=b'{"segment_id":0}\n' + gzip.compress(b"[]")),
        b"not msgpack at all " + EMAIL.encode(),
    ],
)
def test_a_replay_video_that_cannot_be_read_is_dropped_with_an_outcome(payload: bytes) -> None:
    env = env_of(({"type": "replay_video"}, payload))
    prepared = pipeline.prepare(env, CTX)
    out = pipeline.finish(prepared, scrubber=compile_scrubber(None))
    assert out.items == []
    (dropped,) = prepared.scrub_dropped
    assert dropped.outcome.reason == Reason.INVALID_PAYLOAD
    assert dropped.outcome.kind == OutcomeKind.INVALID
    assert dropped.outcome.category == "replay"


def test_a_replay_video_is_read_without_building_what_it_does_not_keep() -> None:
    # Four million nils under a key the relay drops: decoded, they would take 8 bytes
    # each (32 MB); taken as an undecoded slice, the scrub costs the envelope's copies of
    # the payload (building and parsing it: two).
    nils = b"\xdd" + (4_000_000).to_bytes(4, "big") + b"\xc0" * 4_000_000
    fields = msgspec.msgpack.decode(replay_video())
    payload = b"\x84" + msgspec.msgpack.encode(fields)[1:] + msgspec.msgpack.encode("x") + nils
    tracemalloc.start()
    try:
        env, report = scrub(({"type": "replay_video"}, payload))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 3 * len(payload), peak
    (item,) = env.items
    assert list(msgspec.msgpack.decode(item.payload)) == [
        "replay_event",
        "replay_recording",
        "replay_video",
    ]
    assert report.changed_items == [0]


@pytest.mark.parametrize(
    "payload",
    [
        replay_video(replay_video=[None] * 1000),  # not bytes: never decoded
        replay_video(replay_event=7),
        msgspec.msgpack.encode({1: b"", "replay_event": b"{}"}),  # a key not a string
    ],
)
def test_a_replay_video_part_that_is_not_bytes_is_dropped(payload: bytes) -> None:
    env = env_of(({"type": "replay_video"}, payload))
    prepared = pipeline.prepare(env, CTX)
    assert pipeline.finish(prepared, scrubber=compile_scrubber(None)).items == []
    (dropped,) = prepared.scrub_dropped
    assert dropped.outcome.reason == Reason.INVALID_PAYLOAD


@pytest.mark.parametrize("compress", [True, False])
def test_a_recording_deeper_than_the_envelope_limit_is_scrubbed(compress: bool) -> None:
    events = rrweb_events(150)
    assert depth(events) > 300
    env, report = scrub(({"type": "replay_recording"}, recording(events, compress=compress)))
    (item,) = env.items
    head, out = read_recording(item.payload)
    assert leaks(dumps(out)) == []
    assert head == b'{"segment_id":0}'
    assert (item.payload.split(b"\n", 1)[1][:1] == b"[") is not compress
    text = dumps(out)
    assert text.count(b"[email]") == 2 and text.count(b"[Filtered]") == 3
    # Everything else is as it came: same shape, same depth, same other values.
    expected = orjson.loads(
        dumps(events)
        .replace(EMAIL.encode(), b"[email]")
        .replace(CARD.encode(), b"[Filtered]")
        .replace(AWS.encode(), b"[Filtered]")
        .replace(b"hunter2", b"[Filtered]")
    )
    assert out == expected
    paths = [r.path for r in report.redactions]
    assert any(
        p.startswith("1.data.node.childNodes.0.") and p.endswith("textContent") for p in paths
    )


def test_a_deep_container_under_a_denylisted_key_is_filtered_with_it() -> None:
    chain: dict[str, Any] = {"leaf": "nothing to see"}
    inner: dict[str, Any] = {"password": {"bits": [EMAIL, {"more": CARD}]}, "next": chain}
    for _ in range(100):
        chain["c"] = {"text": EMAIL}
        chain = chain["c"]
    node: Any = inner
    for _ in range(62):  # `inner` sits 64 levels down: its containers start new pieces
        node = {"c": node}
    events = [node, {"c": {"c": [f"1 {EMAIL}"]}}]
    env, _ = scrub(({"type": "replay_recording"}, recording(events)))
    _, out = read_recording(env.items[0].payload)
    found = out[0]
    for _ in range(62):
        found = found["c"]
    assert found["password"] == "[Filtered]"
    assert leaks(dumps(out)) == []
    assert depth(out) == depth(events) and out[1] == {"c": {"c": ["1 [email]"]}}


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (gzip.compress(b'[{"type":3,"data":{"text":"' + EMAIL.encode() + b'"}}]'), "gzip"),
        (zlib.compress(b'[{"type":3,"data":{"text":"x"}}]')[:-6], "cut short"),
        (zlib.compress(b"[" * 1100 + b"]" * 1100), "deeper than orjson reads"),
        (zlib.compress(b'"a string: ' + EMAIL.encode() + b'"'), "not an array"),
        (b"[{" + EMAIL.encode(), "not JSON"),
    ],
)
def test_a_recording_that_cannot_be_read_is_dropped(body: bytes, why: str) -> None:
    env, report = scrub(
        ({"type": "replay_recording"}, b'{"segment_id":0}\n' + body),
        ({"type": "replay_event"}, orjson.dumps({"type": "replay_event", "segment_id": 0})),
    )
    assert [i.type for i in env.items] == ["replay_event"], why
    assert [(d.index, d.reason) for d in report.dropped] == [(0, Reason.INVALID_PAYLOAD)]


def test_recording_header_line_is_scrubbed() -> None:
    payload = b'{"segment_id":0,"who":"' + EMAIL.encode() + b'"}\n' + zlib.compress(b"[]")
    env, _ = scrub(({"type": "replay_recording"}, payload))
    assert env.items[0].payload.startswith(b'{"segment_id":0,"who":"[email]"}\n')


# --- sentry-native MessagePack: minidump uploads and envelope attachments ----------------

NATIVE_EVENT = {
    "level": "fatal",
    "platform": "native",
    "user": {"email": EMAIL, "ip_address": "203.0.113.77"},
    "extra": {"card": CARD, "password": "hunter2"},
    "contexts": {"os": {"name": "Linux"}},
}
CRUMBS = [
    {"timestamp": "2026-11-22T02:07:16Z", "message": f"login {EMAIL}", "category": "auth"},
    {"timestamp": "2026-11-22T02:07:17Z", "data": {"url": f"https://x/?key={AWS}"}},
]


def stream(data: bytes) -> list[Any]:
    """The values of a MessagePack stream (each the shortest prefix that decodes)."""
    values = []
    while data:
        for end in range(1, len(data) + 1):
            try:
                values.append(msgspec.msgpack.decode(data[:end]))
            except msgspec.DecodeError:
                continue
            data = data[end:]
            break
        else:
            pytest.fail("not a MessagePack stream")
    return values


def breadcrumb_file(crumbs: list[Any], *, cut: int = 0) -> bytes:
    """sentry-native's breadcrumb file: one MessagePack map per breadcrumb, appended;
    `cut`: bytes of a last breadcrumb written when the process died."""
    tail = msgspec.msgpack.encode({"message": f"half {EMAIL}"})[:cut] if cut else b""
    return b"".join(msgspec.msgpack.encode(c) for c in crumbs) + tail


BOUNDARY = "XyZbOuNdArY"
DUMP = b"MDMP\x93\xa7\x00\x00" + random.Random(3).randbytes(512) + b" HOME=/home/alice "


def multipart(*parts: tuple[str, bytes, str | None]) -> bytes:
    out = b""
    for name, body, filename in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        ctype = "\r\nContent-Type: application/octet-stream" if filename else ""
        out += f"--{BOUNDARY}\r\nContent-Disposition: {disposition}{ctype}\r\n\r\n".encode()
        out += body + b"\r\n"
    return out + f"--{BOUNDARY}--\r\n".encode()


def part_bodies(body: bytes) -> dict[str, bytes]:
    return {p.name or "": p.body for p in split(body, BOUNDARY)}


def upload(body: bytes, **policy: Any) -> bytes:
    scrubber = compile_scrubber(cfg(**policy) if policy else None)
    return scrub_minidump_upload(body, f"multipart/form-data; boundary={BOUNDARY}", scrubber)


PNG = b"\x89PNG\r\n\x1a\n" + random.Random(5).randbytes(300) + EMAIL.encode()


def native_upload() -> bytes:
    return multipart(
        ("upload_file_minidump", DUMP, "minidump.dmp"),
        ("__sentry-event", msgspec.msgpack.encode(NATIVE_EVENT), "__sentry-event"),
        ("__sentry-breadcrumb1", breadcrumb_file(CRUMBS, cut=9), "__sentry-breadcrumb1"),
        ("__sentry-breadcrumb2", breadcrumb_file(CRUMBS[:1]), "__sentry-breadcrumb2"),
        ("app.log", LOG.encode(), f"app-{EMAIL}.log"),
        ("screenshot.png", PNG, "screenshot.png"),
    )


def test_minidump_upload_native_event_breadcrumbs_and_text_files_are_scrubbed() -> None:
    out = upload(native_upload())
    parts = part_bodies(out)
    assert parts["upload_file_minidump"] == DUMP  # the dump goes as it came
    assert parts["screenshot.png"] == PNG  # so do real binaries
    for name in ("__sentry-event", "__sentry-breadcrumb1", "__sentry-breadcrumb2", "app.log"):
        assert leaks(parts[name]) == [], name
    event = msgspec.msgpack.decode(parts["__sentry-event"])
    assert event["user"]["email"] == "[email]" and event["user"]["ip_address"] is None
    assert event["extra"] == {"card": "[Filtered]", "password": "[Filtered]"}
    assert event["contexts"] == {"os": {"name": "Linux"}}
    crumbs = stream(parts["__sentry-breadcrumb1"])
    assert [c.get("message") for c in crumbs] == ["login [email]", None]  # tail left out
    assert (
        parts["app.log"]
        == b"user [email] paid with [Filtered] password=[Filtered] key [Filtered]\n"
    )
    assert EMAIL.encode() not in out.replace(PNG, b"")  # the filename too


def test_breadcrumb_file_is_a_stream_of_maps_without_the_cut_short_tail() -> None:
    payload = breadcrumb_file(CRUMBS, cut=9)
    env, _ = scrub(attachment(payload, attachment_type="event.breadcrumbs"))
    assert stream(env.items[0].payload) == [
        {"timestamp": "2026-11-22T02:07:16Z", "message": "login [email]", "category": "auth"},
        {"timestamp": "2026-11-22T02:07:17Z", "data": {"url": "https://x/?key=[Filtered]"}},
    ]


def test_unreadable_native_part_is_removed_not_forwarded() -> None:
    body = multipart(
        ("upload_file_minidump", DUMP, "minidump.dmp"),
        ("__sentry-event", b"\xc1" + EMAIL.encode(), "__sentry-event"),
    )
    parts = part_bodies(upload(body))
    assert list(parts) == ["upload_file_minidump"]


def test_minidump_upload_attachments_drop_keeps_dump_and_event_scrubbed() -> None:
    parts = part_bodies(upload(native_upload(), attachments="drop"))
    assert sorted(parts) == [
        "__sentry-breadcrumb1",
        "__sentry-breadcrumb2",
        "__sentry-event",
        "upload_file_minidump",
    ]
    assert leaks(parts["__sentry-event"]) == []


@pytest.mark.parametrize("kind", ["event.payload", "event.breadcrumbs"])
def test_native_attachments_in_envelopes_are_decoded_and_scrubbed(kind: str) -> None:
    payload = (
        msgspec.msgpack.encode(NATIVE_EVENT) if kind == "event.payload" else breadcrumb_file(CRUMBS)
    )
    env, report = scrub(
        ({"type": "event"}, orjson.dumps({"message": "crash"})),
        attachment(payload, attachment_type=kind, filename="__sentry-event"),
    )
    assert leaks(env.serialize()) == []
    assert report.dropped == []
    values = stream(env.items[1].payload)
    if kind == "event.payload":
        assert values[0]["user"]["email"] == "[email]"
    else:
        assert [c.get("message") for c in values] == ["login [email]", None]


@pytest.mark.parametrize("kind", ["event.payload", "event.breadcrumbs"])
def test_native_attachment_that_cannot_be_read_is_dropped(kind: str) -> None:
    env, report = scrub(attachment(b"\xc1\xc1" + LOG.encode(), attachment_type=kind))
    assert env.items == []
    assert [d.reason for d in report.dropped] == [Reason.INVALID_PAYLOAD]


# --- attachments by content ----------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    [
        "application/pem-certificate-chain",
        "application/pgp-keys",
        "application/sql",
        "message/rfc822",
        "application/rtf",
        "application/x-www-form-urlencoded",
        "image/png",  # a lying content type: the bytes are text
        None,
    ],
)
def test_text_attachments_are_scanned_whatever_their_content_type(
    content_type: str | None,
) -> None:
    headers = {"content_type": content_type} if content_type else {}
    env, _ = scrub(attachment(LOG.encode(), **headers))
    assert leaks(env.items[0].payload) == []


@pytest.mark.parametrize(
    ("kind", "payload"),
    [
        ("event.applecrashreport", f"Incident Identifier: 1\nProcess: Shop\n{LOG}"),
        ("unreal.logs", f"[2026.11.22-02.07.16:000][  0]LogInit: {LOG}"),
        (
            "unreal.context",
            f'<?xml version="1.0"?><FGenericCrashContext>{LOG}</FGenericCrashContext>',
        ),
    ],
)
def test_text_attachment_types_are_scanned(kind: str, payload: str) -> None:
    env, _ = scrub(attachment(payload.encode(), attachment_type=kind))
    assert leaks(env.items[0].payload) == []


def test_latin1_bytes_are_kept_exactly_around_the_redactions() -> None:
    payload = ("café Zürich\n" + LOG).encode("latin-1") + b"\x00 trailing \xff\n"
    env, _ = scrub(attachment(payload, content_type="text/plain"))
    out = env.items[0].payload
    assert out.startswith("café Zürich\nuser [email] paid with ".encode("latin-1"))
    assert out.endswith(b"\x00 trailing \xff\n")
    assert leaks(out) == []


@pytest.mark.parametrize("codec", ["utf-16", "utf-16-be", "utf-32"])
def test_utf16_and_utf32_with_bom_are_decoded_and_encoded_back(codec: str) -> None:
    bom = {"utf-16": b"", "utf-16-be": b"\xfe\xff", "utf-32": b""}[codec]
    payload = bom + ("Grüße\n" + LOG).encode(codec)
    env, _ = scrub(attachment(payload, content_type="text/plain"))
    out = env.items[0].payload
    assert out[:2] == payload[:2]
    text = out.decode(codec).lstrip("\ufeff")
    assert text == "Grüße\nuser [email] paid with [Filtered] password=[Filtered] key [Filtered]\n"


def test_utf16_without_bom_is_read_as_text() -> None:
    env, _ = scrub(attachment(LOG.encode("utf-16-le"), filename="dotnet.log"))
    assert "[email]" in env.items[0].payload.decode("utf-16-le")


def test_a_stray_nul_does_not_make_text_binary() -> None:
    payload = b"\x00" + LOG.encode() + b"\x00" * 4096  # NUL padding, as a mapped log file
    env, _ = scrub(attachment(payload, content_type="application/octet-stream"))
    out = env.items[0].payload
    assert leaks(out) == [] and out.startswith(b"\x00user [email]") and out.endswith(b"\x00" * 4096)


def _zip(data: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("log.txt", data)
    return buf.getvalue()


BINARIES = {
    "png": PNG,
    "gzip": gzip.compress(LOG.encode()),
    "zip": _zip(LOG.encode()),
    "pdf": b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n" + LOG.encode(),
    "elf": b"\x7fELF\x02\x01\x01" + bytes(9) + LOG.encode(),
    "minidump": DUMP + LOG.encode(),
    "random": random.Random(11).randbytes(8192) + LOG.encode(),
}


@pytest.mark.parametrize("name", sorted(BINARIES))
def test_real_binaries_are_kept_as_they_are(name: str) -> None:
    payload = BINARIES[name]
    env, report = scrub(attachment(payload, content_type="application/octet-stream"))
    assert env.items[0].payload == payload
    assert read_text(payload) is None
    assert report.dropped == []


def test_minidump_attachment_is_kept() -> None:
    env, _ = scrub(attachment(DUMP, attachment_type="event.minidump"))
    assert env.items[0].payload == DUMP


# --- filenames ---------------------------------------------------------------------------


def test_attachment_filename_goes_through_the_value_detectors() -> None:
    env, report = scrub(attachment(b"ok", filename=f"invoice {CARD} for {EMAIL}"))
    assert env.items[0].headers["filename"] == "invoice [Filtered] for [email]"
    assert leaks(env.serialize()) == []
    assert {(r.path, r.rule) for r in report.redactions} >= {("<filename>", "@email:replace")}


# --- the dry run -------------------------------------------------------------------------


def _dry_run(tmp_path: Path, *items: tuple[dict[str, Any], bytes]) -> tuple[str, list[Any]]:
    config = make_config(tmp_path.as_uri())
    data = make_envelope({"event_id": EVENT_ID}, list(items)).serialize()
    reports = dry_run(config, data)
    text, js = io.StringIO(), io.StringIO()
    print_reports(reports, text)
    print_reports(reports, js, as_json=True)
    return text.getvalue(), orjson.loads(js.getvalue())


def test_dry_run_says_what_was_forwarded_unread_and_why(tmp_path: Path) -> None:
    text, js = _dry_run(
        tmp_path,
        ({"type": "event"}, orjson.dumps({"message": "crash"})),
        attachment(PNG, filename="screen.png", content_type="image/png"),
        attachment(LOG.encode(), filename="app.log"),
    )
    assert "item 1 (attachment): forward\n  WARNING: forwarded unread" in text
    assert "binary content (PNG image)" in text
    assert "WARNING: 1 item(s) would be forwarded unread" in text
    assert [r["unread"] for r in js] == [None, "binary content (PNG image)", None]


def test_dry_run_says_why_an_unreadable_item_is_dropped(tmp_path: Path) -> None:
    text, js = _dry_run(
        tmp_path,
        ({"type": "replay_recording"}, b'{"segment_id":0}\n' + gzip.compress(b"[]")),
    )
    assert js[0]["decision"].startswith(
        "drop — invalid: invalid_payload (it could not be read: the recording is neither"
    )
    assert "WARNING" not in text


# --- hostile shapes: cost bounded, nothing read past -------------------------------------


def _raw_multipart(*parts: tuple[str, bytes]) -> bytes:
    """Parts given by their whole Content-Disposition value."""
    out = b""
    for disposition, body in parts:
        out += f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n\r\n".encode()
        out += body + b"\r\n"
    return out + f"--{BOUNDARY}--\r\n".encode()


def test_native_payloads_sent_as_form_fields_are_still_decoded() -> None:
    body = _raw_multipart(
        ('form-data; name="upload_file_minidump"; filename="m.dmp"', DUMP),
        ('form-data; name="__sentry-event"', msgspec.msgpack.encode(NATIVE_EVENT)),
    )
    parts = part_bodies(upload(body))
    assert leaks(parts["__sentry-event"]) == []
    assert msgspec.msgpack.decode(parts["__sentry-event"])["user"]["email"] == "[email]"


def test_a_filename_before_the_name_or_in_rfc5987_form_is_read_right() -> None:
    body = _raw_multipart(
        ('form-data; name="upload_file_minidump"; filename="m.dmp"', DUMP),
        ('form-data; filename="upload_file_minidump"; name="log"', LOG.encode()),
        (f"form-data; name=\"other\"; filename*=UTF-8''{EMAIL.replace('@', '%40')}.log",
         LOG.encode()),
    )  # fmt: skip
    out = upload(body)
    parts = part_bodies(out)
    assert parts["upload_file_minidump"] == DUMP
    assert leaks(parts["log"]) == [] and leaks(parts["other"]) == []
    assert EMAIL.replace("@", "%40").encode() not in out


def test_a_deep_json_attachment_still_has_its_denylisted_keys_filtered() -> None:
    value: Any = {"cvv": "123", "note": f"by {EMAIL}"}
    for _ in range(140):
        value = {"child": value}
    env, _ = scrub(attachment(orjson.dumps(value), content_type="application/json"))
    payload = env.items[0].payload
    assert b'"123"' not in payload and leaks(payload) == []
    assert depth(orjson.loads(payload)) > 140


def test_a_deep_json_attachment_too_large_to_walk_is_dropped() -> None:
    value: Any = ["x" * 2000] * 600  # over a MiB, and deep
    for _ in range(140):
        value = [value]
    _, report = scrub(attachment(orjson.dumps(value)))
    assert [d.reason for d in report.dropped] == [Reason.INVALID_PAYLOAD]


def test_a_recording_that_inflates_past_the_limit_is_dropped() -> None:
    bomb = zlib.compress(b"[" + b"{}," * (3 * 1024 * 1024) + b"{}]", 9)
    assert len(bomb) < 100_000
    _, report = scrub(({"type": "replay_recording"}, b'{"segment_id":0}\n' + bomb))
    assert [d.reason for d in report.dropped] == [Reason.INVALID_PAYLOAD]


def test_a_breadcrumb_stream_of_too_many_values_is_unreadable() -> None:
    _, report = scrub(attachment(b"\x80" * 200_000, attachment_type="event.breadcrumbs"))
    assert [d.reason for d in report.dropped] == [Reason.INVALID_PAYLOAD]


@pytest.mark.parametrize(
    "payload",
    [
        b"\xff\xfe" + f"\x00{LOG}".encode("utf-16-le"),  # UTF-16 starting with U+0000
        f"RIFF {LOG}".encode(),  # text that starts like a RIFF container
    ],
)
def test_text_that_starts_like_something_else_is_still_text(payload: bytes) -> None:
    text = read_text(payload)
    assert text is not None and text.encode(text.text) == payload
    env, _ = scrub(attachment(payload))
    scrubbed = read_text(env.items[0].payload)
    assert scrubbed is not None and EMAIL not in scrubbed.text
