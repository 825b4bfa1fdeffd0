"""Large envelopes are scrubbed on the offload thread: the event loop serves meanwhile.

Each test holds a large envelope's processing at a gate (a `threading.Event`) and shows
that a small envelope is answered and forwarded while it waits; on the event loop the
gate would stop every request until it opened.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient

import relay.services.ingest as ingest_module
import relay.services.shadow as shadow_module
import relay.web.ingest as web_ingest
from relay.app import create_app
from relay.processing import pipeline
from relay.protocol.envelope import Envelope, Item, parse_envelope
from relay.services.offload import MIN_BYTES
from tests.support.corpus import CORPUS
from tests.support.lean import LeanTestServer
from tests.support.relay import RelayFactory, auth_header, make_config, window_clock
from tests.support.upstream import RecordingUpstream

RESET = (CORPUS / "error-connection-reset.envelope").read_bytes()
SECRET = b"carol@example.com"
GATE_S = 5.0


def _log(size: int) -> bytes:
    line = b"INFO checkout by carol@example.com took 12 ms\n"
    return line * (size // len(line) + 1)


def _envelope(attachment: bytes | None = None, message: str = "small") -> bytes:
    event = orjson.dumps({"event_id": "b" * 32, "message": message})
    items = [Item({"type": "event"}, event)]
    if attachment is not None:
        items.append(
            Item(
                {"type": "attachment", "filename": "app.log", "content_type": "text/plain"},
                attachment,
            )
        )
    return Envelope({"event_id": "b" * 32}, items).serialize()


LARGE = _envelope(_log(MIN_BYTES), "large")
SMALL = _envelope(None, "small")


class Gate:
    """Holds calls whose argument is large until `open`; records which thread ran each."""

    def __init__(self, is_large: Callable[..., bool]) -> None:
        self.is_large = is_large
        self.event = threading.Event()
        self.threads: list[tuple[bool, bool]] = []  # (large, on the main thread)

    def wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def gated(*args: Any, **kwargs: Any) -> Any:
            large = self.is_large(*args, **kwargs)
            self.threads.append((large, threading.current_thread() is threading.main_thread()))
            if large:
                self.event.wait(GATE_S)
            return fn(*args, **kwargs)

        return gated

    def open(self) -> None:
        self.event.set()


def _large_prepared(prepared: pipeline.Prepared, **_: Any) -> bool:
    return sum(len(w.item.payload) for w in prepared.kept) >= MIN_BYTES


@pytest.fixture
def finish_gate(monkeypatch: pytest.MonkeyPatch) -> Iterator[Gate]:
    gate = Gate(_large_prepared)
    monkeypatch.setattr(pipeline, "finish", gate.wrap(pipeline.finish))
    yield gate
    gate.open()


def _messages(recorder: RecordingUpstream) -> list[str]:
    return [
        orjson.loads(i.payload)["message"]
        for e in recorder.envelopes
        for i in e.items
        if i.type == "event"
    ]


async def test_a_large_envelope_is_scrubbed_off_the_loop_while_small_ones_go_on(
    relay: TestClient, recorder: RecordingUpstream, finish_gate: Gate
) -> None:
    assert (await relay.post("/api/42/envelope/", data=LARGE, headers=auth_header())).status == 200
    assert (await relay.post("/api/42/envelope/", data=SMALL, headers=auth_header())).status == 200
    await recorder.wait_for(1, timeout=GATE_S / 2)
    assert _messages(recorder) == ["small"]  # the large one still waits at the gate
    finish_gate.open()
    await recorder.wait_for(2)
    assert _messages(recorder) == ["small", "large"]
    attachment = recorder.items("attachment")[0].payload
    assert len(attachment) > 100_000 and SECRET not in attachment
    assert sorted(finish_gate.threads) == [(False, True), (True, False)]


async def test_with_the_spool_the_large_envelope_is_answered_once_scrubbed(
    relay_factory: RelayFactory, recorder: RecordingUpstream, finish_gate: Gate, tmp_path: Path
) -> None:
    relay = await relay_factory(spool={"path": str(tmp_path / "spool")})
    large = asyncio.create_task(relay.post("/api/42/envelope/", data=LARGE, headers=auth_header()))
    small = await asyncio.wait_for(
        relay.post("/api/42/envelope/", data=SMALL, headers=auth_header()), GATE_S / 2
    )
    assert small.status == 200 and not large.done()
    await recorder.wait_for(1, timeout=GATE_S / 2)
    finish_gate.open()
    assert (await large).status == 200
    await recorder.wait_for(2)
    assert _messages(recorder) == ["small", "large"]
    assert SECRET not in recorder.items("attachment")[0].payload
    assert (True, False) in finish_gate.threads


async def test_shutdown_waits_for_a_large_envelope_in_progress(
    upstream_url: str, recorder: RecordingUpstream, finish_gate: Gate, aiohttp_client: Any
) -> None:
    relay = await aiohttp_client(
        LeanTestServer(create_app(make_config(upstream_url), clock=window_clock()))
    )
    assert (await relay.post("/api/42/envelope/", data=LARGE, headers=auth_header())).status == 200
    asyncio.get_running_loop().call_later(0.3, finish_gate.open)
    await relay.close()  # drains: the accepted envelope is scrubbed and sent first
    assert _messages(recorder) == ["large"]
    assert SECRET not in recorder.items("attachment")[0].payload


def _upload(dump: bytes, boundary: str = "xyzzy") -> bytes:
    return (
        f'--{boundary}\r\nContent-Disposition: form-data; name="upload_file_minidump"; '
        f'filename="a.dmp"\r\n\r\n'.encode()
        + dump
        + f'\r\n--{boundary}\r\nContent-Disposition: form-data; name="sentry[user][email]"'
        f"\r\n\r\n".encode()
        + SECRET
        + f"\r\n--{boundary}--\r\n".encode()
    )


async def test_a_large_minidump_upload_is_scrubbed_off_the_loop(
    relay: TestClient, recorder: RecordingUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = Gate(lambda body, *_: len(body) >= MIN_BYTES)
    monkeypatch.setattr(
        web_ingest, "prepare_minidump_upload", gate.wrap(web_ingest.prepare_minidump_upload)
    )
    dump = b"MDMP\x93\xa7" + bytes(range(256)) * (MIN_BYTES // 256)
    headers = {**auth_header(), "Content-Type": "multipart/form-data; boundary=xyzzy"}
    upload = asyncio.create_task(
        relay.post("/api/42/minidump/", data=_upload(dump), headers=headers)
    )
    assert (await relay.post("/api/42/envelope/", data=SMALL, headers=auth_header())).status == 200
    await recorder.wait_for(1, timeout=GATE_S / 2)
    assert not upload.done()
    gate.open()
    assert (await upload).status == 200
    await recorder.wait_for(2)
    sent = next(r for r in recorder.received if r.path.endswith("/minidump/")).body
    assert dump in sent and SECRET not in sent
    assert gate.threads == [(True, False)]


async def test_a_large_shadow_copy_is_built_off_the_loop(
    upstream_url: str,
    recorder: RecordingUpstream,
    aiohttp_client: Any,
    aiohttp_server: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    shadow = RecordingUpstream()
    host = str((await aiohttp_server(shadow.app)).make_url("")).rstrip("/").split("//", 1)[1]
    policy = {
        "shadow": {"dsn": f"http://{'e' * 32}@{host}/7"},
        "filters": {"error_types": ["ConnectionResetError"]},
    }
    relay = await aiohttp_client(create_app(make_config(upstream_url, policy=policy)))
    gate = Gate(lambda policy, header, parts, *_: sum(len(p.payload) for p in parts) >= MIN_BYTES)
    monkeypatch.setattr(shadow_module, "_build", gate.wrap(shadow_module._build))
    reset = parse_envelope(RESET)  # an event the filter drops, with a large log attached
    log = Item({"type": "attachment", "filename": "app.log"}, _log(MIN_BYTES))
    body = Envelope(reset.headers, [*reset.items, log]).serialize()
    assert (await relay.post("/api/42/envelope/", data=body, headers=auth_header())).status == 200
    assert (await relay.post("/api/42/envelope/", data=SMALL, headers=auth_header())).status == 200
    await recorder.wait_for(1, timeout=GATE_S / 2)
    assert _messages(recorder) == ["small"] and not shadow.received
    gate.open()
    await shadow.wait_for(1)
    copy = shadow.envelopes[0]
    assert [i.type for i in copy.items] == ["event", "attachment"]
    assert SECRET not in copy.items[1].payload
    assert gate.threads == [(True, False)]


@pytest.mark.parametrize("large", [False, True], ids=["backlog", "offload"])
async def test_when_processing_fails_every_item_it_was_given_gets_one_outcome(
    relay: TestClient, monkeypatch: pytest.MonkeyPatch, large: bool
) -> None:
    """Scrubbing drops the unreadable recording (taking it out of `prepared.kept`), then
    the step after it fails: both items still end `internal` / `processing_failed`."""

    def broken(*_: Any) -> bytes:
        raise RuntimeError("a bug after scrubbing")

    monkeypatch.setattr(ingest_module, "gzip_worth", broken)
    recording = b"neither JSON nor zlib " * ((MIN_BYTES if large else 100) // 22 + 1)
    body = Envelope(
        {"event_id": "b" * 32},
        [
            Item({"type": "event"}, b'{"message":"m"}'),
            Item({"type": "replay_recording"}, recording),
        ],
    ).serialize()
    assert (await relay.post("/api/42/envelope/", data=body, headers=auth_header())).status == 200
    want = [
        'relay_items_total{category="error",outcome="internal",reason="processing_failed"} 1.0',
        'relay_items_total{category="replay",outcome="internal",reason="processing_failed"} 1.0',
    ]
    async with asyncio.timeout(GATE_S):
        while True:
            metrics = await (await relay.get("/metrics")).text()
            if all(line in metrics for line in want):
                break
            await asyncio.sleep(0.02)
    assert 'outcome="invalid"' not in metrics  # one outcome per item
