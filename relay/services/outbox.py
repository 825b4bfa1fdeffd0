"""The outbox: scrubbed, serialized envelopes waiting for the forwarder.

Bounded by item count and bytes; `put` refuses (the endpoint answers 503) rather
than growing without limit. Only scrubbed bytes ever enter it.

The memory outbox also takes reservations: the ingest path reserves room for an envelope
before answering the SDK, and queues the scrubbed copy later (`relay.services.backlog`).
Reserved room counts as queued for the hard limits (not for the high-water mark, which
is about the forwarder keeping up, as before). It is reserved at the size the envelope
came with; the scrubbed copy replaces that with its own size, which may be a little
larger (scrubbing can add `_meta` notes), so the byte limit can be passed by that much.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

from relay.policy.targets import Target


@dataclass(slots=True)
class OutboxEntry:
    target: Target
    body: bytes
    project_id: int
    #: (category, quantity) of every item, for the outcome once delivered or lost.
    quantities: list[tuple[str, int]]
    event_id: str | None = None
    attempts: int = 0
    enqueued_at: float = field(default_factory=time.monotonic)
    #: When the relay accepted it (Unix seconds; the spool keeps it across restarts).
    received_at: float = field(default_factory=time.time)
    #: The upstream endpoint: "envelope", or "minidump" for raw uploads.
    endpoint: str = "envelope"
    content_type: str = "application/x-sentry-envelope"
    #: `body`'s content coding: "" (as is) or "gzip" (already compressed, sent as is).
    encoding: str = ""
    #: The SDK's public key the target was resolved for ("" for shadow copies).
    app_key: str = ""
    #: The SDK's `User-Agent` and `sentry_client`, forwarded as Sentry's Relay forwards
    #: them ("": the relay's own, for what the relay sends itself).
    user_agent: str = ""
    client: str = ""


class OutboxFull(Exception):
    """No room: the caller answers 503 with Retry-After."""


class Outbox(Protocol):
    """What the ingest path and the forwarder need: the memory queue or the disk spool."""

    def __len__(self) -> int: ...

    @property
    def queued_bytes(self) -> int: ...

    @property
    def pending(self) -> int: ...

    def has_room(self, size: int) -> bool: ...

    def over_high_water(self) -> bool: ...

    async def wait_for_room(self, timeout: float) -> None: ...

    async def put(self, entry: OutboxEntry) -> None: ...

    async def get(self) -> OutboxEntry: ...

    def done(self, entry: OutboxEntry) -> None: ...

    def drain_nowait(self) -> list[OutboxEntry]: ...


class MemoryOutbox:
    """An asyncio FIFO bounded by items and bytes."""

    def __init__(self, max_items: int, max_bytes: int, high_water: int | None = None) -> None:
        self.max_items = max_items
        self.max_bytes = max_bytes
        #: Above this many queued entries, `wait_for_room` makes producers wait.
        self.high_water = high_water if high_water is not None else max_items
        self._room = asyncio.Event()
        self._room.set()
        self._queue: deque[OutboxEntry] = deque()
        self._bytes = 0
        #: Forwarder tasks waiting for an entry; each `put` wakes exactly one.
        self._getters: deque[asyncio.Future[None]] = deque()
        self._in_flight = 0
        #: Room held for envelopes still being processed (`reserve`).
        self._reserved = 0
        self._reserved_bytes = 0

    def __len__(self) -> int:
        return len(self._queue)

    @property
    def queued_bytes(self) -> int:
        return self._bytes

    @property
    def pending(self) -> int:
        """Reserved, queued, and being sent."""
        return self._reserved + len(self._queue) + self._in_flight

    @property
    def reserved(self) -> int:
        return self._reserved

    @property
    def reserved_bytes(self) -> int:
        return self._reserved_bytes

    def has_room(self, size: int) -> bool:
        return (
            len(self._queue) + self._reserved < self.max_items
            and self._bytes + self._reserved_bytes + size <= self.max_bytes
        )

    def reserve(self, size: int) -> bool:
        """Hold room for an envelope of `size` bytes that `put_reserved` will queue (or
        `release` give up); False when there is none."""
        if not self.has_room(size):
            return False
        self._reserved += 1
        self._reserved_bytes += size
        return True

    def put_reserved(self, entry: OutboxEntry, size: int) -> None:
        """Queue `entry` in the room reserved for `size` bytes: never refused."""
        self.release(size)
        self._queue.append(entry)
        self._bytes += len(entry.body)
        self._wake_one()

    def release(self, size: int) -> None:
        """Give up a reservation (nothing of the envelope is left to queue)."""
        self._reserved -= 1
        self._reserved_bytes -= size

    async def put(self, entry: OutboxEntry) -> None:
        self.put_nowait(entry)

    def over_high_water(self) -> bool:
        """Producers should wait (`wait_for_room`) before queueing more."""
        return len(self._queue) >= self.high_water

    async def wait_for_room(self, timeout: float) -> None:
        """Back-pressure: while the queue is above its high-water mark, wait (bounded)."""
        if not self.over_high_water():
            return
        self._room.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._room.wait()

    def put_nowait(self, entry: OutboxEntry) -> None:
        if not self.has_room(len(entry.body)):
            raise OutboxFull
        self._queue.append(entry)
        self._bytes += len(entry.body)
        self._wake_one()

    def _wake_one(self) -> None:
        getters = self._getters
        while getters:
            getter = getters.popleft()
            if not getter.done():
                getter.set_result(None)
                return

    async def get(self) -> OutboxEntry:
        while not self._queue:
            getter = asyncio.get_running_loop().create_future()
            self._getters.append(getter)
            try:
                await getter
            except BaseException:
                getter.cancel()
                with contextlib.suppress(ValueError):
                    self._getters.remove(getter)
                if self._queue and not getter.cancelled():
                    self._wake_one()  # it was woken for an entry: pass the turn on
                raise
        entry = self._queue.popleft()
        if len(self._queue) < self.high_water:
            self._room.set()
        self._bytes -= len(entry.body)
        self._in_flight += 1
        return entry

    def done(self, entry: OutboxEntry) -> None:
        """The forwarder is finished with `entry` (delivered or dropped with an outcome)."""
        self._in_flight -= 1

    def drain_nowait(self) -> list[OutboxEntry]:
        entries = list(self._queue)
        self._queue.clear()
        self._bytes = 0
        return entries
