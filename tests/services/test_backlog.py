"""The processing backlog: in order, in small batches, never stuck."""

from __future__ import annotations

import asyncio
import logging

import pytest

from relay.services.backlog import BATCH, LINGER_S, Backlog


async def test_a_batch_runs_together_on_the_turn_after_it_filled() -> None:
    backlog = Backlog(keep=16, batch=3, linger=60)
    ran: list[int] = []
    for n in range(2):
        backlog.push(lambda n=n: ran.append(n))
    for _ in range(3):
        await asyncio.sleep(0)
    assert ran == [] and len(backlog) == 2  # fewer than a batch: they wait
    backlog.push(lambda: ran.append(2))
    assert ran == []  # never in the pushing turn
    await asyncio.sleep(0)
    assert ran == [0, 1, 2] and len(backlog) == 0


async def test_fewer_than_a_batch_run_once_the_first_has_lingered() -> None:
    backlog = Backlog(keep=16, batch=8, linger=0.05)
    ran: list[int] = []
    loop = asyncio.get_running_loop()
    backlog.push(lambda: ran.append(0))
    pushed = loop.time()
    await asyncio.sleep(0.01)
    backlog.push(lambda: ran.append(1))  # joins the first one's wait, no timer of its own
    await asyncio.sleep(0.02)
    assert ran == []
    for _ in range(100):
        if ran:
            break
        await asyncio.sleep(0.005)
    assert ran == [0, 1]
    assert 0.05 <= loop.time() - pushed < 0.2
    backlog.push(lambda: ran.append(2))  # idle again: a new wait
    await asyncio.sleep(0.02)
    assert ran == [0, 1]
    await asyncio.sleep(0.06)
    assert ran == [0, 1, 2]


async def test_a_saturated_backlog_is_cut_down_to_keep_in_one_turn() -> None:
    backlog = Backlog(keep=4, batch=2, linger=60)
    ran: list[int] = []
    for n in range(10):
        backlog.push(lambda n=n: ran.append(n))
    await asyncio.sleep(0)
    assert ran == list(range(6)) and len(backlog) == 4
    await asyncio.sleep(0)
    assert ran == list(range(8))  # a batch a turn while at least a batch waits
    await asyncio.sleep(0)
    assert ran == list(range(10)) and len(backlog) == 0


async def test_what_is_left_after_a_turn_waits_for_a_batch_or_the_linger() -> None:
    backlog = Backlog(keep=16, batch=3, linger=0.03)
    ran: list[int] = []
    for n in range(5):
        backlog.push(lambda n=n: ran.append(n))
    await asyncio.sleep(0)
    assert ran == [0, 1, 2] and len(backlog) == 2
    await asyncio.sleep(0)
    assert ran == [0, 1, 2]
    await asyncio.sleep(0.06)
    assert ran == [0, 1, 2, 3, 4]


async def test_one_job_a_turn_with_batches_of_one() -> None:
    backlog = Backlog(keep=4, batch=1)
    ran: list[int] = []
    for n in range(3):
        backlog.push(lambda n=n: ran.append(n))
    assert ran == []
    for expected in ([0], [0, 1], [0, 1, 2]):
        await asyncio.sleep(0)
        assert ran == expected


async def test_flush_runs_everything_now_and_cancels_the_wait() -> None:
    backlog = Backlog(keep=4, batch=8, linger=0.01)
    ran: list[int] = []
    for n in range(3):
        backlog.push(lambda n=n: ran.append(n))
    backlog.flush()
    assert ran == [0, 1, 2] and len(backlog) == 0
    await asyncio.sleep(0.03)  # the cancelled wait runs nothing twice
    assert ran == [0, 1, 2]
    backlog.push(lambda: ran.append(3))
    await asyncio.sleep(0.03)
    assert ran == [0, 1, 2, 3]


async def test_a_failing_job_is_logged_and_the_next_one_runs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    backlog = Backlog(batch=2)
    ran: list[str] = []

    def boom() -> None:
        raise RuntimeError("a bug")

    backlog.push(boom)
    backlog.push(lambda: ran.append("next"))
    with caplog.at_level(logging.ERROR, logger="relay.backlog"):
        await asyncio.sleep(0)
    assert ran == ["next"]
    assert "a job of the processing backlog failed" in caplog.text


def test_the_defaults_batch_and_bound_the_wait() -> None:
    backlog = Backlog()
    assert backlog.batch == BATCH > 1 and backlog.linger == LINGER_S <= 0.01
    with pytest.raises(ValueError, match="batch >= 1"):
        Backlog(batch=0)
