"""The spool after an unclean stop: what a relay killed with SIGKILL sends again.

Delivered records are marked as they are finished (not only on a clean close), so a
restart after SIGKILL, an OOM kill or a power loss sends again only what was in flight
(and, after a power loss, what was finished in the last second), and never less than
everything not delivered.
"""

from __future__ import annotations

import asyncio
import os
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from relay.services.outbox import OutboxEntry
from relay.services.spool import DiskSpool
from tests.services.test_spool import entry, take
from tests.support.process import RelayProcess
from tests.support.relay import KEY
from tests.support.upstream import RecordingUpstream, Reply

CONCURRENCY = 4


async def crash(spool: DiskSpool) -> None:
    """Leave the spool as SIGKILL would: its files as written so far, and nothing else
    (no close, no marks written, nothing fsynced)."""
    spool._marks_closed = True  # the marks of this turn of the loop are never written
    for task in (spool._flusher, getattr(spool, "_syncer", None)):
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    for fh in (spool._wfile, spool._rfile):
        if fh is not None:
            fh.close()  # type: ignore[attr-defined]
    for seg in spool._segments.values():
        if getattr(seg, "marks_fd", -1) >= 0:
            os.close(seg.marks_fd)


async def reopen(path: Path, **kwargs: Any) -> DiskSpool:
    spool = DiskSpool(path, max_bytes=10**8, max_age=kwargs.pop("max_age", 0), **kwargs)
    await spool.open()
    return spool


def ids(entries: list[OutboxEntry]) -> list[int]:
    return [int(e.event_id or "", 16) for e in entries]


async def test_after_a_crash_only_what_was_not_finished_is_read_again(tmp_path: Path) -> None:
    """Finished out of order, one in flight, some never read: the restart reads the one in
    flight and those not read, in order, and nothing that was finished."""
    spool = await reopen(tmp_path)
    for i in range(10):
        await spool.put(entry(i))
    got = [await spool.get() for _ in range(6)]
    for i in (0, 1, 2, 5, 4):  # 3 is still being sent
        spool.done(got[i])
    await asyncio.sleep(0)  # the marks of this turn of the loop are written
    await crash(spool)

    again = await reopen(tmp_path)
    assert len(again) == 5
    assert ids(await take(again, 5)) == [3, 6, 7, 8, 9]
    await asyncio.sleep(0)
    await crash(again)  # and a second crash, once those are finished too: nothing
    third = await reopen(tmp_path)
    assert len(third) == 0
    await third.close()
    assert list(tmp_path.iterdir()) == []


async def test_an_expired_record_is_not_reported_again_after_a_crash(tmp_path: Path) -> None:
    expired: list[OutboxEntry] = []
    spool = await reopen(tmp_path, max_age=0.1, on_expired=expired.append)
    await spool.put(entry(0))
    await asyncio.sleep(0.2)
    await spool.put(entry(1))
    assert ids(await take(spool, 1)) == [1]
    assert ids(expired) == [0]
    await asyncio.sleep(0)
    await crash(spool)
    again = await reopen(tmp_path, max_age=0.1, on_expired=expired.append)
    assert len(again) == 0
    await again.put(entry(2))
    assert ids(await take(again, 1)) == [2]
    assert ids(expired) == [0]
    await again.close()


async def test_torn_or_zeroed_marks_skip_nothing_that_was_not_finished(tmp_path: Path) -> None:
    """A power loss can leave the marks file with a torn or zero-filled tail: those bytes
    fail their crc and mark nothing (zeros would otherwise name offset 0), the marks after
    them are dropped (only sent again), and the file is cut back so that the marks the
    next run appends are read."""
    spool = await reopen(tmp_path)
    for i in range(5):
        await spool.put(entry(i))
    got = await take(spool, 2)
    assert ids(got) == [0, 1]
    await asyncio.sleep(0)
    await crash(spool)
    (marks,) = tmp_path.glob("seg-*.acks")
    good = marks.read_bytes()
    assert len(good) == 2 * 12
    third_offset = int.from_bytes(good[12:20], "little") * 2  # records of equal size
    forged = third_offset.to_bytes(8, "little")
    forged += zlib.crc32(forged).to_bytes(4, "little")
    marks.write_bytes(good + b"\0" * 12 + forged + b"\x07" * 5)

    again = await reopen(tmp_path)
    assert len(again) == 3
    assert marks.stat().st_size == len(good)  # cut back to its valid marks
    assert ids(await take(again, 1)) == [2]
    await asyncio.sleep(0)
    await crash(again)
    third = await reopen(tmp_path)
    assert ids(await take(third, 2)) == [3, 4]
    await third.close()


async def test_marks_left_by_a_deleted_segment_never_skip_a_new_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Segment numbers start again at 1 in an empty spool, and the next segment of a live
    one may find a file of its name (a deletion that did not reach the disk): marks that
    are not the segment's own never apply to it (their number is passed over)."""
    spool = await reopen(tmp_path)
    await spool.put(entry(0))
    await take(spool, 1)
    await asyncio.sleep(0)
    await crash(spool)
    (marks,) = tmp_path.glob("seg-*.acks")
    stale = marks.read_bytes()  # marks offset 0 as finished
    (tmp_path / marks.name.replace(".acks", ".log")).unlink()

    again = await reopen(tmp_path)  # the orphan is removed at start
    await again.put(entry(1))
    monkeypatch.setattr("relay.services.spool.SEGMENT_BYTES", 1)
    number = max(again._segments) + 1
    (tmp_path / f"seg-{number:012d}.acks").write_bytes(stale)  # ahead of the next segment
    await again.put(entry(2))  # rotates: entry 2 is at offset 0 of the next segment
    await crash(again)
    third = await reopen(tmp_path)
    assert ids(await take(third, 2)) == [1, 2]
    await third.close()


async def test_marks_are_fsynced_about_once_a_second_not_per_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    spool = await reopen(tmp_path)
    for first in range(0, 300, 100):
        await asyncio.gather(*(spool.put(entry(i)) for i in range(first, first + 100)))
    for _ in range(300):  # 300 records finished over about 0.3 s, each on its own turn
        e = await spool.get()
        spool.done(e)
        await asyncio.sleep(0.001)
    assert sum(p.endswith(".acks") for p in synced) <= 2
    await asyncio.sleep(1.2)
    (marks,) = tmp_path.glob("seg-*.acks")
    assert marks.stat().st_size == 300 * 12
    assert spool._unsynced == set()  # all of them fsynced within the second
    assert sum(p.endswith(".acks") for p in synced) <= 3
    await spool.close()


def envelope(n: int) -> bytes:
    return (
        orjson.dumps({"event_id": f"{n:032x}"})
        + b'\n{"type":"event"}\n'
        + orjson.dumps({"message": f"m{n}", "extra": {"pad": "x" * 200}})
        + b"\n"
    )


async def post(session: aiohttp.ClientSession, url: str, n: int) -> bool:
    try:
        async with session.post(
            f"{url}/api/42/envelope/?sentry_key={KEY}", data=envelope(n)
        ) as resp:
            await resp.read()
            return resp.status == 200
    except (TimeoutError, aiohttp.ClientError):
        return False


def relay_config(upstream_url: str, spool: Path) -> dict[str, Any]:
    return {
        "upstream": {
            "url": upstream_url,
            "retry_base_s": 0.05,
            "retry_max_s": 0.2,
            "concurrency": CONCURRENCY,
        },
        "projects": [{"id": 42, "keys": [KEY]}],
        "shutdown_timeout": 5,
        "spool": {"path": str(spool)},  # durable, as by default
    }


@pytest.fixture
def relay(tmp_path: Path, upstream_url: str) -> Iterator[RelayProcess]:
    proc = RelayProcess(tmp_path, relay_config(upstream_url, tmp_path / "spool"))
    yield proc
    proc.kill()


def event_ids(recorder: RecordingUpstream, since: int = 0) -> list[str]:
    return [e.event_id or "" for e in recorder.envelopes[since:]]


async def settle(recorder: RecordingUpstream, quiet: float = 0.7, timeout: float = 30) -> None:
    """Wait until the upstream has received nothing for `quiet` seconds."""
    async with asyncio.timeout(timeout):
        while True:
            seen = len(recorder.received)
            await asyncio.sleep(quiet)
            if len(recorder.received) == seen:
                return


async def kill_restart_and_count_resent(
    relay: RelayProcess, recorder: RecordingUpstream, marker: int
) -> tuple[int, list[str], list[str]]:
    """SIGKILL the relay, start it on the same spool, send one more envelope, and wait
    until the replay is over. Returns how many envelopes delivered before the kill were
    sent again, and the event ids received before the kill and after the restart."""
    relay.kill()
    count_before = len(recorder.received)
    before = event_ids(recorder)
    await asyncio.to_thread(relay.start)
    async with aiohttp.ClientSession() as session:
        assert await post(session, relay.url, marker)
    async with asyncio.timeout(30):
        while f"{marker:032x}" not in event_ids(recorder, count_before):
            await asyncio.sleep(0.05)
    await settle(recorder)
    after = event_ids(recorder, count_before)
    delivered = set(before)
    resent = sum(1 for eid in after if eid in delivered)
    return resent, before, after


async def test_a_relay_killed_once_all_is_delivered_sends_nothing_again(
    relay: RelayProcess, recorder: RecordingUpstream
) -> None:
    """All delivered, a second of quiet, SIGKILL: the restart sends nothing again (before,
    everything written since the last segment rotation came back: here all 300)."""
    n = 300
    await asyncio.to_thread(relay.start)
    async with aiohttp.ClientSession() as session:
        for first in range(0, n, 50):
            oks = await asyncio.gather(
                *(post(session, relay.url, i) for i in range(first, first + 50))
            )
            assert all(oks)
    async with asyncio.timeout(20):
        while len(set(event_ids(recorder))) < n:
            await asyncio.sleep(0.05)
    await asyncio.sleep(1.5)  # longer than the marks take to reach the disk
    resent, _, after = await kill_restart_and_count_resent(relay, recorder, n)
    print(f"re-sent after SIGKILL, all {n} delivered: {resent}")
    assert resent == 0, f"{resent} of {n} delivered envelopes sent again"
    assert after == [f"{n:032x}"]


async def test_a_relay_killed_under_traffic_sends_again_only_what_was_in_flight(
    relay: RelayProcess, recorder: RecordingUpstream
) -> None:
    """SIGKILL in the middle of steady traffic (a slow upstream, so that envelopes are in
    flight): every acknowledged envelope arrives, and what is sent again is at most what
    the forwarder held at the kill (one envelope per task being sent, one just finished)."""
    recorder.answer(*[Reply(200, delay=0.01)] * 5000)
    await asyncio.to_thread(relay.start)
    acknowledged: set[str] = set()

    async def send(session: aiohttp.ClientSession, i: int) -> None:
        if await post(session, relay.url, i):
            acknowledged.add(f"{i:032x}")

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        tasks = []
        started = time.monotonic()
        i = 0
        while time.monotonic() - started < 2.0:  # ~200 envelopes a second
            tasks.append(asyncio.create_task(send(session, i)))
            i += 1
            await asyncio.sleep(0.005)
        resent, before, after = await kill_restart_and_count_resent(relay, recorder, 10**6)
        await asyncio.gather(*tasks)
    print(f"re-sent after SIGKILL under traffic: {resent} (delivered before: {len(before)})")
    assert len(set(before)) > 100
    assert acknowledged <= set(before) | set(after), "an acknowledged envelope was lost"
    assert resent <= 2 * CONCURRENCY, f"{resent} delivered envelopes sent again"
