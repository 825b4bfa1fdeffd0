"""A durable outbox: append-only segment files holding only scrubbed envelopes.

Layout: `<path>/seg-000000000001.log`, ... Each record is

    b"RS" | version (1) | flags (1) | length (u32 LE) | crc32 (u32 LE) | payload

where the payload is a msgpack `SpoolRecord` (routing, quantities, the body).

- Writes are group-committed: concurrent `put`s are appended as one batch with
  one `fsync` (`durable: true`), and each `put` returns only once its record is
  on disk, so a 200 means "on disk".
- The reader walks segments in order and reads records lazily (memory stays
  bounded whatever the backlog). A segment is deleted once it is sealed, read
  to its end, and every record read from it has been finished (delivered,
  dropped with an outcome, or expired).
- Each record finished (delivered, dropped with an outcome, or expired) is marked as
  it happens: its offset is appended to `seg-<n>.acks` (12 bytes: the offset, u64 LE,
  and its crc32, u32 LE) in one write per turn of the event loop, and those files are
  fsynced (`durable: true`) at most `MARK_SYNC_S` after, in a task of their own: one
  fsync a second under load, never one per record, and none on the put path. A process
  killed (SIGKILL, OOM) has written its marks already: a restart sends again only the
  records in flight. After a power loss, also those finished in the last second.
- On a clean close, how far each segment is finished is kept too: a segment finished to
  its end is deleted (the live one too), and for the others a `seg-<n>.done` file holds
  the offset of the first record not finished, from which the next start reads it.
- On start, existing segments are replayed first, in order, each from its `.done`
  offset, skipping the records its `.acks` marks; what was in flight when the process
  stopped is sent again (at-least-once; upstreams de-duplicate by event_id). A mark is
  written only for a record that was finished, and a torn or corrupt mark (power loss)
  fails its crc and is ignored, so a record not delivered is never skipped. A `.done`
  offset where no record starts is ignored (the segment is read from its start).
- Corrupt records are skipped, logged and counted (`corrupt_records`), never fatal; the
  backlog counted on start holds only the records the reader will find intact (one that
  passes its crc but does not decode is taken off the count as the reader passes it):
  - a record whose header is whole (magic, version, and a length that fits in the
    file) but whose payload fails its crc, or does not decode, is skipped alone: the
    records after it are read;
  - at a header that is not whole (a torn tail after a power loss, or a corrupt magic,
    version or length), where the next record starts is unknown: the rest of the segment
    is skipped, counted as one corrupt record. A length corrupted to a value that still
    fits makes its record fail its crc, and the next header read is almost never one:
    the rest of the segment is skipped likewise. The records after it are not searched
    for (a body may hold bytes that look like a record).
- Segment numbers only grow: a new segment is numbered past every `seg-<n>.*` file found
  on start and every segment of this run, and past any file of that number it finds (a
  segment or marks that could not be deleted), so that it never appends to another
  segment's records nor takes its marks. A finished segment that cannot be deleted keeps
  its marks, and the next start, finding it finished, deletes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import struct
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import msgspec

from relay.policy.targets import Target
from relay.protocol.dsn import Dsn
from relay.services.outbox import OutboxEntry, OutboxFull

log = logging.getLogger("relay.spool")

_HEADER = struct.Struct("<2sBBII")
_MAGIC = b"RS"
_VERSION = 1
#: A new segment is started past this size.
SEGMENT_BYTES = 8 * 1024 * 1024
#: A record larger than this is corrupt by definition.
MAX_RECORD = 256 * 1024 * 1024
#: One "finished" mark in `seg-<n>.acks`: the record's offset and the crc32 of those 8 bytes.
_MARK = struct.Struct("<QI")
_OFFSET = struct.Struct("<Q")
#: Marks written are fsynced (`durable: true`) at most this many seconds later: what a
#: power loss can make the next start send again.
MARK_SYNC_S = 1.0


class SpoolRecord(msgspec.Struct, array_like=True):
    url: str
    dsn: str | None
    key: str
    is_file: bool
    project_id: int
    quantities: list[tuple[str, int]]
    event_id: str | None
    endpoint: str
    content_type: str
    created: float
    body: bytes
    #: Added later: records written before them read as "" (not compressed, no key).
    encoding: str = ""
    app_key: str = ""
    user_agent: str = ""
    client: str = ""


def _encode(entry: OutboxEntry, created: float) -> bytes:
    t = entry.target
    record = SpoolRecord(
        t.url,
        str(t.dsn) if t.dsn else None,
        t.key,
        t.is_file,
        entry.project_id,
        entry.quantities,
        entry.event_id,
        entry.endpoint,
        entry.content_type,
        created,
        entry.body,
        entry.encoding,
        entry.app_key,
        entry.user_agent,
        entry.client,
    )
    payload = msgspec.msgpack.encode(record)
    return _HEADER.pack(_MAGIC, _VERSION, 0, len(payload), zlib.crc32(payload)) + payload


_decoder = msgspec.msgpack.Decoder(SpoolRecord)


def _decode(payload: bytes) -> tuple[OutboxEntry, float]:
    r = _decoder.decode(payload)
    target = Target(
        url=r.url, dsn=Dsn.parse(r.dsn) if r.dsn else None, key=r.key, is_file=r.is_file
    )
    entry = OutboxEntry(
        target=target,
        body=r.body,
        project_id=r.project_id,
        quantities=[tuple(q) for q in r.quantities],  # type: ignore[misc]
        event_id=r.event_id,
        endpoint=r.endpoint,
        content_type=r.content_type,
        encoding=r.encoding,
        app_key=r.app_key,
        user_agent=r.user_agent,
        client=r.client,
        received_at=r.created,
    )
    return entry, r.created


@dataclass
class _Segment:
    number: int
    path: Path
    size: int = 0
    sealed: bool = False
    #: Records handed out and not yet finished.
    open_records: int = 0
    #: The reader has passed the end of this sealed segment.
    read_done: bool = False
    #: Where reading starts: the offset a clean close recorded in `seg-<n>.done`.
    start: int = 0
    #: Offsets of the records finished before the last start (from `seg-<n>.acks`).
    acked: frozenset[int] = frozenset()
    #: `seg-<n>.acks` open for appending (-1: not yet), and its length as written.
    marks_fd: int = -1
    marks_size: int = 0
    #: Found on start: only its records that pass their crc, from `start`, not marked
    #: finished, were counted in the backlog (`unread`); else every record written was.
    replayed: bool = False
    #: Records counted in the backlog that the reader has not passed yet.
    unread: int = 0

    @property
    def done_path(self) -> Path:
        return self.path.with_suffix(".done")

    @property
    def acks_path(self) -> Path:
        return self.path.with_suffix(".acks")


class DiskSpool:
    """The outbox interface (`put`/`get`/`done`) backed by segment files.

    Parameters:
        path: the spool directory (created if missing; one per worker process).
        max_bytes: total size of the segment files; beyond it `put` raises OutboxFull.
        max_age: seconds after which an unsent record is discarded (0: never).
        durable: fsync each group of writes before `put` returns.
        on_expired: called with each record discarded for age (to give it an outcome).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_bytes: int,
        max_age: float,
        durable: bool = True,
        on_expired: Callable[[OutboxEntry], None] | None = None,
    ) -> None:
        self.path = Path(path)
        self.on_expired = on_expired
        self.batches_written = 0
        self.max_bytes = max_bytes
        self.max_age = max_age
        self.durable = durable
        self.corrupt_records = 0
        self.expired_records = 0
        self._segments: dict[int, _Segment] = {}
        self._order: list[int] = []
        self._writer: _Segment | None = None
        self._wfile: object = None
        self._pending: list[tuple[bytes, asyncio.Future[None]]] = []
        self._pending_bytes = 0
        self._flush_wake = asyncio.Event()
        self._readable = asyncio.Condition()
        self._flusher: asyncio.Task[None] | None = None
        self._closed = False
        #: The number of the next segment: past every `seg-<n>.*` file seen (`open`).
        self._next_number = 1
        #: The live segment could not be cut back after a failed write: start a new one.
        self._rotate = False
        # Reader cursor.
        self._rseg: int | None = None
        self._roff = 0
        self._rfile: object = None
        #: id(entry) -> (the entry, its segment number, its offset) of each record handed
        #: out and not finished. The entry is held so that its id stays its own.
        self._entry_seg: dict[int, tuple[OutboxEntry, int, int]] = {}
        self._queued = 0
        self._in_flight = 0
        self._oldest_created: float | None = None
        #: Segment number -> marks of records finished, not yet written to its `.acks`.
        self._marks: dict[int, list[bytes]] = {}
        self._marks_scheduled = False
        #: Segments whose `.acks` has writes not yet fsynced.
        self._unsynced: set[int] = set()
        self._unsynced_wake = asyncio.Event()
        self._syncer: asyncio.Task[None] | None = None
        self._last_sync = 0.0
        self._new_marks_files = False
        self._marks_failing = False
        #: Set on close, once the last marks are written.
        self._marks_closed = False

    # -- lifecycle ---------------------------------------------------------------------------

    async def open(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        # New segments are numbered past every file a segment left, deleted or not.
        self._next_number = 1 + max(
            (n for n in map(_file_number, self.path.glob("seg-*")) if n is not None), default=0
        )
        for file in sorted(self.path.glob("seg-*.log")):
            try:
                number = int(file.stem.split("-", 1)[1])
            except ValueError:
                continue
            seg = _Segment(number, file, file.stat().st_size, sealed=True, replayed=True)
            seg.start = _read_done_mark(seg)
            self._segments[number] = seg
            self._order.append(number)
        for mark in [*self.path.glob("seg-*.done"), *self.path.glob("seg-*.acks")]:
            if not mark.with_suffix(".log").exists():
                try:
                    mark.unlink(missing_ok=True)  # its segment was deleted before the mark
                except OSError as exc:  # kept: its number is not used again
                    log.warning("spool: cannot delete %s (%s)", mark.name, exc)
        for number in self._order:
            seg = self._segments[number]
            seg.acked, seg.marks_size = await asyncio.to_thread(_read_acks, seg)
        unsent = await asyncio.to_thread(self._count_existing)
        for number, count in unsent.items():
            self._segments[number].unread = count or 0
            if count == 0:  # every record finished (a crash came before its deletion)
                seg = self._segments[number]
                seg.read_done = True
                self._maybe_delete(seg)
        self._queued = sum(count or 0 for count in unsent.values())
        if self._order:
            log.info(
                "spool: replaying %d segment(s) from %s: %d envelope(s) not yet delivered",
                len(self._order),
                self.path,
                self._queued,
            )
            self._rseg = self._order[0]
            self._roff = self._segments[self._rseg].start
        self._new_segment()
        if self._rseg is None:
            self._rseg = self._writer.number  # type: ignore[union-attr]
        self._flusher = asyncio.create_task(self._flush_loop(), name="relay-spool-flush")
        if self.durable:
            self._syncer = asyncio.create_task(self._sync_loop(), name="relay-spool-marks")

    def _count_existing(self) -> dict[int, int | None]:
        """Records to send, by segment: those the reader will find, from the segment's
        `start`, that pass their crc and are not marked finished (one that passes its crc
        and does not decode is taken off the count when the reader passes it). None for a
        segment with a torn or corrupt record and none to send (it is read, to count the
        corrupt record)."""
        counts: dict[int, int | None] = {}
        for number in self._order:
            seg = self._segments[number]
            offsets, clean, aligned = _scan(seg.path, seg.start)
            if not aligned and seg.start > 0:
                log.warning(
                    "spool: %s does not point at a record of %s; reading all of it again",
                    seg.done_path.name,
                    seg.path.name,
                )
                seg.start = 0
                offsets, clean, _ = _scan(seg.path, 0)
            count = sum(1 for o in offsets if o not in seg.acked)
            counts[number] = count if count or clean else None
        return counts

    async def close(self) -> None:
        """Flush pending writes and close the files (records stay on disk for the next start).

        The flush task writes what is pending (each waiting `put` gets its answer) and
        stops; no write runs beside it."""
        self._closed = True
        flusher = self._flusher
        if flusher is not None and not flusher.done():
            self._flush_wake.set()
            await flusher
        for fh in (self._wfile, self._rfile):
            if fh is not None:
                fh.close()  # type: ignore[attr-defined]
        self._wfile = self._rfile = None
        syncer = self._syncer
        if syncer is not None:
            syncer.cancel()
            await asyncio.gather(syncer, return_exceptions=True)
        self._write_marks()
        if self.durable:
            await self._sync_marks()
        self._marks_closed = True
        for seg in self._segments.values():
            _close_marks(seg)
        self._mark_finished()

    def _mark_finished(self) -> None:
        """On close: delete the segments finished to their end, and record for the others
        the offset of their first record not finished (see the module's docstring)."""
        first_open: dict[int, int] = {}
        for _, number, offset in self._entry_seg.values():
            first_open[number] = min(offset, first_open.get(number, offset))
        for number in list(self._order):
            seg = self._segments[number]
            if seg.read_done:
                finished = seg.size
            elif number == self._rseg:
                finished = self._roff
            else:
                finished = seg.start  # not reached yet
            finished = min(finished, first_open.get(number, finished))
            try:
                if finished >= seg.size:
                    seg.path.unlink(missing_ok=True)
                    seg.done_path.unlink(missing_ok=True)
                    seg.acks_path.unlink(missing_ok=True)
                    self._segments.pop(number, None)
                    self._order.remove(number)
                elif finished > seg.start:
                    _write_done_mark(seg, finished, durable=self.durable)
            except OSError as exc:
                log.warning(
                    "spool: cannot record how far %s was sent (%s); the next start sends "
                    "again those of its records that its delivery marks do not cover",
                    seg.path.name,
                    exc,
                )
        if self.durable:
            with contextlib.suppress(OSError):  # the marks are an optimization
                _fsync_dir(self.path)

    # -- accounting --------------------------------------------------------------------------

    def __len__(self) -> int:
        return self._queued

    @property
    def queued_bytes(self) -> int:
        return self.size_on_disk()

    def size_on_disk(self) -> int:
        return sum(s.size for s in self._segments.values()) + self._pending_bytes

    @property
    def pending(self) -> int:
        return self._queued + self._in_flight

    def oldest_age(self, now: float | None = None) -> float:
        if not self._queued or self._oldest_created is None:
            return 0.0
        return max(0.0, (time.time() if now is None else now) - self._oldest_created)

    def over_high_water(self) -> bool:
        """The spool absorbs backlogs on disk; producers never wait for the forwarder."""
        return False

    async def wait_for_room(self, timeout: float) -> None:
        """The spool absorbs backlogs on disk; producers never wait for the forwarder."""

    def has_room(self, size: int) -> bool:
        return self.size_on_disk() + size <= self.max_bytes

    # -- writing -----------------------------------------------------------------------------

    def _new_segment(self) -> None:
        """Start the next segment. Raises OSError with nothing changed (the current
        segment stays the one written), so that the next batch tries again.

        Its number is one no file has: a segment, or marks, left under the next number
        (a deletion that failed, or did not reach the disk) are another segment's. Records
        appended to them would mix with theirs, and their marks would skip the new
        records at the same offsets: such a number is passed over, and its files kept."""
        number = self._next_number
        while _number_taken(self.path, number):
            log.warning(
                "spool: files of segment %d are left in %s; numbering the next segment past it",
                number,
                self.path,
            )
            number += 1
        seg = _Segment(number, self.path / f"seg-{number:012d}.log")
        # Created here or not at all (O_EXCL): never another segment's file. Unbuffered: a
        # write that fails leaves nothing behind in a buffer to be written later, and
        # `_write_batch` can cut the file back to its last whole record.
        fd = os.open(
            seg.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666
        )
        wfile = open(fd, "ab", buffering=0)  # noqa: SIM115
        if self.durable:
            try:
                _fsync_dir(self.path)
            except OSError:
                wfile.close()
                # Empty: the next attempt uses its number again, or the next one if it stays.
                with contextlib.suppress(OSError):
                    seg.path.unlink()
                raise
        self._next_number = number + 1
        if self._writer is not None:
            self._writer.sealed = True
            if self._wfile is not None:
                self._wfile.close()  # type: ignore[attr-defined]
        self._wfile = wfile
        self._segments[number] = seg
        self._order.append(number)
        self._writer = seg

    async def put(self, entry: OutboxEntry) -> None:
        if self._closed:
            raise OutboxFull
        record = _encode(entry, entry.received_at)
        if not self.has_room(len(record)):
            raise OutboxFull
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((record, future))
        self._pending_bytes += len(record)
        self._flush_wake.set()
        await future

    def _take_batch(self) -> list[tuple[bytes, asyncio.Future[None]]]:
        batch, self._pending = self._pending, []
        self._pending_bytes = 0
        return batch

    async def _flush_loop(self) -> None:
        """Write what is pending, batch by batch; after `close`, the rest, then stop."""
        while True:
            await self._flush_wake.wait()
            self._flush_wake.clear()
            if self._pending:
                await self._flush_batch(self._take_batch())
            if self._closed and not self._pending:
                return

    async def _flush_batch(self, batch: list[tuple[bytes, asyncio.Future[None]]]) -> None:
        self.batches_written += 1
        try:
            writer = self._writer
            if writer is not None and (writer.size >= SEGMENT_BYTES or self._rotate):
                self._new_segment()
                self._rotate = False
            writer = self._writer
            assert writer is not None
            await asyncio.to_thread(self._write_batch, batch)
        except OSError as exc:
            log.error("spool write failed: %s", exc)
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(OutboxFull())
            return
        # The records become readable here, on the event loop, together with their count:
        # a reader that saw them while the thread was still writing would pass them before
        # they were counted, and the count would stay one too high for each.
        writer.size += sum(len(rec) for rec, _ in batch)
        writer.unread += len(batch)
        for _, fut in batch:
            if not fut.done():
                fut.set_result(None)
        self._queued += len(batch)
        async with self._readable:
            self._readable.notify(len(batch))  # one reader per new record

    def _write_batch(self, batch: list[tuple[bytes, asyncio.Future[None]]]) -> None:
        """Append the batch's records, or none of them: a write or fsync that fails (a
        full disk, an I/O error) cuts the segment back to its last whole record, so that
        the records after it are still read; if even that fails, the segment is sealed
        where its whole records end, and the next batch starts a new one. The segment's
        size is left to the caller (on the event loop)."""
        writer = self._writer
        assert writer is not None
        data = memoryview(b"".join(rec for rec, _ in batch))
        fd = self._wfile.fileno()  # type: ignore[attr-defined]
        try:
            written = 0
            while written < len(data):
                written += os.write(fd, data[written:])
            if self.durable:
                os.fsync(fd)
        except OSError:
            try:
                os.ftruncate(fd, writer.size)
            except OSError:
                log.error("spool: cannot cut %s back after a failed write; sealing it", writer.path)
                self._rotate = True
            raise

    # -- reading -----------------------------------------------------------------------------

    async def get(self) -> OutboxEntry:
        while True:
            entry = self._read_next()
            if entry is not None:
                return entry
            async with self._readable:
                await self._readable.wait()

    def _read_next(self) -> OutboxEntry | None:
        while self._rseg is not None:
            seg = self._segments.get(self._rseg)
            if seg is None:
                self._advance_segment()
                continue
            if self._roff + _HEADER.size <= seg.size:
                got = self._read_record(seg)
                if got is None:
                    continue  # the rest is corrupt: skipped to the next segment
                offset, entry, created = got
                if offset in seg.acked:
                    continue  # finished before the last start (not counted in `_queued`)
                self._uncount(seg)
                if self.max_age and time.time() - created > self.max_age:
                    self.expired_records += 1
                    self._mark(seg.number, offset)
                    if self.on_expired is not None:
                        self.on_expired(entry)
                    continue
                self._oldest_created = created
                seg.open_records += 1
                self._entry_seg[id(entry)] = (entry, seg.number, offset)
                self._in_flight += 1
                return entry
            if not seg.sealed:
                self._oldest_created = None
                return None
            seg.read_done = True
            self._maybe_delete(seg)
            self._advance_segment()
        return None

    def _advance_segment(self) -> None:
        if self._rfile is not None:
            self._rfile.close()  # type: ignore[attr-defined]
            self._rfile = None
        later = [n for n in self._order if self._rseg is not None and n > self._rseg]
        self._rseg = later[0] if later else None
        self._roff = self._segments[self._rseg].start if self._rseg is not None else 0

    def _uncount(self, seg: _Segment, records: int = 1) -> None:
        """The reader passed `records` of `seg` counted in the backlog."""
        seg.unread = max(0, seg.unread - records)
        self._queued = max(0, self._queued - records)

    def _read_record(self, seg: _Segment) -> tuple[int, OutboxEntry, float] | None:
        """The next record of `seg` at the cursor, with its offset (what its mark names);
        None at the end, or at a header that is not whole (see the module's docstring: the
        rest of the segment is skipped). A record whose payload fails its crc or does not
        decode is skipped alone, and the next one read."""
        if self._rfile is None:
            self._rfile = open(seg.path, "rb")  # noqa: SIM115
        fh = self._rfile
        while self._roff + _HEADER.size <= seg.size:
            offset = self._roff
            fh.seek(offset)  # type: ignore[attr-defined]
            head = fh.read(_HEADER.size)  # type: ignore[attr-defined]
            length = _record_length(head, offset, seg.size)
            payload = fh.read(length) if length is not None else b""  # type: ignore[attr-defined]
            if length is None or len(payload) != length:
                # Where the next record starts is unknown: the rest of the segment is
                # skipped, counted as one corrupt record (its records counted in the
                # backlog, none if it was replayed: the count on start stopped here too).
                self.corrupt_records += 1
                log.warning(
                    "spool: torn or corrupt record header in %s at offset %d; skipping the "
                    "rest of the segment (%d bytes)",
                    seg.path.name,
                    offset,
                    seg.size - offset,
                )
                self._uncount(seg, seg.unread)
                if seg.sealed:
                    seg.read_done = True
                    self._maybe_delete(seg)
                    self._advance_segment()
                else:
                    # Only whole records become visible in the live segment: disk corruption.
                    self._roff = seg.size
                return None
            self._roff = offset + _HEADER.size + length
            crc = _HEADER.unpack(head)[4]
            if zlib.crc32(payload) != crc:
                # Counted in the backlog only if written since the start (the count on
                # start leaves out the records that fail their crc).
                self._skip_corrupt(seg, offset, "fails its checksum", counted=not seg.replayed)
                continue
            try:
                entry, created = _decode(payload)
            except (msgspec.DecodeError, ValueError, TypeError):
                self._skip_corrupt(seg, offset, "does not decode", counted=offset not in seg.acked)
                continue
            return offset, entry, created
        return None

    def _skip_corrupt(self, seg: _Segment, offset: int, why: str, *, counted: bool) -> None:
        """Skip the record at `offset` of `seg` (its header is whole: the next one is read)."""
        self.corrupt_records += 1
        log.warning("spool: the record in %s at offset %d %s; skipped", seg.path.name, offset, why)
        if counted:
            self._uncount(seg)

    def done(self, entry: OutboxEntry) -> None:
        found = self._entry_seg.pop(id(entry), None)
        self._in_flight = max(0, self._in_flight - 1)
        if found is None:
            return
        _, number, offset = found
        seg = self._segments.get(number)
        if seg is None:
            return
        self._mark(number, offset)
        seg.open_records -= 1
        self._maybe_delete(seg)

    def _maybe_delete(self, seg: _Segment) -> None:
        if seg.sealed and seg.read_done and seg.open_records <= 0:
            try:
                seg.path.unlink(missing_ok=True)
                deleted = True
            except OSError as exc:  # a read-only remount, a permission changed
                deleted = False
                # Its marks are written and kept with it: the next start finds it
                # finished (and tries again to delete it). Its number is not used again.
                self._write_marks()
                log.warning(
                    "spool: cannot delete the finished segment %s (%s); it is kept and "
                    "deleted at the next start",
                    seg.path.name,
                    exc,
                )
            # Marks left behind are deleted at the next start; their number is not used
            # again.
            _close_marks(seg)
            self._marks.pop(seg.number, None)
            self._unsynced.discard(seg.number)
            if deleted:
                with contextlib.suppress(OSError):
                    seg.done_path.unlink(missing_ok=True)
                    seg.acks_path.unlink(missing_ok=True)
            self._segments.pop(seg.number, None)
            self._order.remove(seg.number)

    # -- marks of finished records -------------------------------------------------------------

    def _mark(self, number: int, offset: int) -> None:
        """Record that the record at `offset` of segment `number` is finished; the marks of
        one turn of the event loop are written together (`_write_marks`)."""
        if self._marks_closed:
            return
        self._marks.setdefault(number, []).append(_encode_mark(offset))
        if not self._marks_scheduled:
            self._marks_scheduled = True
            asyncio.get_running_loop().call_soon(self._write_marks)

    def _write_marks(self) -> None:
        """Append the pending marks to their segments' `.acks` files: one write each, into
        the page cache, so that they outlive the process at once; `_sync_loop` fsyncs
        them. A mark that cannot be written only means its record is sent again after an
        unclean stop."""
        self._marks_scheduled = False
        marks, self._marks = self._marks, {}
        if self._marks_closed:
            return
        for number, items in marks.items():
            seg = self._segments.get(number)
            if seg is None:
                continue  # deleted since: finished to its end
            data = b"".join(items)
            try:
                if seg.marks_fd < 0:
                    seg.marks_fd = os.open(
                        seg.acks_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o666
                    )
                    self._new_marks_files = True
                written = 0
                while written < len(data):
                    written += os.write(seg.marks_fd, data[written:])
            except OSError as exc:
                if seg.marks_fd >= 0:
                    with contextlib.suppress(OSError):  # no torn mark before the next ones
                        os.ftruncate(seg.marks_fd, seg.marks_size)
                if not self._marks_failing:
                    log.warning(
                        "spool: cannot write the delivered marks of %s (%s); after a crash "
                        "its delivered envelopes would be sent again",
                        seg.path.name,
                        exc,
                    )
                self._marks_failing = True
                continue
            self._marks_failing = False
            seg.marks_size += len(data)
            if self.durable:
                self._unsynced.add(number)
        if self._unsynced:
            self._unsynced_wake.set()

    async def _sync_loop(self) -> None:
        """fsync the marks written, at most `MARK_SYNC_S` after they were (one fsync per
        file a second under load, off the event loop)."""
        while True:
            await self._unsynced_wake.wait()
            await asyncio.sleep(max(0.0, self._last_sync + MARK_SYNC_S - time.monotonic()))
            self._unsynced_wake.clear()
            await self._sync_marks()

    async def _sync_marks(self) -> None:
        numbers, self._unsynced = self._unsynced, set()
        new_files, self._new_marks_files = self._new_marks_files, False
        self._last_sync = time.monotonic()
        fds: list[int] = []
        try:
            # Duplicates: a segment deleted meanwhile closes its own descriptor, not these.
            for number in numbers:
                seg = self._segments.get(number)
                if seg is not None and seg.marks_fd >= 0:
                    fds.append(os.dup(seg.marks_fd))
        except OSError as exc:
            log.warning("spool: cannot sync the delivered marks (%s)", exc)
        if fds or new_files:
            try:
                await asyncio.to_thread(_sync_files, fds, self.path if new_files else None)
            except OSError as exc:
                log.warning("spool: cannot sync the delivered marks (%s)", exc)

    def drain_nowait(self) -> list[OutboxEntry]:
        """Nothing to hand back: unsent records stay on disk for the next start."""
        return []


def _record_length(head: bytes, offset: int, size: int) -> int | None:
    """The payload length a record header at `offset` gives, in a segment of `size` bytes;
    None when it is not a whole header (torn, or its magic, version or length is wrong):
    then where the next record starts is unknown."""
    if len(head) < _HEADER.size:
        return None
    length: int
    magic, version, _flags, length, _crc = _HEADER.unpack_from(head)
    if (
        magic != _MAGIC
        or version != _VERSION
        or length > MAX_RECORD
        or offset + _HEADER.size + length > size
    ):
        return None
    return length


def _scan(path: Path, start: int) -> tuple[list[int], bool, bool]:
    """Walk a segment's records from `start` as the reader does (used to count the backlog
    on start): the offsets of those that pass their crc; whether the file holds nothing
    else from there (no torn or corrupt record); and whether `start` can be where a
    record starts."""
    with open(path, "rb") as fh:
        fh.seek(start)
        data = fh.read()
    size = start + len(data)
    offsets = []
    off = start
    clean = True
    while off + _HEADER.size <= size:
        at = off - start
        length = _record_length(data[at : at + _HEADER.size], off, size)
        if length is None:
            break
        payload = data[at + _HEADER.size : at + _HEADER.size + length]
        if zlib.crc32(payload) == _HEADER.unpack_from(data, at)[4]:
            offsets.append(off)
        else:
            clean = False  # skipped alone: the walk goes on after it
        off += _HEADER.size + length
    # A header that is not whole where a whole one fits: `start` is no record's.
    aligned = off > start or start + _HEADER.size > size
    return offsets, clean and off == size, aligned


def _file_number(path: Path) -> int | None:
    """The segment number in a `seg-<n>.<suffix>` name (read as `open` reads a segment's);
    None for another name."""
    try:
        return int(path.name.removeprefix("seg-").split(".", 1)[0])
    except ValueError:
        return None


def _number_taken(directory: Path, number: int) -> bool:
    """Whether a file of segment `number` is in `directory` (a segment, or its marks).
    Something else under the segment's name (a directory) is not one: creating the
    segment fails, and the batch is refused as for any other such failure."""
    base = directory / f"seg-{number:012d}"
    if base.with_suffix(".log").is_file():
        return True
    return any(os.path.lexists(f"{base}{suffix}") for suffix in (".acks", ".done", ".done.tmp"))


def _read_done_mark(seg: _Segment) -> int:
    """The offset recorded in a segment's `.done` file; 0 when there is none or it is not
    a record boundary the file can hold (then the whole segment is read again)."""
    try:
        text = seg.done_path.read_text()
    except OSError:
        return 0
    try:
        offset = int(text.strip())
    except ValueError:
        return 0
    return offset if 0 < offset <= seg.size else 0


def _write_done_mark(seg: _Segment, offset: int, *, durable: bool) -> None:
    """Replace a segment's `.done` file with `offset` (written aside, then renamed)."""
    tmp = seg.done_path.with_suffix(".done.tmp")
    with open(tmp, "w") as fh:
        fh.write(f"{offset}\n")
        if durable:
            fh.flush()
            os.fsync(fh.fileno())
    os.replace(tmp, seg.done_path)


def _encode_mark(offset: int) -> bytes:
    packed = _OFFSET.pack(offset)
    return _MARK.pack(offset, zlib.crc32(packed))


def _read_acks(seg: _Segment) -> tuple[frozenset[int], int]:
    """The offsets a segment's `.acks` marks finished, and the length of its valid part.

    Reading stops at the first mark that is torn or fails its crc (a power loss can leave
    a tail unwritten or zeroed); the file is cut back there, so that the marks appended
    next are read again. What is after such a mark is only sent again."""
    try:
        data = seg.acks_path.read_bytes()
    except OSError:
        return frozenset(), 0
    offsets = set()
    valid = 0
    for at in range(0, len(data) - _MARK.size + 1, _MARK.size):
        offset, crc = _MARK.unpack_from(data, at)
        if zlib.crc32(data[at : at + _OFFSET.size]) != crc:
            break
        offsets.add(offset)
        valid = at + _MARK.size
    if valid < len(data):
        try:
            os.truncate(seg.acks_path, valid)
        except OSError:
            # Marks appended after the bad one would not be read: none are kept.
            with contextlib.suppress(OSError):
                seg.acks_path.unlink()
            return frozenset(), 0
    return frozenset(offsets), valid


def _close_marks(seg: _Segment) -> None:
    if seg.marks_fd >= 0:
        with contextlib.suppress(OSError):
            os.close(seg.marks_fd)
        seg.marks_fd = -1


def _sync_files(fds: list[int], directory: Path | None) -> None:
    """fsync and close `fds` (and fsync `directory`, where new files appeared)."""
    try:
        for fd in fds:
            os.fsync(fd)
        if directory is not None:
            _fsync_dir(directory)
    finally:
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
