"""The offload thread: large jobs off the event loop, one outcome each, given up at shutdown."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from relay.outcomes import Reason
from relay.services.offload import MIN_BYTES, SWITCH_INTERVAL_S, Offload


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


async def test_overlapping_jobs_of_two_offloads_restore_the_switch_interval() -> None:
    before = sys.getswitchinterval()
    first, second = Offload(), Offload()
    started = [threading.Event(), threading.Event()]
    go = [threading.Event(), threading.Event()]

    def job(n: int) -> float:
        started[n].set()
        go[n].wait(5)
        return sys.getswitchinterval()

    a = asyncio.ensure_future(first.call(lambda: job(0)))
    await asyncio.to_thread(started[0].wait, 5)
    b = asyncio.ensure_future(second.call(lambda: job(1)))
    await asyncio.to_thread(started[1].wait, 5)
    go[0].set()
    assert await a == SWITCH_INTERVAL_S
    go[1].set()
    assert await b == SWITCH_INTERVAL_S  # still short: the other job was running
    first.close()
    second.close()
    assert sys.getswitchinterval() == before


def test_a_job_given_up_does_not_hold_the_process_exit(tmp_path: Path) -> None:
    """The thread is a daemon: a job still running at exit (given up by `drain`) is not
    waited for, as a `ThreadPoolExecutor`'s thread would be."""
    script = tmp_path / "exit.py"
    script.write_text(
        textwrap.dedent(
            """
            import asyncio, threading
            from relay.services.offload import Offload

            async def main():
                offload = Offload()
                started = threading.Event()
                never = threading.Event()
                offload.submit(lambda: (started.set(), never.wait()), print, print)
                await asyncio.to_thread(started.wait, 5)
                print("given up", await offload.drain(0.05))
                offload.close()

            asyncio.run(main())
            """
        )
    )
    repo = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=repo,
        env={**os.environ, "PYTHONPATH": str(repo)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["shutdown", "given up 1"]
