"""Bodies forwarded as they came: when processing leaves an envelope byte-for-byte
unchanged and the client sent it as one plain gzip member, the upstream receives the
client's bytes, not a second compression of the same envelope.

Only then: a gzip header with optional fields (a file name, a comment) or a second
member could carry bytes the decoded body does not show, so those are re-encoded from
what the relay parsed, and so is anything the policy changed.
"""

from __future__ import annotations

import asyncio
import gzip
import struct
import zlib
from pathlib import Path
from typing import Any

import brotli
import orjson
import pytest
from aiohttp.test_utils import TestClient

from tests.support.corpus import CORPUS, PLANTED
from tests.support.relay import RelayFactory, auth_header
from tests.support.upstream import RecordingUpstream

#: Every switch off: the policy changes nothing.
NO_POLICY: dict[str, Any] = {
    "scrubbing": {
        "defaults": False,
        "ip_addresses": False,
        "emails": False,
        "secrets": False,
        "source_context": "keep",
        "attachments": "keep",
    },
    "filters": {"health_checks": False},
}

ATTACHMENT = CORPUS / "error-with-attachment.envelope"


def _gzip_with_name(data: bytes, name: bytes) -> bytes:
    """One gzip member whose header carries FNAME (FLG bit 3)."""
    head = b"\x1f\x8b\x08\x08" + struct.pack("<I", 0) + b"\x00\xff" + name + b"\x00"
    deflate = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    body = deflate.compress(data) + deflate.flush()
    return head + body + struct.pack("<II", zlib.crc32(data), len(data) & 0xFFFFFFFF)


async def _send(relay: TestClient, body: bytes, encoding: str = "gzip") -> None:
    headers = {**auth_header(), "Content-Encoding": encoding}
    resp = await relay.post("/api/42/envelope/", data=body, headers=headers)
    assert resp.status == 200, await resp.text()


@pytest.fixture
async def plain(relay_factory: RelayFactory) -> TestClient:
    return await relay_factory(policy=NO_POLICY)


@pytest.mark.parametrize("path", sorted(CORPUS.glob("*.envelope")), ids=lambda p: p.stem)
async def test_unchanged_envelope_goes_as_received(
    plain: TestClient, recorder: RecordingUpstream, path: Path
) -> None:
    raw = path.read_bytes()
    sent = gzip.compress(raw, mtime=0)
    await _send(plain, sent)
    await recorder.wait_for(1)
    (got,) = recorder.received
    assert got.headers["Content-Encoding"] == "gzip"
    assert got.raw == sent
    assert got.body == raw


async def test_changed_envelope_is_compressed_again(
    relay: TestClient, recorder: RecordingUpstream
) -> None:
    raw = ATTACHMENT.read_bytes()
    assert any(secret in raw for secret in PLANTED)
    sent = gzip.compress(raw, mtime=0)
    await _send(relay, sent)
    await recorder.wait_for(1)
    (got,) = recorder.received
    assert got.raw != sent
    assert not any(secret in got.body for secret in PLANTED)


async def test_optional_gzip_header_fields_are_never_forwarded(
    plain: TestClient, recorder: RecordingUpstream
) -> None:
    raw = ATTACHMENT.read_bytes()
    name = b"token-in-a-file-name-5f2b8c"
    await _send(plain, _gzip_with_name(raw, name))
    await recorder.wait_for(1)
    (got,) = recorder.received
    assert name not in got.raw
    assert got.body == raw


async def test_a_second_gzip_member_is_never_forwarded_as_is(
    plain: TestClient, recorder: RecordingUpstream
) -> None:
    raw = ATTACHMENT.read_bytes()
    half = len(raw) // 2
    sent = gzip.compress(raw[:half], mtime=0) + gzip.compress(raw[half:], mtime=0)
    await _send(plain, sent)
    await recorder.wait_for(1)
    (got,) = recorder.received
    assert got.raw != sent
    assert got.body == raw


@pytest.mark.parametrize("encoding", ["deflate", "br", "identity"])
async def test_other_encodings_are_decoded_and_compressed_as_the_relay_does(
    plain: TestClient, recorder: RecordingUpstream, encoding: str
) -> None:
    raw = ATTACHMENT.read_bytes()
    encode = {"deflate": zlib.compress, "br": brotli.compress, "identity": bytes}[encoding]
    await _send(plain, encode(raw), encoding)
    await recorder.wait_for(1)
    (got,) = recorder.received
    assert got.headers.get("Content-Encoding") == "gzip"
    assert got.body == raw


async def test_upstream_without_gzip_gets_the_decoded_body(
    relay_factory: RelayFactory, recorder: RecordingUpstream
) -> None:
    relay = await relay_factory(policy=NO_POLICY, upstream={"gzip": False})
    raw = ATTACHMENT.read_bytes()
    await _send(relay, gzip.compress(raw, mtime=0))
    await recorder.wait_for(1)
    (got,) = recorder.received
    assert "Content-Encoding" not in got.headers
    assert got.raw == raw


async def test_file_outbox_gets_the_decoded_envelope(
    relay_factory: RelayFactory, tmp_path: Path
) -> None:
    relay = await relay_factory(policy=NO_POLICY, upstream={"url": f"file://{tmp_path}"})
    raw = ATTACHMENT.read_bytes()
    await _send(relay, gzip.compress(raw, mtime=0))
    for _ in range(200):
        files = list(tmp_path.glob("*.envelope"))
        if files:
            break
        await asyncio.sleep(0.01)
    (path,) = files
    assert path.read_bytes() == raw


async def test_a_file_target_that_cannot_be_written_yet_is_retried(
    relay_factory: RelayFactory, tmp_path: Path
) -> None:
    """A file where the outbox directory should be: each attempt fails (logged) and is
    retried with backoff; once it is out of the way, the envelope is written."""
    blocked = tmp_path / "outbox"
    blocked.write_text("not a directory")
    relay = await relay_factory(
        policy=NO_POLICY,
        upstream={"url": f"file://{blocked}", "max_attempts": 100, "retry_max_s": 0.02},
    )
    raw = ATTACHMENT.read_bytes()
    await _send(relay, gzip.compress(raw, mtime=0))
    await asyncio.sleep(0.2)  # several attempts fail meanwhile
    blocked.unlink()
    for _ in range(200):
        files = list(blocked.glob("*.envelope")) if blocked.is_dir() else []
        if files:
            break
        await asyncio.sleep(0.01)
    (path,) = files
    assert path.read_bytes() == raw
    assert [p.name for p in blocked.iterdir() if p.name.startswith(".")] == []  # no tmp left
    metrics = await (await relay.get("/metrics")).text()
    assert 'outcome="internal"' not in metrics


async def test_a_file_target_that_stays_unwritable_gives_up_with_an_outcome(
    relay_factory: RelayFactory, tmp_path: Path
) -> None:
    blocked = tmp_path / "outbox"
    blocked.write_text("not a directory")
    relay = await relay_factory(
        policy=NO_POLICY, upstream={"url": f"file://{blocked}", "max_attempts": 3}
    )
    await _send(relay, gzip.compress(ATTACHMENT.read_bytes(), mtime=0))
    wanted = 'relay_items_total{category="error",outcome="internal",reason="send_failed"} 1.0'
    for _ in range(200):
        metrics = await (await relay.get("/metrics")).text()
        if wanted in metrics:
            break
        await asyncio.sleep(0.01)
    assert wanted in metrics
    assert blocked.read_text() == "not a directory"


async def test_a_file_target_names_files_only_by_a_real_event_id(
    relay_factory: RelayFactory, tmp_path: Path
) -> None:
    """The envelope header's event_id comes from the client: one that is not a UUID (a
    `/`, `..`, a NUL) is refused (400, as Sentry answers); a dashed one names the file as
    32 hex digits, and an envelope without one gets a new id."""
    outbox = tmp_path / "outbox"
    relay = await relay_factory(policy=NO_POLICY, upstream={"url": f"file://{outbox}"})
    dashed = "0f8fad5b-d9cb-469f-a165-70867728950e"
    for event_id in ("../../escaped", "a\u0000b"):
        body = orjson.dumps({"event_id": event_id}) + b'\n{"type":"event"}\n{"message":"m"}\n'
        resp = await relay.post("/api/42/envelope/", data=body, headers=auth_header())
        assert resp.status == 400, await resp.text()
    for header in ({"event_id": dashed.upper()}, {}):
        body = orjson.dumps(header) + b'\n{"type":"event"}\n{"message":"m"}\n'
        await _send(relay, gzip.compress(body, mtime=0))
    for _ in range(200):
        names = sorted(p.name for p in outbox.glob("*.envelope"))
        if len(names) == 2:
            break
        await asyncio.sleep(0.01)
    ids = [name.split("-", 1)[1].removesuffix(".envelope") for name in names]
    assert len(ids) == 2 and all(len(i) == 32 and int(i, 16) >= 0 for i in ids), ids
    assert dashed.replace("-", "") in ids
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outbox"]  # nothing escaped


async def test_envelopes_with_one_event_id_each_keep_their_file(
    relay_factory: RelayFactory, tmp_path: Path
) -> None:
    """An SDK's retry, or an event and its attachments sent apart, share an event id and
    often a second: each gets a file of its own, none replaces another."""
    outbox = tmp_path / "outbox"
    relay = await relay_factory(policy=NO_POLICY, upstream={"url": f"file://{outbox}"})
    bodies = [
        orjson.dumps({"event_id": "ab" * 16}) + b'\n{"type":"event"}\n{"message":"m%d"}\n' % n
        for n in range(5)
    ]
    for body in bodies:
        await _send(relay, gzip.compress(body, mtime=0))
    for _ in range(200):
        files = list(outbox.glob("*.envelope"))
        if len(files) == 5:
            break
        await asyncio.sleep(0.01)
    assert sorted(p.read_bytes() for p in files) == sorted(bodies)
    assert [p.name for p in outbox.iterdir() if p.name.startswith(".")] == []  # no tmp left
