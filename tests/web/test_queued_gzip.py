"""Copies are queued as they will be sent: gzipped once, when the envelope is finished.

A changed envelope is compressed right after it is serialized (from the backlog with the
memory outbox, before the answer with the disk spool), so the outbox and the spool hold
it compressed and count its compressed size, and every attempt sends those very bytes.
Bodies under `GZIP_MIN_BYTES`, file targets and `upstream.gzip: false` get no gzip.
"""

from __future__ import annotations

import asyncio
import gzip
from pathlib import Path
from typing import Any

import orjson
from aiohttp.test_utils import TestClient

from relay.keys import INGEST, UPSTREAM_HTTP
from relay.protocol.compress import GZIP_MIN_BYTES
from relay.services.outbox import OutboxEntry
from tests.support.corpus import CORPUS, PLANTED
from tests.support.relay import RelayFactory, auth_header
from tests.support.upstream import RecordingUpstream, Reply
from tests.web.test_backlog import hold

ATTACHMENT = CORPUS / "error-with-attachment.envelope"


def spy_queue(relay: TestClient) -> list[OutboxEntry]:
    """Every entry the relay queues, as it is queued."""
    outbox = relay.app[INGEST].outbox
    queued: list[OutboxEntry] = []
    put = outbox.put

    async def on_put(entry: OutboxEntry) -> None:
        queued.append(entry)
        await put(entry)

    outbox.put = on_put
    if hasattr(outbox, "put_reserved"):  # the memory outbox, from the backlog
        put_reserved = outbox.put_reserved

        def on_put_reserved(entry: OutboxEntry, size: int) -> None:
            queued.append(entry)
            put_reserved(entry, size)

        outbox.put_reserved = on_put_reserved
    return queued


async def _send(relay: TestClient, body: bytes, **headers: str) -> None:
    resp = await relay.post("/api/42/envelope/", data=body, headers={**auth_header(), **headers})
    assert resp.status == 200, await resp.text()


async def test_a_scrubbed_envelope_is_queued_gzipped_and_sent_as_queued(
    relay: TestClient, recorder: RecordingUpstream
) -> None:
    raw = ATTACHMENT.read_bytes()
    assert any(secret in raw for secret in PLANTED)
    held = hold(relay)
    queued = spy_queue(relay)
    outbox = relay.app[INGEST].outbox
    await _send(relay, gzip.compress(raw, mtime=0), **{"Content-Encoding": "gzip"})
    held.pop()()
    (entry,) = queued
    assert entry.encoding == "gzip"
    plain = gzip.decompress(entry.body)
    assert not any(secret in plain for secret in PLANTED)
    assert len(entry.body) < len(plain) // 2
    assert outbox.queued_bytes == len(entry.body)
    await recorder.wait_for(1)
    (got,) = recorder.received
    assert got.headers["Content-Encoding"] == "gzip"
    assert got.raw == entry.body


async def test_every_attempt_sends_the_bytes_queued(
    relay: TestClient, recorder: RecordingUpstream
) -> None:
    recorder.answer(Reply(503))
    queued = spy_queue(relay)
    http = relay.app[UPSTREAM_HTTP]
    sent: list[bytes] = []
    post = http.post

    async def on_post(url: str, body: bytes, *args: Any) -> Any:
        sent.append(body)
        return await post(url, body, *args)

    http.post = on_post
    await _send(relay, ATTACHMENT.read_bytes())
    await recorder.wait_for(1)
    (entry,) = queued
    assert entry.encoding == "gzip"
    assert recorder.attempts == 2
    assert sent == [entry.body, entry.body]


async def test_small_bodies_are_queued_as_they_are(
    relay: TestClient, recorder: RecordingUpstream
) -> None:
    queued = spy_queue(relay)
    body = (
        orjson.dumps({"event_id": "1" * 32})
        + b'\n{"type":"event"}\n'
        + orjson.dumps({"message": "boom", "extra": {"card": "4111 1111 1111 1111"}})
        + b"\n"
    )
    assert len(body) < GZIP_MIN_BYTES
    await _send(relay, body)
    await recorder.wait_for(1)
    (entry,) = queued
    assert entry.encoding == ""
    (got,) = recorder.received
    assert "Content-Encoding" not in got.headers
    assert got.raw == entry.body and b"4111" not in got.raw


async def test_without_upstream_gzip_nothing_is_compressed(
    relay_factory: RelayFactory, recorder: RecordingUpstream
) -> None:
    relay = await relay_factory(upstream={"gzip": False})
    queued = spy_queue(relay)
    await _send(relay, ATTACHMENT.read_bytes())
    await recorder.wait_for(1)
    (entry,) = queued
    assert entry.encoding == ""
    (got,) = recorder.received
    assert "Content-Encoding" not in got.headers
    assert got.raw == entry.body
    assert not any(secret in got.raw for secret in PLANTED)


async def test_the_spool_holds_the_gzipped_copy(
    relay_factory: RelayFactory, recorder: RecordingUpstream, tmp_path: Path
) -> None:
    relay = await relay_factory(spool={"path": str(tmp_path / "spool")})
    queued = spy_queue(relay)
    await _send(relay, ATTACHMENT.read_bytes())
    (entry,) = queued  # on disk before the answer
    assert entry.encoding == "gzip"
    await recorder.wait_for(1)
    (got,) = recorder.received
    assert got.headers["Content-Encoding"] == "gzip"
    assert got.raw == entry.body


async def test_a_file_target_gets_no_gzip(relay_factory: RelayFactory, tmp_path: Path) -> None:
    relay = await relay_factory(upstream={"url": f"file://{tmp_path}"})
    queued = spy_queue(relay)
    await _send(relay, ATTACHMENT.read_bytes())
    (entry,) = await _wait(queued)
    assert entry.encoding == ""
    assert not any(secret in entry.body for secret in PLANTED)


async def _wait(queued: list[Any]) -> list[Any]:
    for _ in range(200):
        if queued:
            return queued
        await asyncio.sleep(0.01)
    raise AssertionError("nothing was queued")
