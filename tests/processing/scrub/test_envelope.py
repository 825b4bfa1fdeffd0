"""`scrub_envelope`: every item type, the header, attachments policy, the report."""

from __future__ import annotations

import zlib
from typing import Any

import orjson

from relay.processing.scrub import compile_scrubber
from relay.protocol.envelope import make_envelope, parse_envelope
from tests.processing.scrub.conftest import cfg

SECRET = "bob@example.org"


def env_of(*items: tuple[dict[str, Any], bytes], headers: dict[str, Any] | None = None) -> Any:
    built = make_envelope(headers or {"event_id": "fe4272fa94e54186acc6e75b1bb21a2c"}, list(items))
    return parse_envelope(built.serialize())


def j(data: Any) -> bytes:
    return orjson.dumps(data)


def test_every_json_item_type_is_scrubbed() -> None:
    payloads = {
        "event": {"message": f"hi {SECRET}"},
        "transaction": {"spans": [{"description": f"SELECT {SECRET}", "data": {"q": SECRET}}]},
        "check_in": {"contexts": {"extra": {"who": SECRET}}, "monitor_slug": "nightly"},
        "session": {
            "did": SECRET,
            "sid": "s1",
            "attrs": {"ip_address": "1.2.3.4", "release": "r@1"},
        },
        "sessions": {"aggregates": [{"did": SECRET}], "attrs": {"release": "r@1"}},
        "user_report": {
            "event_id": "fe4272fa94e54186acc6e75b1bb21a2c",
            "email": SECRET,
            "comments": "x",
        },
        "feedback": {"contexts": {"feedback": {"contact_email": SECRET, "message": "hello"}}},
        "security": {"csp-report": {"document-uri": f"https://x/?e={SECRET}"}},
        "nel": {"body": {"url": f"https://x/{SECRET}"}},
        "log": {
            "items": [
                {
                    "body": f"login {SECRET}",
                    "attributes": {"a": {"type": "string", "value": SECRET}},
                }
            ]
        },
        "otel_log": {
            "body": {"stringValue": SECRET},
            "attributes": [{"key": "db.password", "value": {"stringValue": "pw"}}],
        },
        "span": {
            "items": [{"name": "x", "attributes": {"u": {"type": "string", "value": SECRET}}}]
        },
        "replay_event": {"urls": [f"https://x/{SECRET}"], "user": {"email": SECRET}},
        "profile": {
            "transaction": {"name": SECRET},
            "profile": {"samples": [], "frames": [{"function": "f"}]},
        },
        "my_future_type": {"deep": {"x": [SECRET]}},
    }
    env = env_of(*[({"type": t}, j(p)) for t, p in payloads.items()])
    report = compile_scrubber(None).scrub_envelope(env)
    out = env.serialize()
    assert SECRET.encode() not in out
    assert b'"pw"' not in out
    assert b"1.2.3.4" not in out
    assert b"nightly" in out and b"r@1" in out
    assert sorted(report.changed_items) == list(range(len(payloads)))
    types = {r.item_type for r in report.redactions}
    assert "session" in types and "log" in types and "my_future_type" in types


def test_text_and_binary_items() -> None:
    binary = bytes(range(256)) + SECRET.encode()
    env = env_of(
        ({"type": "statsd"}, f"m:1|c|#user:{SECRET}".encode()),
        ({"type": "mystery"}, binary),
        (
            {"type": "client_report"},
            j({"discarded_events": [{"reason": "x", "category": "error", "quantity": 1}]}),
        ),
    )
    report = compile_scrubber(None).scrub_envelope(env)
    assert SECRET.encode() not in env.items[0].payload
    assert env.items[1].payload == binary  # binary is kept as it is
    assert report.changed_items == [0]


def test_attachment_modes() -> None:
    text = f"debug dump for 4111111111111111 {SECRET}\n".encode()
    js = j({"user": {"email": SECRET}, "password": "hunter2"})
    binary = b"\x00\x01" + SECRET.encode()
    items = [
        ({"type": "attachment", "filename": "a.txt", "content_type": "text/plain"}, text),
        ({"type": "attachment", "filename": "b.json", "content_type": "application/json"}, js),
        (
            {"type": "attachment", "filename": "c.bin", "content_type": "application/octet-stream"},
            binary,
        ),
        (
            {"type": "attachment", "attachment_type": "event.minidump", "filename": "m.dmp"},
            b"MDMP" + SECRET.encode(),
        ),
    ]
    env = env_of(({"type": "event"}, j({"message": "x"})), *items)
    report = compile_scrubber(None).scrub_envelope(env)
    assert env.items[1].payload == b"debug dump for [Filtered] [email]\n"
    assert b"hunter2" not in env.items[2].payload and SECRET.encode() not in env.items[2].payload
    assert env.items[3].payload == binary
    assert report.dropped == []

    env = env_of(({"type": "event"}, j({"message": "x"})), *items)
    report = compile_scrubber(cfg(attachments="drop")).scrub_envelope(env)
    assert [i.type for i in env.items] == ["event"]
    assert [(d.index, d.reason) for d in report.dropped] == [
        (i, "attachments_policy") for i in (1, 2, 3, 4)
    ]
    assert all(d.item.type == "attachment" for d in report.dropped)

    env = env_of(*items)
    compile_scrubber(cfg(attachments="keep", emails=True)).scrub_envelope(env)
    assert env.items[0].payload == text


def test_replay_recording_compressed_and_plain() -> None:
    events = j([{"type": 3, "data": {"text": f"typed {SECRET}"}}])
    env = env_of(
        ({"type": "replay_recording"}, b'{"segment_id":0}\n' + zlib.compress(events)),
        ({"type": "replay_recording"}, b'{"segment_id":1}\n' + events),
    )
    compile_scrubber(None).scrub_envelope(env)
    head, body = env.items[0].payload.split(b"\n", 1)
    assert head == b'{"segment_id":0}'
    assert SECRET.encode() not in zlib.decompress(body)
    assert SECRET.encode() not in env.items[1].payload


def test_header_trace_user_is_scrubbed_dsn_left_alone() -> None:
    headers = {
        "event_id": "fe4272fa94e54186acc6e75b1bb21a2c",
        "dsn": "https://abc@o1.ingest.sentry.io/42",
        "trace": {
            "trace_id": "86f2111e292348f990b40c2f7ff035f3",
            "public_key": "abc",
            "user": {"email": SECRET},
            "user_segment": SECRET,
        },
    }
    env = env_of(({"type": "event"}, j({"message": "x"})), headers=headers)
    report = compile_scrubber(None).scrub_envelope(env)
    out = env.serialize()
    assert SECRET.encode() not in out
    assert report.header_changed
    assert env.headers["dsn"] == "https://abc@o1.ingest.sentry.io/42"
    assert env.headers["trace"]["trace_id"] == "86f2111e292348f990b40c2f7ff035f3"


def test_unchanged_items_keep_their_bytes() -> None:
    raw = j({"message": "nothing to see", "release": "a@1"})
    env = env_of(({"type": "event"}, raw))
    report = compile_scrubber(None).scrub_envelope(env)
    assert env.items[0].payload == raw
    assert report.redactions == [] and report.changed_items == []


def test_invalid_json_event_is_text_scrubbed() -> None:
    env = env_of(({"type": "event"}, f"{{not json {SECRET}".encode()))
    compile_scrubber(None).scrub_envelope(env)
    assert SECRET.encode() not in env.items[0].payload


def test_meta_switch_and_strips_client_ip() -> None:
    on = compile_scrubber(None)
    off = compile_scrubber(cfg(meta=False, ip_addresses=False))
    e1: dict[str, Any] = {"user": {"email": SECRET}}
    e2: dict[str, Any] = {"user": {"email": SECRET}}
    on.scrub_event(e1)
    off.scrub_event(e2)
    assert e1["_meta"]["user"]["email"][""] == {
        "rem": [["@email:replace", "s", 0, 7]],
        "len": len(SECRET),
    }
    assert "_meta" not in e2
    assert on.strips_client_ip and not off.strips_client_ip


def test_sdk_meta_is_replaced_by_the_scrubbers() -> None:
    e: dict[str, Any] = {
        "extra": {"password": "[Filtered]", "mail": SECRET},
        "_meta": {"extra": {"password": {"": {"rem": [["!config", "s"]], "val": SECRET}}}},
    }
    compile_scrubber(None).scrub_event(e)
    assert e["_meta"] == {
        "extra": {
            "password": {"": {"rem": [["@password:filter", "s", 0, 10]], "len": 10}},
            "mail": {"": {"rem": [["@email:replace", "s", 0, 7]], "len": len(SECRET)}},
        }
    }
