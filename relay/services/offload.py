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
import logging
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

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

    Parameters:
        min_bytes: payloads at least this large go to the thread (`wants`).
    """

    def __init__(self, min_bytes: int = MIN_BYTES) -> None:
        self.min_bytes = min_bytes
        self._executor: ThreadPoolExecutor | None = None
        self._jobs: dict[asyncio.Task[None], _Job] = {}
        self._calls = 0

    def __len__(self) -> int:
        """Jobs waiting or running (`call` and `submit` alike)."""
        return self._calls + len(self._jobs)

    def wants(self, size: int) -> bool:
        """Whether a payload of `size` bytes is processed on the thread."""
        return size >= self.min_bytes

    def _in_thread(self, fn: Callable[[], T]) -> asyncio.Future[T]:
        return asyncio.get_running_loop().run_in_executor(self._pool(), _switching, fn)

    def _pool(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="relay-offload")
        return self._executor

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
        """Let the thread go once its job (if any) is done; no new jobs after this."""
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None


def _switching(fn: Callable[[], T]) -> T:
    """`fn()` with the short switch interval (jobs run one at a time, on one thread)."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    try:
        return fn()
    finally:
        sys.setswitchinterval(before)
