"""The backlog: the part of an envelope's processing that runs after the SDK has its answer.

What the answer depends on is decided first, in the request: the envelope parses, which
items the filters, sampling and quotas keep, and whether the outbox has room (the room
is reserved then). What the answer does not depend on (fingerprinting, scrubbing,
serializing and queueing the scrubbed copy) is pushed here and runs on a later turn of
the event loop, in arrival order.

Why: the event loop serves requests one step at a time, in turn. When a burst arrives,
each answer waited for the scrubbing of every envelope ahead of it. From the backlog,
jobs run in small batches: once `BATCH` of them wait, or once the first has waited
`LINGER_S`, a loop turn runs `BATCH` (and as many more as it takes to leave at most
`KEEP` waiting). So answers go first through a burst, and the work catches up after
it; when the relay is saturated rather than bursting (a closed loop of clients), `KEEP`
envelopes wait at most, instead of as many as the outbox's reservations allow.

Batches, rather than one job a turn: when requests arrive one at a time, each job ran
alone, after the loop had served other requests and other processes had run, and paid
again for bringing the scrubber's code and caches back (and the forwarder woke once per
job). Run back to back, the jobs of a batch share that: at a steady 1,800 envelopes/s on
the benchmark host, batches of 4 (or what waited 2 ms) cost the relay ~6% less CPU per
envelope than one job a turn. A scrubbed copy reaches the outbox up to a few
milliseconds later; the answers do not wait for it.

Jobs are plain callables run by loop callbacks (no task); each must deal with its own
errors (a job that raises anyway is logged, and the next one runs). `flush` runs what
is left at once: on shutdown, before the forwarder drains the outbox.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable

log = logging.getLogger("relay.backlog")

#: At most this many jobs wait after a loop turn (about 25 ms of work on the benchmark
#: host, and a few MB of parsed envelopes).
KEEP = 256
#: Jobs run together once this many wait...
BATCH = 4
#: ...or once the first of them has waited this long (seconds).
LINGER_S = 0.002

Job = Callable[[], None]


class Backlog:
    """A FIFO of jobs, run in small batches on later loop turns (see the module's
    docstring). `batch=1` runs one job a turn, each on the turn after it was pushed."""

    def __init__(self, keep: int = KEEP, batch: int = BATCH, linger: float = LINGER_S) -> None:
        if batch < 1 or keep < 0 or linger < 0:
            raise ValueError("a backlog needs batch >= 1, keep >= 0 and linger >= 0")
        self.keep = keep
        self.batch = batch
        self.linger = linger
        self._jobs: deque[Job] = deque()
        #: A turn is due (`call_soon`): no other is scheduled until it has run.
        self._scheduled = False
        #: Fewer than `batch` wait: the turn that runs them after `linger`.
        self._timer: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return len(self._jobs)

    def push(self, job: Job) -> None:
        self._jobs.append(job)
        if not self._scheduled:
            self._schedule()

    def flush(self) -> None:
        """Run every waiting job now."""
        self._cancel_timer()
        jobs = self._jobs
        while jobs:
            _run(jobs.popleft())

    def _schedule(self) -> None:
        if len(self._jobs) >= self.batch:
            self._cancel_timer()
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._turn)
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.linger, self._lingered)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _lingered(self) -> None:
        self._timer = None
        if not self._scheduled:
            self._turn()

    def _turn(self) -> None:
        self._scheduled = False
        jobs = self._jobs
        for _ in range(max(self.batch, len(jobs) - self.keep)):
            if not jobs:
                break
            _run(jobs.popleft())
        if jobs:
            self._schedule()


def _run(job: Job) -> None:
    try:
        job()
    except Exception:  # a job handles its own errors; this is the last guard
        log.exception("a job of the processing backlog failed")
