"""The real sentry-sdk sends through a running relay to a recording upstream."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import sentry_sdk
from sentry_sdk import crons

from tests.support.relay import KEY
from tests.support.upstream import RecordingUpstream


def _init(dsn: str, **kwargs: Any) -> None:
    sentry_sdk.init(
        dsn=dsn,
        default_integrations=False,
        auto_enabling_integrations=False,
        release="shop@1.4.2",
        environment="test",
        **kwargs,
    )


async def _flush() -> None:
    # The SDK's transport thread talks to the relay on this loop: never block the loop.
    await asyncio.to_thread(sentry_sdk.flush, 5)


def _payload(item: Any) -> dict[str, Any]:
    value = orjson.loads(item.payload)
    assert isinstance(value, dict)
    return value


async def test_exception_with_frames_and_attachment(
    sdk_dsn: str, recorder: RecordingUpstream
) -> None:
    _init(sdk_dsn)
    sentry_sdk.get_isolation_scope().add_attachment(bytes=b"debug notes\n", filename="notes.txt")

    def checkout(order_id: int) -> None:
        total = order_id * 3
        raise RuntimeError(f"checkout failed for order {order_id}: total {total}")

    try:
        checkout(7)
    except RuntimeError:
        event_id = sentry_sdk.capture_exception()
    await _flush()
    await recorder.wait_for(1)
    (event_item,) = recorder.items("event")
    event = _payload(event_item)
    assert event["event_id"] == event_id
    (exc,) = event["exception"]["values"]
    assert exc["type"] == "RuntimeError"
    frames = exc["stacktrace"]["frames"]
    assert frames[-1]["function"] == "checkout"
    assert frames[-1]["vars"]["order_id"] == "7"
    (attachment,) = recorder.items("attachment")
    assert attachment.headers["filename"] == "notes.txt"
    assert attachment.payload == b"debug notes\n"


async def test_message_transaction_checkin_and_session(
    sdk_dsn: str, recorder: RecordingUpstream
) -> None:
    _init(sdk_dsn, traces_sample_rate=1.0)
    sentry_sdk.capture_message("cache warmed", level="info")
    with (
        sentry_sdk.start_transaction(name="/api/orders", op="http.server"),
        sentry_sdk.start_span(op="db", name="SELECT 1"),
    ):
        pass
    crons.capture_checkin(monitor_slug="nightly", status=crons.MonitorStatus.OK)
    scope = sentry_sdk.get_isolation_scope()
    scope.start_session()
    scope.end_session()
    await _flush()
    client = sentry_sdk.get_client()
    await asyncio.to_thread(client.close, 5)
    types: set[str] = set()
    async with asyncio.timeout(10):
        while not {"event", "transaction", "check_in"} <= types or not types & {
            "session",
            "sessions",
        }:
            await asyncio.sleep(0.02)
            types = {item.type for item in recorder.items()}
    (message,) = [_payload(i) for i in recorder.items("event")]
    assert message["message"] == "cache warmed"
    (tx,) = [_payload(i) for i in recorder.items("transaction")]
    assert tx["transaction"] == "/api/orders"
    assert [s["op"] for s in tx["spans"]] == ["db"]
    (checkin,) = [_payload(i) for i in recorder.items("check_in")]
    assert checkin["monitor_slug"] == "nightly"
    for received in recorder.received:
        assert f"sentry_key={KEY}" in received.headers["X-Sentry-Auth"]
