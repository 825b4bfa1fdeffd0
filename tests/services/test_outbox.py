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


async def test_each_put_wakes_one_waiting_consumer() -> None:
    """32 idle forwarder tasks: one entry must not wake all of them (a thundering herd)."""
    box = MemoryOutbox(max_items=100, max_bytes=10**6)
    wakeups = 0

    async def consumer() -> OutboxEntry:
        nonlocal wakeups
        got = await box.get()
        wakeups += 1
        return got

    tasks = [asyncio.create_task(consumer()) for _ in range(32)]
    await asyncio.sleep(0)
    assert len(box._getters) == 32
    await box.put(entry(0))
    await asyncio.sleep(0.01)
    assert wakeups == 1
    assert len(box._getters) == 31
    for n in range(1, 32):
        await box.put(entry(n))
    got = await asyncio.gather(*tasks)
    assert sorted(int(e.event_id or "") for e in got) == list(range(32))


async def test_a_cancelled_consumer_passes_its_entry_on() -> None:
    box = MemoryOutbox(max_items=100, max_bytes=10**6)
    first = asyncio.create_task(box.get())
    second = asyncio.create_task(box.get())
    await asyncio.sleep(0)
    await box.put(entry(0))  # wakes `first` ...
    first.cancel()  # ... which is cancelled before it runs
    got = await asyncio.wait_for(second, 1.0)
    assert got.event_id == "0"
    assert len(box) == 0


async def test_reserved_room_counts_as_queued_until_filled_or_released() -> None:
    box = MemoryOutbox(max_items=3, max_bytes=100, high_water=2)
    assert box.reserve(40) and box.reserve(40)
    assert box.reserved == 2 and box.pending == 2 and len(box) == 0
    # The high-water mark is about the forwarder keeping up: only what is queued counts.
    assert not box.over_high_water()
    assert not box.has_room(30)  # bytes: 80 reserved
    assert not box.reserve(30)
    assert box.has_room(20) and box.reserve(20)
    assert not box.reserve(1)  # items: 3 reserved
    with pytest.raises(OutboxFull):
        await box.put(entry(9))
    # The scrubbed copy takes the reservation's place, at its own size: never refused.
    box.put_reserved(
        OutboxEntry(target=TARGET, body=b"y" * 55, project_id=42, quantities=[("error", 1)]), 40
    )
    assert box.reserved == 2 and len(box) == 1 and box.queued_bytes == 55
    box.release(40)
    box.release(20)
    assert box.reserved == 0
    assert box.has_room(45) and not box.has_room(46)
    got = await box.get()
    assert len(got.body) == 55 and box.pending == 1
