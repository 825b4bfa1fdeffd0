"""The cap on client connections (`listen.max_connections`, per process).

Every open connection holds a file descriptor and memory, and an idle keep-alive
connection holds them as long as a busy one, until `keepalive_timeout_s`. Without a cap,
enough clients (or one client opening sockets in a loop) take the process's memory.

At the cap a new connection is still taken, and room is made for it: idle connections
on the fast path (waiting for their next request) close, the longest idle first. An SDK
opens a new connection for its next request, so nothing is lost. They close a sixteenth
of the cap at a time, so that a flood of new connections does not sort the open ones on
every accept. Only when no connection is idle is the new one answered 503 and closed.
Connections that aiohttp serves (see `relay.web.lean`) count toward the cap, and close
only by aiohttp's own timeouts.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Callable, Iterable
from typing import Protocol, TypeVar

log = logging.getLogger("relay.web")

#: At the cap, this fraction of it (at least one) is closed among the idle connections.
SHED_FRACTION = 16
#: What a connection refused at the cap is answered (503; then it closes).
REFUSED_DETAIL = "too many connections: the relay is at its cap"
REFUSED_RETRY_AFTER_S = 1


class Idle(Protocol):
    """A connection as the cap sees it."""

    @property
    def idle_since(self) -> float | None:
        """Since when it waits for a request with nothing of it read (loop time), or
        None."""


class ConnectionStats:
    """What the cap did, for `/metrics` (one per app, shared by its listeners)."""

    def __init__(self) -> None:
        #: Open connections per listener (each a callable counting its own).
        self.counters: list[Callable[[], int]] = []
        self.idle_closed = 0
        self.refused = 0
        self._warned = False

    def open(self) -> int:
        return sum(count() for count in self.counters)

    def warn_once(self, cap: int) -> None:
        """Say once per process that the cap was reached (the metrics count each time)."""
        if not self._warned:
            self._warned = True
            log.warning(
                "%d client connections open, the cap (listen.max_connections): idle ones are"
                " closed to make room, and new ones refused while none is idle",
                cap,
            )


C = TypeVar("C", bound=Idle)


def make_room(connections: Iterable[C], cap: int) -> list[C]:
    """The idle connections to close at the cap: the longest idle, a sixteenth of `cap`
    (at least one). Empty when none is idle."""
    idle = [c for c in connections if c.idle_since is not None]
    count = max(1, cap // SHED_FRACTION)
    return heapq.nsmallest(count, idle, key=_since)


def _since(connection: Idle) -> float:
    since = connection.idle_since
    assert since is not None
    return since
