"""Large payloads are processed on a worker thread, so that the event loop keeps serving.

Scrubbing costs about 0.1 s of CPU per MiB of payload, and a request may carry up to
`limits.max_decompressed_bytes` (100 MiB by default): on the event loop, one large
attachment from a public DSN would stop every other request for seconds. Work on a
payload of `MIN_BYTES` or more runs on one thread of its own instead. Under the GIL
the two threads still share one core, but the interpreter switches between them (every
`SWITCH_INTERVAL_S` while a job runs), so the loop answers requests throughout.

One thread, in submission order: a second thread would only contend for the same
core. What runs there must be pure (it reads and returns values; the caches it fills
hold results that depend only on their keys); what it hands back is applied on the
event loop by the caller (`then`). Small payloads stay on the loop, where they cost
less than the hand-off.

At shutdown, `drain` waits for the jobs in progress before the forwarder's last drain,
so that what was accepted is queued; a job still running at the deadline is given up
and its items get their outcome (`internal`, `shutdown`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import sys
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from relay.logs import log_unexpected
from relay.outcomes import Reason

log = logging.getLogger("relay.offload")

#: The interpreter's switch interval while a job runs (the default is 5 ms). The loop
#: thread waits up to this long for the GIL each time it wakes; at 5 ms, small answers
#: during a large scrub had a p99 of ~100 ms in `bench/stall.py`, at 0.5 ms ~30 ms.
SWITCH_INTERVAL_S = 0.0005

#: Payloads this large (in bytes, all items of an envelope together) are processed on
#: the worker thread: about 25 ms of scrubbing on the benchmark host.
MIN_BYTES = 256 * 1024

T = TypeVar("T")


class _Job:
    """Whether a submitted job's outcome has been given (`then` or `failed`, once)."""

    __slots__ = ("failed", "settled")

    def __init__(self, failed: Callable[[str], None]) -> None:
        self.failed = failed
        self.settled = False

    def settle(self) -> bool:
        """Claim the outcome; False when it was given already."""
        if self.settled:
            return False
        self.settled = True
        return True

    def fail(self, reason: str) -> None:
        if self.settle():
            self.failed(reason)


class Offload:
    """One worker thread for large, pure jobs (see the module's docstring).

    The thread is a daemon of its own rather than a `ThreadPoolExecutor`'s, whose
    threads the interpreter joins at exit: a job given up at shutdown would hold the
    process's exit for as long as it still runs.

    Parameters:
        min_bytes: payloads at least this large go to the thread (`wants`).
    """

    def __init__(self, min_bytes: int = MIN_BYTES) -> None:
        self.min_bytes = min_bytes
        self._queue: queue.SimpleQueue[_Work | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._jobs: dict[asyncio.Task[None], _Job] = {}
        self._calls = 0

    def __len__(self) -> int:
        """Jobs waiting or running (`call` and `submit` alike)."""
        return self._calls + len(self._jobs)

    def wants(self, size: int) -> bool:
        """Whether a payload of `size` bytes is processed on the thread."""
        return size >= self.min_bytes

    def _in_thread(self, fn: Callable[[], T]) -> asyncio.Future[T]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        if self._thread is None:
            self._thread = threading.Thread(
                target=_work, args=(self._queue,), name="relay-offload", daemon=True
            )
            self._thread.start()
        self._queue.put((fn, future, loop))
        return future

    async def call(self, fn: Callable[[], T]) -> T:
        """`fn()` on the worker thread; its result or its exception."""
        self._calls += 1
        try:
            return await self._in_thread(fn)
        finally:
            self._calls -= 1

    def submit(
        self, fn: Callable[[], T], then: Callable[[T], None], failed: Callable[[str], None]
    ) -> None:
        """Run `fn()` on the worker thread, then `then(result)` on the event loop.

        If `fn` raises, the error is logged and `failed(Reason.PROCESSING_FAILED)` runs
        instead; if the job is still running when `drain` gives up, `failed(Reason.SHUTDOWN)`.
        Exactly one of the two callbacks runs, on the loop; neither may raise.
        """
        job = _Job(failed)
        task = asyncio.get_running_loop().create_task(self._run(fn, then, job))
        self._jobs[task] = job
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        job = self._jobs.pop(task, None)
        if job is not None and task.cancelled():
            job.fail(Reason.SHUTDOWN)

    async def _run(self, fn: Callable[[], T], then: Callable[[T], None], job: _Job) -> None:
        try:
            result = await self._in_thread(fn)
        except Exception:
            log_unexpected(log, "a job on the offload thread failed")
            job.fail(Reason.PROCESSING_FAILED)
            return
        if job.settle():
            then(result)

    async def drain(self, timeout: float) -> int:
        """Wait up to `timeout` seconds for the submitted jobs; those still running then
        are given up (`failed(Reason.SHUTDOWN)`). Returns how many were given up."""
        if self._jobs:
            await asyncio.wait(set(self._jobs), timeout=timeout)
        left = list(self._jobs.items())
        for task, job in left:
            job.fail(Reason.SHUTDOWN)
            task.cancel()
        return len(left)

    def close(self) -> None:
        """Let the thread go once its job (if any) is done; jobs still queued are not run
        (their awaiting tasks were given up by `drain`)."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread = None
            self._queue = queue.SimpleQueue()


#: (function, its future, the loop that awaits it): one job for the thread.
_Work = tuple[Callable[[], Any], "asyncio.Future[Any]", asyncio.AbstractEventLoop]


def _work(jobs: queue.SimpleQueue[_Work | None]) -> None:
    """The worker thread: runs jobs in order until it gets None."""
    while (job := jobs.get()) is not None:
        fn, future, loop = job
        if future.cancelled():
            continue  # its caller is gone (given up at shutdown)
        try:
            result = _SHORT_SWITCH.run(fn)
        except BaseException as exc:
            _settle(loop, future.set_exception, future, exc)
        else:
            _settle(loop, future.set_result, future, result)


def _settle(
    loop: asyncio.AbstractEventLoop,
    setter: Callable[[Any], None],
    future: asyncio.Future[Any],
    value: Any,
) -> None:
    """`setter(value)` on the loop, unless the future is done by then (or the loop is)."""

    def settle() -> None:
        if not future.done():
            setter(value)

    with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
        loop.call_soon_threadsafe(settle)


class _ShortSwitch:
    """`SWITCH_INTERVAL_S` while any job runs, on any thread; the interval as it was
    once none does (jobs of two relays in one process may overlap, as in tests)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running = 0
        self._before = 0.0

    def run(self, fn: Callable[[], T]) -> T:
        with self._lock:
            if self._running == 0:
                self._before = sys.getswitchinterval()
                sys.setswitchinterval(SWITCH_INTERVAL_S)
            self._running += 1
        try:
            return fn()
        finally:
            with self._lock:
                self._running -= 1
                if self._running == 0:
                    sys.setswitchinterval(self._before)


_SHORT_SWITCH = _ShortSwitch()
