"""Minidumps through the `pii_config` rules, as Sentry's Relay scrubs them
(relay-pii `minidumps.rs`): only the parts of the dump that hold personal data are
read, each under a path of its own below the file, and rewritten in place at the same
length, so that the dump still reads and symbolicates.

    part                    path below `$attachments.'<file>'` (the file: `$minidump`)
    memory of a thread's    `stack_memory`, types `$binary` `$stack_memory`, PII "maybe":
      stack (MemoryList)    only specific selectors reach it (`$stack_memory`,
                            `$minidump.stack_memory`, `$minidump.*`), never `**`,
                            `$binary` or `$attachments.**`
    other memory regions    `heap_memory`, types `$binary` `$heap_memory`
    Linux environ, cmdline  an empty key, type `$binary`
    module path (UTF-16     `code_file`, type `$string`: the directory only, the file
      MINIDUMP_STRING)      name after the last `/` or `\\` is kept; searched as UTF-16
    debug file (CodeView    `debug_file`, type `$string`: the directory only, searched
      PDB 7.0 / 2.0 record) byte-wise (the record holds UTF-8)

Memory and the Linux streams are searched as any binary attachment (`binary`, both
steps); a module's path is read once however many modules share it. Memory64List
(full-memory dumps) is not read, as in Relay.

A dump without a thread list, memory list or module list, or whose header, directory or
streams do not parse, is not a minidump to Relay (nor, here, one whose parts overlap,
which real dumps never do: searched part by part, a crafted list of overlapping ranges
would cost a search of the whole file per entry): `scrub_minidump` then stops and says
why (`MinidumpScrub.error`), keeping what it already rewrote, and the caller scrubs the
bytes as a plain binary attachment (Relay's fallback, which may overwrite stack memory).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

from relay.processing.scrub.binary import ALL, UTF8, UTF16LE, scrub_binary
from relay.processing.scrub.rules import Application, Rule
from relay.processing.scrub.selectors import PII_MAYBE, PII_TRUE, State, matches

#: The attachment type of a minidump (what Sentry scrubs by its parts).
MINIDUMP_TYPE = "event.minidump"

_SIGNATURES = {b"MDMP": "<", b"PMDM": ">"}
_VERSION = 0xA793
_HEADER_SIZE = 32
_DIRECTORY_ENTRY = 12

THREAD_LIST, MODULE_LIST, MEMORY_LIST = 3, 4, 5
LINUX_CMDLINE, LINUX_ENVIRON = 0x47670006, 0x47670007
_THREAD_SIZE, _MEMORY_SIZE, _MODULE_SIZE = 48, 16, 108
#: CodeView signatures and where the file name starts in their record.
CV_PDB70, CV_PDB20 = 0x53445352, 0x3031424E
_CV_NAME_OFFSET = {CV_PDB70: 4 + 16 + 4, CV_PDB20: 4 + 4 + 4 + 4}

STACK_MEMORY, HEAP_MEMORY = "stack_memory", "heap_memory"
LINUX_ENVIRON_PART, LINUX_CMDLINE_PART = "linux_environ", "linux_cmdline"
CODE_FILE, DEBUG_FILE = "code_file", "debug_file"

#: Per part: its state below the file (key, value types), PII attribute and how it is
#: searched (`binary` encodings; the file paths: their directory only).
_PARTS: dict[str, tuple[State, int, str]] = {
    STACK_MEMORY: ((STACK_MEMORY, frozenset({"binary", "stack_memory"})), PII_MAYBE, ALL),
    HEAP_MEMORY: ((HEAP_MEMORY, frozenset({"binary", "heap_memory"})), PII_TRUE, ALL),
    LINUX_ENVIRON_PART: (("", frozenset({"binary"})), PII_TRUE, ALL),
    LINUX_CMDLINE_PART: (("", frozenset({"binary"})), PII_TRUE, ALL),
    CODE_FILE: ((CODE_FILE, frozenset({"string"})), PII_TRUE, UTF16LE),
    DEBUG_FILE: ((DEBUG_FILE, frozenset({"string"})), PII_TRUE, UTF8),
}
_ROOT: State = ("", frozenset({"attachments"}))
_FILE_TYPES = frozenset({"minidump"})


class MinidumpError(ValueError):
    """The bytes are not a minidump that can be scrubbed by its parts."""


@dataclass(frozen=True, slots=True)
class Part:
    """A part of the dump to scrub: its kind (`_PARTS`) and byte range."""

    kind: str
    start: int
    end: int


@dataclass(slots=True)
class MinidumpScrub:
    """What `scrub_minidump` did: the bytes as far as it got (same length), the
    redactions (rule, part kind, start, end in the dump), whether a rule selected a part,
    and why it stopped (None: the dump was read through)."""

    data: bytes
    redactions: list[tuple[Rule, str, int, int]] = field(default_factory=list)
    selected: bool = False
    error: str | None = None


# --- reading ----------------------------------------------------------------------------------


class _Reader:
    def __init__(self, data: bytes) -> None:
        if len(data) < _HEADER_SIZE:
            raise MinidumpError("shorter than a minidump header")
        order = _SIGNATURES.get(data[:4])
        if order is None:
            raise MinidumpError("no minidump signature")
        self.data = data
        self.order = order
        version, count, rva = self.u32s(4, 3)
        if version & 0xFFFF != _VERSION:
            raise MinidumpError("unknown minidump version")
        if rva + count * _DIRECTORY_ENTRY > len(data):
            raise MinidumpError("the stream directory lies past the end")
        #: Stream type -> (rva, size); a later entry of a type wins.
        self.streams: dict[int, tuple[int, int]] = {}
        for i in range(count):
            kind, size, at = self.u32s(rva + i * _DIRECTORY_ENTRY, 3)
            self.streams[kind] = (at, size)

    def u32s(self, offset: int, count: int = 1) -> tuple[int, ...]:
        if offset < 0 or offset + 4 * count > len(self.data):
            raise MinidumpError(f"a read at offset {offset} lies past the end")
        return struct.unpack_from(f"{self.order}{count}I", self.data, offset)

    def stream(self, kind: int, name: str, *, required: bool = True) -> tuple[int, int] | None:
        """The byte range of stream `kind`; MinidumpError when a required one is missing
        or any lies past the end."""
        found = self.streams.get(kind)
        if found is None:
            if required:
                raise MinidumpError(f"no {name} stream")
            return None
        at, size = found
        if at + size > len(self.data):
            raise MinidumpError(f"the {name} stream lies past the end")
        return at, at + size

    def entries(self, kind: int, name: str, size: int) -> list[int]:
        """Offsets of the entries of list stream `kind` (a count, 4 bytes of padding
        allowed after it, then `size`-byte entries filling the stream)."""
        start, end = self.stream(kind, name) or (0, 0)
        if end - start < 4:
            raise MinidumpError(f"the {name} stream is too short")
        (count,) = self.u32s(start)
        rest = end - start - 4 - count * size
        if rest not in (0, 4):
            raise MinidumpError(f"the {name} stream's size does not match its count")
        first = start + 4 + rest
        return [first + i * size for i in range(count)]


def read_parts(data: bytes) -> list[Part]:
    """The parts of the dump to scrub, in Relay's order: memory regions (MemoryList
    order), the Linux environ and cmdline, then per module its path and debug file.
    Raises MinidumpError when the dump does not parse. A part's range is checked when
    it is scrubbed (`scrub_minidump`), as in Relay."""
    r = _Reader(data)
    stacks = {r.u32s(at + 36)[0] for at in r.entries(THREAD_LIST, "thread list", _THREAD_SIZE)}
    parts: list[Part] = []
    for at in r.entries(MEMORY_LIST, "memory list", _MEMORY_SIZE):
        size, rva = r.u32s(at + 8, 2)
        parts.append(Part(STACK_MEMORY if rva in stacks else HEAP_MEMORY, rva, rva + size))
    for kind, name, part in (
        (LINUX_ENVIRON, "Linux environ", LINUX_ENVIRON_PART),
        (LINUX_CMDLINE, "Linux cmdline", LINUX_CMDLINE_PART),
    ):
        found = r.stream(kind, name, required=False)
        if found is not None:
            parts.append(Part(part, *found))
    names: set[int] = set()
    for at in r.entries(MODULE_LIST, "module list", _MODULE_SIZE):
        (name_rva,) = r.u32s(at + 20)
        if name_rva not in names:
            names.add(name_rva)
            (length,) = r.u32s(name_rva)
            parts.append(Part(CODE_FILE, name_rva + 4, name_rva + 4 + length))
        cv_size, cv_rva = r.u32s(at + 76, 2)
        (signature,) = r.u32s(cv_rva)
        offset = _CV_NAME_OFFSET.get(signature)
        if offset is not None:
            parts.append(Part(DEBUG_FILE, cv_rva + offset, cv_rva + cv_size))
    parts = list(dict.fromkeys(parts))  # a range named twice is searched once
    # The parts of a dump are disjoint: a list of overlapping ranges (thousands of entries
    # naming the whole file) would have every rule search the file thousands of times.
    if sum(max(0, p.end - p.start) for p in parts) > len(data):
        raise MinidumpError("its memory regions or module records overlap")
    return parts


# --- scrubbing --------------------------------------------------------------------------------


def _rules(applications: Sequence[Application], filename: str, kind: str) -> list[Rule]:
    """The rules, in order, of the applications whose selector matches part `kind`."""
    state, pii, _ = _PARTS[kind]
    states: list[State] = [_ROOT, (filename, _FILE_TYPES), state]
    out: list[Rule] = []
    for app in applications:
        if matches(app.selector, states, pii):
            out.extend(app.rules)
    return out


def _directory(kind: str, raw: bytes) -> int:
    """Where the file name starts in the path `raw` (the directory's length in bytes;
    0 when there is none); MinidumpError when `raw` does not decode."""
    if kind == CODE_FILE:
        try:
            raw.decode("utf-16-le")
        except UnicodeDecodeError:
            raise MinidumpError("a module path is not UTF-16") from None
        units = struct.unpack(f"<{len(raw) // 2}H", raw)
        for i in range(len(units) - 1, -1, -1):
            if units[i] in (0x2F, 0x5C):
                return 2 * i
        return 0
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        raise MinidumpError("a debug file name is not UTF-8") from None
    return max(raw.rfind(b"/"), raw.rfind(b"\\"), 0)


def _slice(data: bytes, buf: bytearray | None, start: int, end: int) -> bytes:
    """data[start:end] as rewritten so far."""
    return data[start:end] if buf is None else bytes(buf[start:end])


def scrub_minidump(
    applications: Sequence[Application], data: bytes, filename: str
) -> MinidumpScrub:
    """`data`, a minidump named `filename`, through the rules that select its parts (see
    the module docstring). On an error the result holds the bytes rewritten so far."""
    out = MinidumpScrub(data)
    try:
        parts = read_parts(data)
    except MinidumpError as exc:
        out.error = str(exc)
        return out
    rules: dict[str, list[Rule]] = {}
    buf: bytearray | None = None
    for part in parts:
        if part.start > part.end or part.end > len(data):
            out.error = f"a {part.kind} range lies past the end"
            break
        start, end = part.start, part.end
        encodings = _PARTS[part.kind][2]
        if encodings != ALL:
            try:
                end = start + _directory(part.kind, _slice(data, buf, start, end))
            except MinidumpError as exc:
                out.error = str(exc)
                break
        if part.kind not in rules:
            rules[part.kind] = _rules(applications, filename, part.kind)
        if not rules[part.kind]:
            continue
        out.selected = True
        if start == end:
            continue
        key = _PARTS[part.kind][0][0]
        assert isinstance(key, str)
        chunk = _slice(data, buf, start, end)
        new, found = scrub_binary(rules[part.kind], chunk, key, encodings=encodings)
        if new is not None:
            if buf is None:
                buf = bytearray(data)
            buf[start:end] = new
        out.redactions += [(rule, part.kind, start + s, start + e) for rule, s, e in found]
    if buf is not None:
        out.data = bytes(buf)
    return out
