"""Ingest requests as SDKs and proxies send them, answered as Sentry's Relay answers."""

from __future__ import annotations

import asyncio
import os

import brotli
import orjson
import pytest
import sentry_sdk
from aiohttp.test_utils import TestClient

from relay.protocol.decompress import CHUNK, decompress, make_decompressor
from tests.support.relay import KEY, OTHER_KEY, auth_header
from tests.support.upstream import RecordingUpstream

EVENT_ID = "9ec79c33ec9942ab8353589fcb2e04dc"


def _envelope(header: dict[str, str]) -> bytes:
    event = orjson.dumps({"event_id": EVENT_ID, "message": "hi"})
    return orjson.dumps({"event_id": EVENT_ID, **header}) + b'\n{"type":"event"}\n' + event + b"\n"


# --- Content-Encoding: br -----------------------------------------------------------


def _incompressible(size: int) -> bytes:
    """JSON-safe text that brotli shrinks only about twofold."""
    return os.urandom(size // 2).hex().encode()


@pytest.mark.parametrize("step", [None, 64 * 1024, 1000])
def test_brotli_body_inflating_past_one_chunk_is_whole(step: int | None) -> None:
    # Brotli 1.2 keeps input buffered while output is pending and still reports that it
    # accepts more data: the pending output must be drained, not taken as truncation.
    plain = _incompressible(5 * CHUNK)
    body = brotli.compress(plain)
    decoder = make_decompressor("br", 10 * len(plain))
    step = step or len(body)
    for start in range(0, len(body), step):
        decoder.feed(body[start : start + step])
    assert decoder.finish() == plain
    assert decompress(body, "br", 10 * len(plain)) == plain


async def test_sentry_python_brotli_event_larger_than_a_chunk_arrives(
    sdk_dsn: str, recorder: RecordingUpstream
) -> None:
    # sentry-python compresses with brotli whenever the module is installed.
    sentry_sdk.init(
        dsn=sdk_dsn,
        default_integrations=False,
        auto_enabling_integrations=False,
        max_value_length=1_000_000,
        _experiments={"transport_compression_algo": "br"},
    )
    blob = _incompressible(3 * CHUNK).decode()
    sentry_sdk.set_extra("blob", blob)
    event_id = sentry_sdk.capture_message("a large event")
    await asyncio.to_thread(sentry_sdk.flush, 5)
    await recorder.wait_for(1)
    (received,) = recorder.received
    (item,) = received.envelope.items
    event = orjson.loads(item.payload)
    assert event["event_id"] == event_id
    assert event["extra"]["blob"] == blob


# --- auth: the request's own auth against the envelope header's dsn ------------------


async def test_envelope_dsn_naming_another_key_than_the_request_is_400(
    relay: TestClient, recorder: RecordingUpstream
) -> None:
    # Sentry takes the request's auth and refuses the envelope whose dsn disagrees with
    # it as a bad envelope (400), not as missing or bad auth (401).
    body = _envelope({"dsn": f"https://{OTHER_KEY}@o1.ingest.example.com/42"})
    for headers, path in (
        (auth_header(), "/api/42/envelope/"),
        ({}, f"/api/42/envelope/?sentry_key={KEY}"),
    ):
        resp = await relay.post(path, data=body, headers=headers)
        assert resp.status == 400, await resp.text()
        assert "conflicting authentication" in (await resp.json())["detail"]
    await asyncio.sleep(0.05)
    assert recorder.received == []


async def test_envelope_dsn_agreeing_with_the_request_is_accepted(
    relay: TestClient, recorder: RecordingUpstream
) -> None:
    body = _envelope({"dsn": f"https://{KEY}@o1.ingest.example.com/42"})
    resp = await relay.post("/api/42/envelope/", data=body, headers=auth_header())
    assert resp.status == 200, await resp.text()
    assert await resp.json() == {"id": EVENT_ID}
    await recorder.wait_for(1)


async def test_invalid_envelope_dsn_with_request_auth_is_400(relay: TestClient) -> None:
    resp = await relay.post(
        "/api/42/envelope/", data=_envelope({"dsn": "not a dsn"}), headers=auth_header()
    )
    assert resp.status == 400, await resp.text()


async def test_conflicting_request_sources_stay_401(relay: TestClient) -> None:
    resp = await relay.post(
        f"/api/42/envelope/?sentry_key={OTHER_KEY}", data=_envelope({}), headers=auth_header()
    )
    assert resp.status == 401
    assert (await resp.json())["detail"] == "conflicting authentication"
