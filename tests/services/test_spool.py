"""The disk spool: group commit, ordered replay after restart, torn tails, limits, age."""

from __future__ import annotations

import asyncio
import gzip
from pathlib import Path

import msgspec
import pytest

from relay.policy.targets import resolve_target
from relay.services.outbox import OutboxEntry, OutboxFull
from relay.services.spool import DiskSpool, _decode

TARGET = resolve_target("https://sentry.example.com", None, 42, "abc123def4567890abc123def4567890")


def entry(n: int, size: int = 100) -> OutboxEntry:
    return OutboxEntry(
        target=TARGET,
        body=f"envelope {n} ".encode() + b"x" * size,
        project_id=42,
        quantities=[("error", 1)],
        event_id=f"{n:032x}",
    )


async def take(spool: DiskSpool, n: int) -> list[OutboxEntry]:
    out = []
    async with asyncio.timeout(5):
        for _ in range(n):
            e = await spool.get()
            out.append(e)
            spool.done(e)
    return out


async def test_group_commit_and_order(tmp_path: Path) -> None:
    spool = DiskSpool(tmp_path, max_bytes=10**8, max_age=0)
    await spool.open()
    await asyncio.gather(*(spool.put(entry(i)) for i in range(200)))
    # 200 concurrent puts share far fewer fsync'd batches.
    assert spool.batches_written < 20
    assert len(spool) == 200
    got = await take(spool, 200)
    assert [e.event_id for e in got] == [f"{i:032x}" for i in range(200)]
    assert got[0].target == TARGET and got[0].quantities == [("error", 1)]
    assert spool.pending == 0
    await spool.close()


async def test_restart_replays_unfinished_in_order(tmp_path: Path) -> None:
    spool = DiskSpool(tmp_path, max_bytes=10**8, max_age=0)
    await spool.open()
    for i in range(10):
        await spool.put(entry(i))
    await take(spool, 3)
    await spool.get()  # read but never finished: must come back after restart
    await spool.close()

    # The close recorded where the first unfinished record starts.
    assert [p.name for p in tmp_path.glob("seg-*.done")] == ["seg-000000000001.done"]

    again = DiskSpool(tmp_path, max_bytes=10**8, max_age=0)
    await again.open()
    assert len(again) == 7  # the three finished are not sent again; the one in flight is
    await again.put(entry(10))
    got = await take(again, 8)
    assert [int(e.event_id or "", 16) for e in got] == list(range(3, 11))
    await again.close()
    # Every record finished: no segment and no mark is left.
    assert list(tmp_path.iterdir()) == []


async def test_a_clean_restart_sends_nothing_twice(tmp_path: Path) -> None:
    """Records delivered (or expired) before a clean close are not read again: each would
    be sent and counted a second time."""
    expired: list[OutboxEntry] = []
    spool = DiskSpool(tmp_path, max_bytes=10**8, max_age=0.2, on_expired=expired.append)
    await spool.open()
    await spool.put(entry(0))
    await asyncio.sleep(0.3)  # record 0 expires before it is read
    for i in range(1, 6):
        await spool.put(entry(i))
    got = await take(spool, 5)
    assert [int(e.event_id or "", 16) for e in got] == [1, 2, 3, 4, 5]
    await spool.put(entry(6))  # not read before the close
    await spool.close()
    assert [e.event_id for e in expired] == [f"{0:032x}"]

    again = DiskSpool(tmp_path, max_bytes=10**8, max_age=0.2, on_expired=expired.append)
    await again.open()
    assert len(again) == 1
    (left,) = await take(again, 1)
    assert left.event_id == f"{6:032x}"
    assert len(expired) == 1  # the expired record is not read (and reported) again
    await again.close()

    third = DiskSpool(tmp_path, max_bytes=10**8, max_age=0)
    await third.open()
    assert len(third) == 0
    await third.close()


async def test_a_done_mark_that_does_not_fit_its_segment_is_ignored(tmp_path: Path) -> None:
    spool = DiskSpool(tmp_path, max_bytes=10**8, max_age=0)
    await spool.open()
    for i in range(3):
        await spool.put(entry(i))
    await spool.close()
    (seg,) = tmp_path.glob("seg-*.log")
    seg.with_suffix(".done").write_text("99999999\n")  # past the end: read it all
    again = DiskSpool(tmp_path, max_bytes=10**8, max_age=0)
    await again.open()
    assert [int(e.event_id or "", 16) for e in await take(again, 3)] == [0, 1, 2]
    await again.close()


async def test_torn_tail_is_skipped_and_counted(tmp_path: Path) -> None:
    spool = DiskSpool(tmp_path, max_bytes=10**8, max_age=0)
    await spool.open()
    for i in range(5):
        await spool.put(entry(i))
    await spool.close()
    (seg,) = tmp_path.glob("seg-*.log")
    data = seg.read_bytes()
    seg.write_bytes(data[:-40])  # power loss in the middle of the last record

    again = DiskSpool(tmp_path, max_bytes=10**8, max_age=0)
    await again.open()
    got = await take(again, 4)
    assert [int(e.event_id or "", 16) for e in got] == [0, 1, 2, 3]
    await again.put(entry(99))
    (last,) = await take(again, 1)
    assert last.event_id == f"{99:032x}"
    assert again.corrupt_records == 1
    await again.close()


async def test_garbage_segment_does_not_crash(tmp_path: Path) -> None:
    (tmp_path / "seg-000000000001.log").write_bytes(b"\x00garbage" * 100)
    spool = DiskSpool(tmp_path, max_bytes=10**8, max_age=0)
    await spool.open()
    await spool.put(entry(1))
    (got,) = await take(spool, 1)
    assert got.event_id == f"{1:032x}"
    assert spool.corrupt_records == 1
    await spool.close()


async def test_full_spool_refuses(tmp_path: Path) -> None:
    spool = DiskSpool(tmp_path, max_bytes=1000, max_age=0)
    await spool.open()
    await spool.put(entry(1, size=400))
    with pytest.raises(OutboxFull):
        await spool.put(entry(2, size=800))
    await spool.close()


async def test_expired_records_get_reported(tmp_path: Path) -> None:
    expired: list[OutboxEntry] = []
    spool = DiskSpool(tmp_path, max_bytes=10**8, max_age=0.05, on_expired=expired.append)
    await spool.open()
    await spool.put(entry(1))
    await asyncio.sleep(0.1)
    await spool.put(entry(2))
    (got,) = await take(spool, 1)
    assert got.event_id == f"{2:032x}"
    assert [e.event_id for e in expired] == [f"{1:032x}"]
    await spool.close()


async def test_rotation_deletes_finished_segments(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("relay.services.spool.SEGMENT_BYTES", 1000)
    spool = DiskSpool(tmp_path, max_bytes=10**8, max_age=0)
    await spool.open()
    for i in range(30):
        await spool.put(entry(i, size=200))
    assert len(list(tmp_path.glob("seg-*.log"))) > 3
    got = await take(spool, 30)
    assert [int(e.event_id or "", 16) for e in got] == list(range(30))
    assert len(list(tmp_path.glob("seg-*.log"))) == 1
    await spool.close()


async def test_a_segment_that_cannot_be_started_refuses_and_the_spool_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rotation fails (here a directory where the next segment's file would go; on a
    host, a full disk): that batch is refused (503 upstream of here), the spool keeps
    serving, and rotation is tried again with the next batch."""
    monkeypatch.setattr("relay.services.spool.SEGMENT_BYTES", 100)
    spool = DiskSpool(tmp_path, max_bytes=10**8, max_age=0)
    await spool.open()
    await spool.put(entry(0, size=200))  # fills the first segment past 100 bytes
    (current,) = tmp_path.glob("seg-*.log")
    number = int(current.stem.removeprefix("seg-"))
    blocker = tmp_path / f"seg-{number + 1:012d}.log"
    blocker.mkdir()
    async with asyncio.timeout(5):  # refused, not hanging
        with pytest.raises(OutboxFull):
            await spool.put(entry(1))
        with pytest.raises(OutboxFull):
            await spool.put(entry(2))
    blocker.rmdir()
    async with asyncio.timeout(5):
        await spool.put(entry(3))
    got = await take(spool, 2)
    assert [e.event_id for e in got] == [f"{0:032x}", f"{3:032x}"]
    await spool.close()


# A full disk, made real with a file size limit (RLIMIT_FSIZE: writes past it fail with
# EFBIG, as they would with ENOSPC), in a process of its own so that nothing else of the
# test run is limited.
_FULL_DISK = """
import asyncio, json, os, resource, signal, sys
from relay.policy.targets import resolve_target
from relay.services.outbox import OutboxEntry, OutboxFull
from relay.services.spool import DiskSpool

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
TARGET = resolve_target("https://sentry.example.com", None, 42, "abc123def4567890abc123def4567890")

def entry(n):
    return OutboxEntry(target=TARGET, body=b"x" * 3000, project_id=42,
                       quantities=[("error", 1)], event_id=f"{n:032x}")

async def read_all(spool, finish=True):
    got = []
    while (e := spool._read_next()) is not None:
        got.append(int(e.event_id, 16))
        if finish:
            spool.done(e)
    return got

async def main(path):
    spool = DiskSpool(path, max_bytes=10**9, max_age=0)
    await spool.open()
    for n in range(3):
        await spool.put(entry(n))
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    # Room for a record and a half: the next batch of three is cut in the middle.
    resource.setrlimit(resource.RLIMIT_FSIZE, (spool._writer.size + 5000, hard))
    during = await asyncio.gather(*(spool.put(entry(10 + n)) for n in range(3)),
                                  return_exceptions=True)
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    for n in range(3):
        await spool.put(entry(20 + n))
    sizes = [spool._writer.size, os.path.getsize(spool._writer.path)]
    first = await read_all(spool, finish=False)  # in flight at close: read again after
    corrupt = spool.corrupt_records
    await spool.close()
    again = DiskSpool(path, max_bytes=10**9, max_age=0)
    await again.open()
    replayed = await read_all(again)
    await again.close()
    print(json.dumps({"during": [type(r).__name__ for r in during], "sizes": sizes,
                      "first": first, "corrupt": corrupt, "replayed": replayed}))

asyncio.run(main(sys.argv[1]))
"""


def test_a_write_cut_short_by_a_full_disk_loses_no_acknowledged_record(tmp_path: Path) -> None:
    """The failed batch is refused (each put: OutboxFull, a 503), the segment is cut back
    to its last whole record, and every record acknowledged before and after is read, at
    once and after a restart, with nothing counted corrupt."""
    import json
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", _FULL_DISK, str(tmp_path / "spool")],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["during"] == ["OutboxFull"] * 3
    assert result["sizes"][0] == result["sizes"][1]  # no torn bytes after the last record
    assert result["first"] == [0, 1, 2, 20, 21, 22]
    assert result["corrupt"] == 0
    assert result["replayed"] == [0, 1, 2, 20, 21, 22]


async def test_close_answers_the_puts_still_waiting(tmp_path: Path) -> None:
    spool = DiskSpool(tmp_path, max_bytes=10**8, max_age=0)
    await spool.open()
    waiting = [asyncio.ensure_future(spool.put(entry(n))) for n in range(5)]
    await asyncio.sleep(0)  # queued, not yet written
    await spool.close()
    async with asyncio.timeout(5):
        assert await asyncio.gather(*waiting) == [None] * 5
    again = DiskSpool(tmp_path, max_bytes=10**8, max_age=0)
    await again.open()
    assert [int(e.event_id or "", 16) for e in await take(again, 5)] == list(range(5))
    await again.close()


async def test_compressed_bodies_keep_their_encoding_across_restart(tmp_path: Path) -> None:
    spool = DiskSpool(tmp_path, max_bytes=10**8, max_age=0)
    await spool.open()
    zipped = entry(0)
    zipped.body = gzip.compress(b"{}\n", mtime=0)
    zipped.encoding = "gzip"
    await spool.put(zipped)
    await spool.put(entry(1))
    await spool.close()

    again = DiskSpool(tmp_path, max_bytes=10**8, max_age=0)
    await again.open()
    first, second = await take(again, 2)
    assert (first.encoding, first.body) == ("gzip", zipped.body)
    assert second.encoding == ""
    await again.close()


async def test_the_sdks_user_agent_and_client_are_kept_across_restart(tmp_path: Path) -> None:
    spool = DiskSpool(tmp_path, max_bytes=10**8, max_age=0)
    await spool.open()
    sent = entry(0)
    sent.user_agent, sent.client = "Mozilla/5.0 Firefox/120.0", "sentry.javascript.browser/8.0.0"
    await spool.put(sent)
    await spool.close()
    again = DiskSpool(tmp_path, max_bytes=10**8, max_age=0)
    await again.open()
    (got,) = await take(again, 1)
    assert (got.user_agent, got.client) == (sent.user_agent, sent.client)
    await again.close()


def test_records_written_before_the_encoding_field_read_as_plain() -> None:
    """A spool written by an older relay (11 fields per record) still replays."""
    old = msgspec.msgpack.encode(
        [
            TARGET.url, None, TARGET.key, False, 42, [["error", 1]], "e" * 32,
            "envelope", "application/x-sentry-envelope", 1.0, b"{}\n",
        ]
    )  # fmt: skip
    got, created = _decode(old)
    assert (got.encoding, got.body, created) == ("", b"{}\n", 1.0)
    assert (got.user_agent, got.client) == ("", "")
