"""The spool on start after damage: corrupt records in the middle of a segment, and
segment files that could not be deleted.

The backlog counted on start is what the reader will find: a corrupt record is skipped,
logged and counted, and every intact record after it is still sent. A new segment never
takes the number of a file left behind (a segment or marks that could not be deleted).
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import struct
import threading
import zlib
from pathlib import Path

import pytest

from relay.services.outbox import OutboxEntry
from relay.services.spool import DiskSpool
from tests.services.test_spool import entry, take
from tests.services.test_spool_crash import crash, ids, reopen

HEADER = struct.Struct("<2sBBII")


def records(segment: Path) -> list[tuple[int, int]]:
    """(offset, payload length) of each record of a segment written intact."""
    data = segment.read_bytes()
    out = []
    off = 0
    while off < len(data):
        _magic, _version, _flags, length, _crc = HEADER.unpack_from(data, off)
        out.append((off, length))
        off += HEADER.size + length
    return out


def patch(segment: Path, at: int, new: bytes) -> None:
    data = bytearray(segment.read_bytes())
    data[at : at + len(new)] = new
    segment.write_bytes(bytes(data))


def segments(path: Path) -> list[str]:
    return sorted(p.name for p in path.glob("seg-*.log"))


def drain(spool: DiskSpool) -> list[int]:
    """Every record the spool hands out now, each finished at once."""
    got: list[OutboxEntry] = []
    while (e := spool._read_next()) is not None:
        got.append(e)
        spool.done(e)
    return ids(got)


async def written(path: Path, n: int, **kwargs: int) -> DiskSpool:
    """A spool with envelopes 0..n-1 on disk, closed, and reopened."""
    spool = await reopen(path)
    for i in range(n):
        await spool.put(entry(i, **kwargs))
    await spool.close()
    return spool


def fail_unlink_of(monkeypatch: pytest.MonkeyPatch, victim: Path) -> list[Path]:
    """Deleting `victim` fails as on a read-only directory (as root, chmod stops nothing);
    every other file is deleted as usual. Returns the attempts made on it."""
    attempts: list[Path] = []
    real = Path.unlink

    def unlink(self: Path, missing_ok: bool = False) -> None:
        if self == victim:
            attempts.append(self)
            raise PermissionError(13, "Permission denied", str(self))
        real(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", unlink)
    return attempts


# -- corrupt records in the middle of a segment ------------------------------------------------


async def test_a_record_failing_its_checksum_hides_none_of_the_records_after_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    await written(tmp_path, 6)
    (seg,) = tmp_path.glob("seg-*.log")
    offset, length = records(seg)[2]
    patch(seg, offset + HEADER.size + length // 2, b"\xff\x00\xff")  # a bad sector, say

    caplog.set_level(logging.WARNING, "relay.spool")
    spool = await reopen(tmp_path)
    assert len(spool) == 5  # what will be sent: the corrupt record is not counted
    assert drain(spool) == [0, 1, 3, 4, 5]
    assert spool.corrupt_records == 1
    assert (len(spool), spool.pending, spool.oldest_age()) == (0, 0, 0.0)
    assert any(
        "fails its checksum" in r.getMessage() and str(offset) in r.getMessage()
        for r in caplog.records
    )
    await spool.put(entry(9))  # and the spool goes on
    assert ids(await take(spool, 1)) == [9]
    await spool.close()
    assert list(tmp_path.iterdir()) == []  # the damaged segment was read to its end


async def test_with_marks_and_several_segments_the_count_matches_what_is_sent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash after some records were finished; a record corrupt in the middle of the
    first sealed segment: the count on start is the records sent, segment by segment."""
    monkeypatch.setattr("relay.services.spool.SEGMENT_BYTES", 1500)
    spool = await reopen(tmp_path)
    for i in range(12):
        await spool.put(entry(i))  # 4 a segment
    first = await spool.get()
    spool.done(first)  # 0 finished, its mark written
    await asyncio.sleep(0)
    await crash(spool)
    seg = tmp_path / segments(tmp_path)[0]
    assert len(segments(tmp_path)) == 3 and len(records(seg)) == 4
    offset, _ = records(seg)[2]  # envelope 2, in the middle of the first segment
    patch(seg, offset + HEADER.size + 3, b"\x00\x00")

    again = await reopen(tmp_path)
    assert len(again) == 10
    assert drain(again) == [1, 3, 4, 5, 6, 7, 8, 9, 10, 11]
    assert (len(again), again.pending, again.corrupt_records) == (0, 0, 1)
    await again.close()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("where", "sent"),
    [("payload", [0, 2, 3, 4]), ("magic", [0])],
)
async def test_damage_in_the_live_segment_leaves_the_count_exact(
    tmp_path: Path, where: str, sent: list[int]
) -> None:
    """Records written in this run are all counted as written: one found corrupt, or the
    rest of the segment after a bad header, is taken off the count as it is skipped."""
    spool = await reopen(tmp_path)
    for i in range(5):
        await spool.put(entry(i))
    (seg,) = tmp_path.glob("seg-*.log")
    offset, length = records(seg)[1]
    at = offset + HEADER.size + length // 2 if where == "payload" else offset
    with open(seg, "r+b") as fh:  # in place: the spool's own file
        fh.seek(at)
        fh.write(b"XX")
    assert drain(spool) == sent
    assert (len(spool), spool.pending, spool.corrupt_records) == (0, 0, 1)
    await spool.put(entry(9))  # appended after the damage, and read
    assert ids(await take(spool, 1)) == [9]
    assert (len(spool), spool.pending) == (0, 0)
    await spool.close()


async def test_a_record_that_does_not_decode_is_skipped_logged_and_uncounted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Its checksum holds (it was written so) but it is no record: it is counted on start
    (the scan does not decode), and taken off the count when the reader passes it."""
    await written(tmp_path, 4)
    (seg,) = tmp_path.glob("seg-*.log")
    data = seg.read_bytes()
    offset, _ = records(seg)[2]
    junk = b"\xc1not msgpack"
    bad = HEADER.pack(b"RS", 1, 0, len(junk), zlib.crc32(junk)) + junk
    seg.write_bytes(data[:offset] + bad + data[offset:])

    caplog.set_level(logging.WARNING, "relay.spool")
    spool = await reopen(tmp_path)
    assert drain(spool) == [0, 1, 2, 3]
    assert (len(spool), spool.pending, spool.corrupt_records) == (0, 0, 1)
    assert any("does not decode" in r.getMessage() for r in caplog.records)
    await spool.close()


async def test_an_unreadable_length_skips_the_rest_of_its_segment_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Where the record after a corrupt length starts is unknown: the rest of that segment
    is skipped and counted as one corrupt record; the next segments are read."""
    monkeypatch.setattr("relay.services.spool.SEGMENT_BYTES", 1000)
    await written(tmp_path, 8, size=200)
    names = segments(tmp_path)
    assert len(names) >= 2
    seg = tmp_path / names[0]
    in_first = len(records(seg))
    offset, _ = records(seg)[1]
    patch(seg, offset + 4, struct.pack("<I", 0x7FFFFFF0))  # the length, past the file

    caplog.set_level(logging.WARNING, "relay.spool")
    spool = await reopen(tmp_path)
    assert len(spool) == 1 + 8 - in_first
    assert drain(spool) == [0, *range(in_first, 8)]
    assert (len(spool), spool.pending, spool.corrupt_records) == (0, 0, 1)
    assert any("skipping the rest of the segment" in r.getMessage() for r in caplog.records)
    await spool.close()


async def test_a_done_mark_inside_a_record_reads_the_segment_again(tmp_path: Path) -> None:
    """A `.done` offset where no record starts (a damaged file) would skip the whole
    segment: it is ignored, and the segment read from its start (sent again, not lost)."""
    await written(tmp_path, 3)
    (seg,) = tmp_path.glob("seg-*.log")
    offset, _ = records(seg)[1]
    seg.with_suffix(".done").write_text(f"{offset + 5}\n")

    spool = await reopen(tmp_path)
    assert len(spool) == 3
    assert drain(spool) == [0, 1, 2]
    assert (len(spool), spool.corrupt_records) == (0, 0)
    await spool.close()


async def test_records_read_while_their_batch_is_written_are_counted_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader that runs while a batch's write thread has written but not returned does
    not see the batch yet: seen then, its records were passed before they were counted,
    and the backlog stayed that much too high for good."""
    spool = await reopen(tmp_path)
    write = spool._write_batch
    on_disk, go_on = threading.Event(), threading.Event()

    def slow_write(batch: list[tuple[bytes, asyncio.Future[None]]]) -> None:
        write(batch)
        on_disk.set()
        go_on.wait(5)

    monkeypatch.setattr(spool, "_write_batch", slow_write)
    put = asyncio.ensure_future(spool.put(entry(0)))
    assert await asyncio.to_thread(on_disk.wait, 5)
    early = spool._read_next()  # the bytes are in the file; the put has not returned
    go_on.set()
    await put
    got = [early] if early is not None else []
    for e in got:
        spool.done(e)
    got += await take(spool, 1 - len(got))
    assert ids(got) == [0]
    assert (len(spool), spool.pending) == (0, 0)
    await spool.close()


# -- segment numbers never reused ---------------------------------------------------------------


async def test_a_finished_segment_that_cannot_be_deleted_keeps_its_number(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every record of segment 1 finished, then a crash before its deletion; on start its
    deletion fails. The new segment is not numbered 1: appended to the old file, the new
    records would follow the old ones, and the reader would send the old ones again."""
    spool = await reopen(tmp_path)
    for i in range(3):
        await spool.put(entry(i))
    await take(spool, 3)
    await asyncio.sleep(0)  # their marks are written
    await crash(spool)
    (old,) = tmp_path.glob("seg-*.log")
    before = old.read_bytes()
    attempts = fail_unlink_of(monkeypatch, old)

    again = await reopen(tmp_path)
    assert attempts  # it was finished, and its deletion failed
    assert len(again) == 0
    await again.put(entry(10))
    assert ids(await take(again, 1)) == [10]
    assert old.read_bytes() == before  # neither appended to nor deleted
    assert old.with_suffix(".acks").exists()  # its marks are kept with it
    assert again._writer is not None and again._writer.number > 1
    await again.close()
    monkeypatch.undo()

    # Once it can be deleted, the next start finds it finished: nothing is sent again.
    third = await reopen(tmp_path)
    assert len(third) == 0
    assert drain(third) == []
    await third.close()
    assert list(tmp_path.iterdir()) == []


async def test_a_segment_and_marks_left_under_the_next_numbers_are_passed_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """During the run, files appear under the next segment numbers (here put there; on a
    host, files an earlier run could not delete): rotation numbers the new segment past
    them, and leaves them as they are."""
    other = await reopen(tmp_path / "other")
    await other.put(entry(777))
    await other.close()
    (foreign,) = (tmp_path / "other").glob("seg-*.log")  # a segment of envelope 777
    spool_dir = tmp_path / "spool"
    monkeypatch.setattr("relay.services.spool.SEGMENT_BYTES", 100)
    spool = await reopen(spool_dir)
    await spool.put(entry(0, size=200))  # past 100 bytes: the next batch rotates
    assert spool._writer is not None
    n = spool._writer.number
    left_log = spool_dir / f"seg-{n + 1:012d}.log"
    left_acks = spool_dir / f"seg-{n + 2:012d}.acks"
    shutil.copyfile(foreign, left_log)
    stale = struct.pack("<QI", 0, zlib.crc32(struct.pack("<Q", 0)))  # marks offset 0
    left_acks.write_bytes(stale)
    planted = left_log.read_bytes()

    await spool.put(entry(1))
    assert spool._writer.number == n + 3
    assert ids(await take(spool, 2)) == [0, 1]
    assert left_log.read_bytes() == planted
    assert left_acks.read_bytes() == stale
    await spool.put(entry(2))  # a record at offset 0 of a segment of its own
    await crash(spool)

    # The next start: the segment left behind is replayed like any other, the orphan
    # marks are deleted, and nothing written in this run is skipped by them.
    again = await reopen(spool_dir)
    assert drain(again) == [777, 2]
    await again.close()
    assert not left_acks.exists()


async def test_marks_that_cannot_be_deleted_on_start_are_kept_apart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A crash between a segment's deletion and its marks', and the marks cannot be
    deleted on start: the start goes on, and the new segment is numbered past them (they
    mark offset 0 finished: under their number, the new first record would be skipped)."""
    spool = await reopen(tmp_path)
    await spool.put(entry(0))
    await take(spool, 1)
    await asyncio.sleep(0)
    await crash(spool)
    (marks,) = tmp_path.glob("seg-*.acks")
    marks.with_suffix(".log").unlink()
    fail_unlink_of(monkeypatch, marks)

    caplog.set_level(logging.WARNING, "relay.spool")
    again = await reopen(tmp_path)  # not fatal
    assert any("cannot delete" in r.getMessage() for r in caplog.records)
    await again.put(entry(5))
    await again.put(entry(6))
    await crash(again)
    assert marks.exists()
    monkeypatch.undo()

    third = await reopen(tmp_path)
    assert drain(third) == [5, 6]
    await third.close()
    assert list(tmp_path.iterdir()) == []
