"""The processing backlog: in order, one job a loop turn while few wait, and never stuck."""

from __future__ import annotations

import asyncio
import logging

import pytest

from relay.services.backlog import Backlog


async def test_jobs_run_in_order_one_per_loop_turn_while_few_wait() -> None:
    backlog = Backlog(keep=4)
    ran: list[int] = []
    for n in range(3):
        backlog.push(lambda n=n: ran.append(n))
    assert ran == [] and len(backlog) == 3  # nothing runs in the pushing turn
    await asyncio.sleep(0)
    assert ran == [0]
    await asyncio.sleep(0)
    assert ran == [0, 1]
    await asyncio.sleep(0)
    assert ran == [0, 1, 2] and len(backlog) == 0
    backlog.push(lambda: ran.append(3))  # idle again: scheduled anew
    await asyncio.sleep(0)
    assert ran == [0, 1, 2, 3]


async def test_a_saturated_backlog_is_cut_down_to_keep_in_one_turn() -> None:
    backlog = Backlog(keep=4)
    ran: list[int] = []
    for n in range(10):
        backlog.push(lambda n=n: ran.append(n))
    await asyncio.sleep(0)
    assert ran == list(range(6)) and len(backlog) == 4
    for _ in range(4):
        await asyncio.sleep(0)
    assert ran == list(range(10))


async def test_flush_runs_everything_now() -> None:
    backlog = Backlog(keep=4)
    ran: list[int] = []
    for n in range(10):
        backlog.push(lambda n=n: ran.append(n))
    backlog.flush()
    assert ran == list(range(10)) and len(backlog) == 0
    await asyncio.sleep(0)  # the scheduled turn finds nothing left
    backlog.push(lambda: ran.append(10))
    await asyncio.sleep(0)
    assert ran == list(range(11))


async def test_a_failing_job_is_logged_and_the_next_one_runs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    backlog = Backlog()
    ran: list[str] = []

    def boom() -> None:
        raise RuntimeError("a bug")

    backlog.push(boom)
    backlog.push(lambda: ran.append("next"))
    with caplog.at_level(logging.ERROR, logger="relay.backlog"):
        for _ in range(2):
            await asyncio.sleep(0)
    assert ran == ["next"]
    assert "a job of the processing backlog failed" in caplog.text
