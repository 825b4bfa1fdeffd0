"""The offload thread: large jobs off the event loop, one outcome each, given up at shutdown."""

from __future__ import annotations

import asyncio
import logging
import threading

import pytest

from relay.outcomes import Reason
from relay.services.offload import MIN_BYTES, Offload


async def test_wants_only_large_payloads() -> None:
    offload = Offload()
    assert not offload.wants(MIN_BYTES - 1)
    assert offload.wants(MIN_BYTES)
    assert Offload(min_bytes=10).wants(10)


async def test_call_runs_on_the_worker_thread_and_returns_its_result() -> None:
    offload = Offload()
    try:
        name = await offload.call(lambda: threading.current_thread().name)
        assert name.startswith("relay-offload")
        assert len(offload) == 0
        with pytest.raises(ValueError, match="bad"):
            await offload.call(lambda: (_ for _ in ()).throw(ValueError("bad")))
    finally:
        offload.close()


async def test_submit_runs_then_on_the_loop_with_the_result() -> None:
    offload = Offload()
    loop_thread = threading.current_thread()
    seen: list[tuple[str, bool]] = []
    done = asyncio.Event()

    def then(result: str) -> None:
        seen.append((result, threading.current_thread() is loop_thread))
        done.set()

    offload.submit(
        lambda: threading.current_thread().name, then, lambda reason: seen.append(("failed", False))
    )
    assert len(offload) == 1
    await asyncio.wait_for(done.wait(), 5)
    assert seen[0][0].startswith("relay-offload") and seen[0][1] is True
    assert await offload.drain(1) == 0
    offload.close()


async def test_a_failing_job_is_logged_and_failed_once(caplog: pytest.LogCaptureFixture) -> None:
    offload = Offload()
    reasons: list[str] = []
    ran: list[object] = []

    def boom() -> None:
        raise RuntimeError("a bug")

    with caplog.at_level(logging.ERROR, logger="relay.offload"):
        offload.submit(boom, ran.append, reasons.append)
        assert await offload.drain(5) == 0
    assert reasons == [Reason.PROCESSING_FAILED] and ran == []
    assert "a job on the offload thread failed" in caplog.text
    offload.close()


async def test_drain_waits_for_jobs_in_progress() -> None:
    offload = Offload()
    gate = threading.Event()
    results: list[int] = []
    offload.submit(lambda: gate.wait(5) and 7, results.append, lambda reason: None)
    asyncio.get_running_loop().call_later(0.05, gate.set)
    assert await offload.drain(5) == 0
    assert results == [7]
    offload.close()


async def test_drain_gives_up_jobs_past_the_timeout_with_one_shutdown_outcome() -> None:
    offload = Offload()
    gate = threading.Event()
    results: list[object] = []
    reasons: list[str] = []
    offload.submit(lambda: gate.wait(5), results.append, reasons.append)
    offload.submit(lambda: 1, results.append, reasons.append)  # queued behind the first
    assert await offload.drain(0.05) == 2
    assert reasons == [Reason.SHUTDOWN, Reason.SHUTDOWN]
    gate.set()
    await asyncio.sleep(0.1)  # the thread finishes the first job: its result goes nowhere
    assert results == [] and reasons == [Reason.SHUTDOWN, Reason.SHUTDOWN]
    offload.close()
