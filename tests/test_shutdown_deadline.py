"""`shutdown_timeout` bounds the whole stop, counted from the stop signal: the time the
requests in flight took comes off the drain's, so a supervisor (which kills its workers
`shutdown_timeout` + 5 s after its signal) or an orchestrator never kills a relay in the
middle of its drain, losing what the memory outbox held without an outcome."""

from __future__ import annotations

import asyncio
import time

from relay.keys import STATE
from tests.support.relay import RelayFactory, auth_header
from tests.support.upstream import RecordingUpstream, Reply
from tests.test_forwarder_failures import _event, _items


async def test_the_drain_ends_shutdown_timeout_after_the_stop_signal(
    relay_factory: RelayFactory, recorder: RecordingUpstream
) -> None:
    relay = await relay_factory(upstream={"client_reports_interval": 0}, shutdown_timeout=1.5)
    recorder.answer(Reply(200, delay=30))  # the upstream holds the envelope's request
    response = await relay.post("/api/42/envelope/", data=_event(1), headers=auth_header())
    assert response.status == 200
    async with asyncio.timeout(5):
        while recorder.attempts < 1:
            await asyncio.sleep(0.01)
    # As if the signal came 1.3 s ago and the requests in flight took that long.
    relay.server.app[STATE].stop_requested = time.monotonic() - 1.3
    started = time.monotonic()
    await relay.close()
    assert time.monotonic() - started < 1.0  # 0.2 s left of the drain, not 1.5
    assert _items(relay) == [
        'relay_items_total{category="error",outcome="internal",reason="shutdown"} 1.0'
    ]
