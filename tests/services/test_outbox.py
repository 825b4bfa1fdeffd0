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


async def _waiting_producers(
    box: MemoryOutbox, timeouts: list[float]
) -> tuple[list[asyncio.Task[None]], list[int]]:
    """Producers that wait for room in this order; `released` records who went, in order."""
    released: list[int] = []

    async def producer(n: int, timeout: float) -> None:
        await box.wait_for_room(timeout)
        released.append(n)

    tasks = []
    for n, timeout in enumerate(timeouts):
        tasks.append(asyncio.create_task(producer(n, timeout)))
        await asyncio.sleep(0)  # each starts waiting before the next arrives
    return tasks, released


async def test_producers_are_let_go_one_per_entry_taken_in_arrival_order() -> None:
    box = MemoryOutbox(max_items=100, max_bytes=10**6, high_water=2)
    for n in range(3):
        await box.put(entry(n))
    tasks, released = await _waiting_producers(box, [5.0, 5.0, 5.0])
    await box.get()  # 2 left: still at the mark
    await asyncio.sleep(0.01)
    assert released == []
    await box.get()  # 1 left: room for one
    await asyncio.sleep(0.01)
    assert released == [0]
    await box.put(entry(9))  # producer 0 filled it
    await box.get()
    await asyncio.sleep(0.01)
    assert released == [0, 1]
    await box.put(entry(10))
    await box.get()
    await asyncio.gather(*tasks)
    assert released == [0, 1, 2]


async def test_producers_let_go_without_queueing_pass_the_room_on() -> None:
    """Filtered envelopes queue nothing: the room they leave must not wait for a timeout."""
    box = MemoryOutbox(max_items=100, max_bytes=10**6, high_water=2)
    await box.put(entry(0))
    await box.put(entry(1))
    tasks, released = await _waiting_producers(box, [5.0, 5.0, 5.0])
    await box.get()
    await box.get()  # empty: room for two, and none of the producers queues anything
    await asyncio.wait_for(asyncio.gather(*tasks), 1.0)
    assert released == [0, 1, 2]


async def test_waits_run_out_each_at_its_own_deadline() -> None:
    box = MemoryOutbox(max_items=100, max_bytes=10**6, high_water=1)
    await box.put(entry(0))
    started = time.monotonic()
    tasks, released = await _waiting_producers(box, [0.6, 0.1, 0.3])
    await asyncio.sleep(0.2)
    assert released == [1]
    await asyncio.gather(*tasks)
    assert released == [1, 2, 0]
    assert 0.5 < time.monotonic() - started < 2.0
    assert box._expiry is None and not box._producers  # nothing left armed


async def test_a_cancelled_producer_is_skipped_and_a_released_one_passes_its_turn_on() -> None:
    box = MemoryOutbox(max_items=100, max_bytes=10**6, high_water=3)
    for n in range(3):
        await box.put(entry(n))
    tasks, released = await _waiting_producers(box, [5.0, 5.0, 5.0, 5.0])
    tasks[0].cancel()  # cancelled while waiting
    await asyncio.sleep(0)
    await box.get()  # room for one: producer 1 (0 is gone)
    tasks[1].cancel()  # ... cancelled before it ran: its turn goes to producer 2
    await asyncio.sleep(0.01)
    assert released == [2]
    await box.put(entry(3))  # producer 2 filled the room; producer 3 still waits
    await asyncio.sleep(0.01)
    assert released == [2]
    await box.get()
    await asyncio.wait_for(tasks[3], 1.0)
    assert released == [2, 3]
    for task in tasks[:2]:
        assert task.cancelled()
