"""The memory outbox: FIFO, hard bounds, and back-pressure above the high-water mark."""

from __future__ import annotations

import asyncio
import time

import pytest

from relay.policy.targets import resolve_target
from relay.services.outbox import MemoryOutbox, OutboxEntry, OutboxFull

TARGET = resolve_target("https://sentry.example.com", None, 42, "abc123def4567890abc123def4567890")


def entry(n: int) -> OutboxEntry:
    return OutboxEntry(
        target=TARGET, body=b"x" * 10, project_id=42, quantities=[("error", 1)], event_id=str(n)
    )


async def test_fifo_and_hard_bounds() -> None:
    box = MemoryOutbox(max_items=3, max_bytes=1000)
    for n in range(3):
        await box.put(entry(n))
    with pytest.raises(OutboxFull):
        await box.put(entry(3))
    got = [await box.get() for _ in range(3)]
    assert [e.event_id for e in got] == ["0", "1", "2"]
    assert box.pending == 3
    for e in got:
        box.done(e)
    assert box.pending == 0


async def test_backpressure_waits_until_the_consumer_catches_up() -> None:
    box = MemoryOutbox(max_items=100, max_bytes=10**6, high_water=2)
    await box.put(entry(0))
    await box.wait_for_room(1.0)  # below the mark: no wait
    await box.put(entry(1))

    async def consume_later() -> None:
        await asyncio.sleep(0.2)
        box.done(await box.get())

    consumer = asyncio.create_task(consume_later())
    started = time.monotonic()
    await box.wait_for_room(5.0)
    waited = time.monotonic() - started
    assert 0.15 < waited < 2.0
    await consumer


async def test_backpressure_wait_is_bounded() -> None:
    box = MemoryOutbox(max_items=100, max_bytes=10**6, high_water=1)
    await box.put(entry(0))
    started = time.monotonic()
    await box.wait_for_room(0.1)
    assert time.monotonic() - started < 1.0
    await box.put(entry(1))  # still accepted: only the hard bounds refuse
