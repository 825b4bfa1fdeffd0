"""The backlog: the part of an envelope's processing that runs after the SDK has its answer.

What the answer depends on is decided first, in the request: the envelope parses, which
items the filters, sampling and quotas keep, and whether the outbox has room (the room
is reserved then). What the answer does not depend on (fingerprinting, scrubbing,
serializing and queueing the scrubbed copy) is pushed here and runs on a later turn of
the event loop, in arrival order.

Why: the event loop serves requests one step at a time, in turn. When a burst arrives,
each answer waited for the scrubbing of every envelope ahead of it. From the backlog a
loop turn runs one job, and as many more as it takes to leave at most `KEEP` waiting.
So answers go first through a burst, and the work catches up after it; when the relay
is saturated rather than bursting (a closed loop of clients), `KEEP` envelopes wait at
most, instead of as many as the outbox's reservations allow.

Jobs are plain callables run by loop callbacks (no task); each must deal with its own
errors (a job that raises anyway is logged, and the next one runs). `flush` runs what
is left at once: on shutdown, before the forwarder drains the outbox.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable

from relay.logs import log_unexpected

log = logging.getLogger("relay.backlog")

#: At most this many jobs wait after a loop turn (about 25 ms of work on the benchmark
#: host, and a few MB of parsed envelopes).
KEEP = 256

Job = Callable[[], None]


class Backlog:
    """A FIFO of jobs, run a few per loop turn (see the module's docstring)."""

    def __init__(self, keep: int = KEEP) -> None:
        self.keep = keep
        self._jobs: deque[Job] = deque()
        self._scheduled = False

    def __len__(self) -> int:
        return len(self._jobs)

    def push(self, job: Job) -> None:
        self._jobs.append(job)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._turn)

    def flush(self) -> None:
        """Run every waiting job now."""
        jobs = self._jobs
        while jobs:
            _run(jobs.popleft())

    def _turn(self) -> None:
        jobs = self._jobs
        for _ in range(max(1, len(jobs) - self.keep)):
            if not jobs:
                break
            _run(jobs.popleft())
        if jobs:
            asyncio.get_running_loop().call_soon(self._turn)
        else:
            self._scheduled = False


def _run(job: Job) -> None:
    try:
        job()
    except Exception:  # a job handles its own errors; this is the last guard
        log_unexpected(log, "a job of the processing backlog failed")
