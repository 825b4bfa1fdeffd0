"""Minidumps through the `pii_config` rules, as Sentry's Relay scrubs them (relay-pii
`minidumps.rs`): stack memory, other memory, the Linux environ and cmdline, and the
directories of module paths, each rewritten in place; a dump that does not parse is
scrubbed as a plain binary attachment.

The vectors marked "Relay" carry over the module paths, selectors and expectations of
Relay's own tests (`test_module_list_removed_win` / `_lin` / `_mac`,
`test_module_list_selectors`, `test_stack_scrubbing_*`, `test_linux_environ_valuetype`);
the dumps here are built by `DumpWriter` instead of Relay's fixture files.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest

from relay.processing.scrub.items import Unread
from relay.processing.scrub.minidump_pii import (
    CV_PDB20,
    CV_PDB70,
    LINUX_CMDLINE,
    LINUX_ENVIRON,
    MEMORY_LIST,
    MODULE_LIST,
    THREAD_LIST,
    read_parts,
    scrub_minidump,
)
from relay.processing.scrub.rules import compile_pii_config
from relay.protocol.envelope import make_envelope
from tests.support.relay import RelayFactory, auth_header
from tests.support.upstream import RecordingUpstream
from tests.test_scrub_binary_attachments import scrub

EVENT_ID = "fe4272fa94e54186acc6e75b1bb21a2c"
EMAIL = "alice.smith@example.com"


def u16(text: str) -> bytes:
    return text.encode("utf-16-le")


# --- building minidumps -----------------------------------------------------------------------


@dataclass
class Module:
    code_file: str
    debug_file: str | None = None
    cv: int = CV_PDB70


@dataclass
class Dump:
    """A built minidump and where its parts lie."""

    data: bytes
    stacks: list[tuple[int, int]] = field(default_factory=list)
    heaps: list[tuple[int, int]] = field(default_factory=list)
    environ: tuple[int, int] | None = None
    cmdline: tuple[int, int] | None = None
    #: Per module: the range of its UTF-16 path, and of its debug file name (NUL included).
    code_files: list[tuple[int, int]] = field(default_factory=list)
    debug_files: list[tuple[int, int]] = field(default_factory=list)

    def at(self, span: tuple[int, int], data: bytes | None = None) -> bytes:
        return (self.data if data is None else data)[span[0] : span[1]]

    def code_file(self, data: bytes, i: int = 0) -> str:
        return self.at(self.code_files[i], data).decode("utf-16-le")

    def debug_file(self, data: bytes, i: int = 0) -> str:
        return self.at(self.debug_files[i], data).rstrip(b"\x00").decode("utf-8")


class DumpWriter:
    """Writes a minidump: the 32-byte header, the streams (4-byte aligned), and the
    stream directory last (the header points at it)."""

    def __init__(self, order: str = "<") -> None:
        self.order = order
        self.buf = bytearray(32)
        self.directory: list[tuple[int, int, int]] = []

    def pack(self, fmt: str, *values: int) -> bytes:
        return struct.pack(self.order + fmt, *values)

    def put(self, data: bytes) -> int:
        self.buf += b"\x00" * (-len(self.buf) % 4)
        at = len(self.buf)
        self.buf += data
        return at

    def stream(self, kind: int, data: bytes) -> int:
        at = self.put(data)
        self.directory.append((kind, len(data), at))
        return at

    def finish(self, version: int = 0xA793) -> bytes:
        entries = b"".join(self.pack("3I", *entry) for entry in self.directory)
        at = self.put(entries)
        sig = b"MDMP" if self.order == "<" else b"PMDM"
        self.buf[:32] = sig + self.pack("5IQ", version, len(self.directory), at, 0, 0, 0)
        return bytes(self.buf)


def build(
    stacks: Sequence[bytes] = (),
    heaps: Sequence[bytes] = (),
    modules: Sequence[Module] = (),
    *,
    environ: bytes | None = None,
    cmdline: bytes | None = None,
    order: str = "<",
    skip: frozenset[int] = frozenset(),
    padding: bool = False,
) -> Dump:
    """A minidump with a thread per stack, the memory list (stacks, then heaps), the
    modules, and the Linux streams; the stream types in `skip` left out."""
    w = DumpWriter(order)
    dump = Dump(b"")
    ranges = [(w.put(m), m) for m in (*stacks, *heaps)]
    for i, (at, mem) in enumerate(ranges):
        (dump.stacks if i < len(stacks) else dump.heaps).append((at, at + len(mem)))
    names = []
    for m in modules:
        raw = u16(m.code_file)
        at = w.put(w.pack("I", len(raw)) + raw + b"\x00\x00")
        dump.code_files.append((at + 4, at + 4 + len(raw)))
        cv = (0, 0)
        if m.debug_file is not None:
            name = m.debug_file.encode("utf-8") + b"\x00"
            if m.cv == CV_PDB70:
                head = w.pack("I", CV_PDB70) + bytes(range(16)) + w.pack("I", 1)
            else:
                head = w.pack("4I", CV_PDB20, 0, 0x1234, 1)
            cat = w.put(head + name)
            cv = (len(head) + len(name), cat)
            dump.debug_files.append((cat + len(head), cat + len(head) + len(name)))
        names.append((at, cv))
    pad = b"\x00" * 4 if padding else b""
    threads = b"".join(
        w.pack("4IQQII II", i + 1, 0, 0, 0, 0, 0x7000 + i, len(stacks[i]), at, 0, 0)
        for i, (at, _) in enumerate(ranges[: len(stacks)])
    )
    memory = b"".join(
        w.pack("QII", 0x1000 * (i + 1), len(m), at) for i, (at, m) in enumerate(ranges)
    )
    module_list = b"".join(
        w.pack("Q4I", 0x400000 * (i + 1), 0x1000, 0, 0, at)
        + bytes(52)
        + w.pack("II", *cv)
        + bytes(8 + 16)
        for i, (at, cv) in enumerate(names)
    )
    lists = (
        (THREAD_LIST, len(stacks), threads),
        (MEMORY_LIST, len(ranges), memory),
        (MODULE_LIST, len(names), module_list),
    )
    for kind, count, body in lists:
        if kind not in skip:
            w.stream(kind, w.pack("I", count) + pad + body)
    for kind, blob, attr in (
        (LINUX_ENVIRON, environ, "environ"),
        (LINUX_CMDLINE, cmdline, "cmdline"),
    ):
        if blob is not None:
            at = w.stream(kind, blob)
            setattr(dump, attr, (at, at + len(blob)))
    dump.data = w.finish()
    return dump


def scrub_data(
    dump: Dump, applications: dict[str, list[str]], filename: str = "crash.dmp"
) -> bytes:
    """The dump through `minidump_pii` alone; it must parse."""
    res = scrub_minidump(compile_pii_config({"applications": applications}), dump.data, filename)
    assert res.error is None, res.error
    assert len(res.data) == len(dump.data)
    return res.data


def scrub_item(
    payload: bytes,
    applications: dict[str, list[str]],
    filename: str = "crash.dmp",
    attachment_type: str = "event.minidump",
    **pii: Any,
) -> tuple[bytes, Any, dict[int, Unread]]:
    """`payload` as an attachment of `attachment_type` through an envelope's scrubbing."""
    return scrub(
        payload, applications, filename, gate=False, attachment_type=attachment_type, **pii
    )


MASK = ["@anything:mask"]


# --- Relay's module path vectors ----------------------------------------------------------------

WIN_MAIN = "C:\\projects\\breakpad-tools\\windows\\Release\\crash.exe"
WIN_PDB = "C:\\projects\\breakpad-tools\\windows\\Release\\crash.pdb"
WIN_OTHER = "C:\\Windows\\System32\\kernel32.dll"
LIN_MAIN = "/work/linux/build/crash"
MAC_MAIN = "/Users/travis/build/getsentry/breakpad-tools/macos/build/./crash"

MODULE_VECTORS = [
    # (filename, applications, modules, expected (code_file, debug_file) per module) - Relay
    (
        "windows.dmp",
        {"debug_file": MASK, "$attachments.'windows.dmp'.code_file": MASK},
        [Module(WIN_MAIN, WIN_PDB), Module(WIN_OTHER, "kernel32.pdb")],
        [
            ("*" * 42 + "\\crash.exe", "*" * 42 + "\\crash.pdb"),
            ("*" * 19 + "\\kernel32.dll", "kernel32.pdb"),
        ],
    ),
    (
        "linux.dmp",
        {"debug_file": MASK, "$attachments.*.code_file": MASK},
        [
            Module(LIN_MAIN, LIN_MAIN),
            Module("/lib/x86_64-linux-gnu/libc.so.6", "/lib/x86_64-linux-gnu/libc.so.6"),
            Module("linux-gate.so", "linux-gate.so"),
        ],
        [
            ("*" * 17 + "/crash", "*" * 17 + "/crash"),
            ("*" * 21 + "/libc.so.6", "*" * 21 + "/libc.so.6"),
            ("linux-gate.so", "linux-gate.so"),
        ],
    ),
    (
        "macos.dmp",
        {"debug_file": MASK, "$attachments.*.code_file": MASK},
        [
            Module(MAC_MAIN, "crash"),
            Module("/usr/lib/system/libsystem_c.dylib", "libsystem_c.dylib"),
        ],
        [("*" * 58 + "/crash", "crash"), ("*" * 15 + "/libsystem_c.dylib", "libsystem_c.dylib")],
    ),
    (  # test_module_list_selectors: module paths are strings to `$string`
        "linux.dmp",
        {"$string": MASK},
        [Module(LIN_MAIN, LIN_MAIN)],
        [("*" * 17 + "/crash", "*" * 17 + "/crash")],
    ),
]


@pytest.mark.parametrize(("filename", "applications", "modules", "expected"), MODULE_VECTORS)
def test_relay_module_paths_keep_the_file_name(
    filename: str,
    applications: dict[str, list[str]],
    modules: list[Module],
    expected: list[tuple[str, str]],
) -> None:
    dump = build([b"stack " * 8], [b"heap " * 8], modules)
    out = scrub_data(dump, applications, filename)
    assert [
        (dump.code_file(out, i), dump.debug_file(out, i)) for i in range(len(modules))
    ] == expected
    assert dump.at(dump.stacks[0], out) == dump.at(dump.stacks[0])


def test_pdb20_debug_file_and_replace_is_cut_to_the_directory() -> None:
    dump = build(modules=[Module("C:\\app\\bin\\app.exe", "C:\\app\\bin\\app.pdb", CV_PDB20)])
    out = scrub_data(
        dump, {"debug_file": ["@anything:replace"], "code_file": ["@anything:replace"]}
    )
    # The directory (10 characters) takes "[Filtered]" exactly; a short one cuts it.
    assert dump.debug_file(out) == "[Filtered]\\app.pdb"
    assert dump.code_file(out) == "[Filtered]\\app.exe"
    short = build(modules=[Module("C:\\bin\\app.exe", "C:\\bin\\app.pdb")])
    out = scrub_data(short, {"$string": ["@anything:replace"]})
    assert short.debug_file(out) == "[Filte\\app.pdb"
    assert short.code_file(out) == "[Filte\\app.exe"


def test_a_directory_shorter_than_five_characters_is_no_utf16_run() -> None:
    """The path's directory is searched as UTF-16 text, in runs of 5 characters or more."""
    dump = build(modules=[Module("C:\\a\\app.exe", "C:\\a\\app.pdb")])
    out = scrub_data(dump, {"$string": MASK})
    assert dump.code_file(out) == "C:\\a\\app.exe"
    assert dump.debug_file(out) == "****\\app.pdb"


# --- Relay's stack and environ vectors ------------------------------------------------------------

STACK = b"\x10\x20stack jane@example.com frame " * 4
HEAP = b"\x00heap jane@example.com " * 4 + u16(" wide jane@example.com ")
ENVIRON = b"HOME=/home/jane\x00TOKEN=jane@example.com\x00"
CMDLINE = b"/usr/bin/app\x00--user=jane@example.com\x00"


def linux_dump(**kw: Any) -> Dump:
    return build(
        [STACK, STACK[::-1]],
        [HEAP],
        [Module(LIN_MAIN, LIN_MAIN)],
        environ=ENVIRON,
        cmdline=CMDLINE,
        **kw,
    )


@pytest.mark.parametrize(
    ("selector", "stack", "heap", "environ"),
    [
        # (selector, stack scrubbed, heap scrubbed, environ scrubbed) - Relay
        ("$stack_memory", True, False, False),  # backwards compatible selector
        ("$minidump.stack_memory", True, False, False),
        ("$minidump.*", True, True, True),  # Relay: wildcards are specific (known issue)
        ("$minidump.$binary", False, True, True),  # `$binary` never reaches the stack
        ("$binary", False, True, True),  # not fully qualified: not the stack
        ("$attachments.**", False, True, True),  # deep wildcard: not the stack
        ("$binary && !stack_memory", False, True, True),
        ("$heap_memory", False, True, False),
        ("$attachments.'crash.dmp'.heap_memory", False, True, False),
        ("**", False, True, True),
    ],
)
def test_relay_memory_selectors(selector: str, stack: bool, heap: bool, environ: bool) -> None:
    dump = linux_dump()
    out = scrub_data(dump, {selector: MASK})
    for span in dump.stacks:
        assert (dump.at(span, out) == b"*" * (span[1] - span[0])) is stack
        if not stack:
            assert dump.at(span, out) == dump.at(span)
    for span in dump.heaps:
        assert (set(dump.at(span, out)) == {ord("*")}) is heap
    for span in (dump.environ, dump.cmdline):
        assert span is not None
        assert (set(dump.at(span, out)) == {ord("*")}) is environ


def test_rules_find_matches_in_each_part_as_in_any_binary() -> None:
    dump = linux_dump()
    out = scrub_data(dump, {"$heap_memory": ["@email:mask"], "$binary": ["@email:replace"]})
    heap = dump.at(dump.heaps[0], out)
    assert b"jane@example.com" not in heap and u16("jane@example.com") not in heap
    assert b"heap ****************" in heap and u16(" wide " + "*" * 16) in heap
    assert dump.at(dump.environ, out) == b"HOME=/home/jane\x00TOKEN=[email]*********\x00"  # type: ignore[arg-type]
    assert dump.at(dump.cmdline, out) == b"/usr/bin/app\x00--user=[email]*********\x00"  # type: ignore[arg-type]
    assert all(dump.at(s, out) == dump.at(s) for s in dump.stacks)
    assert dump.code_file(out) == LIN_MAIN


def test_big_endian_dumps_and_padded_lists_are_read() -> None:
    for dump in (linux_dump(order=">"), linux_dump(padding=True)):
        out = scrub_data(dump, {"$heap_memory": MASK, "$stack_memory": ["@email:mask"]})
        assert set(dump.at(dump.heaps[0], out)) == {ord("*")}
        assert b"jane@example.com" not in dump.at(dump.stacks[0], out)
        assert [p.kind for p in read_parts(dump.data)][:3] == [
            "stack_memory",
            "stack_memory",
            "heap_memory",
        ]


def test_rules_that_select_nothing_leave_the_dump_byte_identical() -> None:
    dump = linux_dump()
    for applications in (
        {"$attachments.'other.dmp'.heap_memory": MASK},
        {"$number": MASK},
        {"$error.value": MASK},
        {"$attachments.'crash.dmp'": MASK},  # the file is `$minidump`: its parts lie below
        {"$heap_memory": ["@creditcard"]},  # selects, finds nothing
    ):
        res = scrub_minidump(
            compile_pii_config({"applications": applications}), dump.data, "crash.dmp"
        )
        assert res.error is None and res.data is dump.data and res.redactions == []
        out, report, notes = scrub_item(dump.data, applications)
        assert out == dump.data and report.changed_items == []
    _, _, notes = scrub_item(dump.data, {"$number": MASK})
    assert notes[0].why == "binary content (minidump): no pii_config rule selects its parts"


# --- dumps that do not parse ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "broken",
    [
        lambda: build([STACK], [HEAP], skip=frozenset({MODULE_LIST})).data,
        lambda: build([STACK], [HEAP], skip=frozenset({THREAD_LIST})).data,
        lambda: build([STACK], [HEAP], skip=frozenset({MEMORY_LIST})).data,
        lambda: DumpWriter().finish(version=0xA794) + STACK,
        lambda: b"MDMP\x93\xa7\x00\x00\xff\xff\x00\x00" + bytes(20) + STACK,
        lambda: STACK + HEAP,
    ],
    ids=["no-modules", "no-threads", "no-memory", "version", "directory", "no-header"],
)
def test_a_dump_that_does_not_parse_is_scrubbed_as_a_plain_binary(broken: Any) -> None:
    data = broken()
    assert scrub_minidump(
        compile_pii_config({"applications": {"$binary": MASK}}), data, "c.dmp"
    ).error
    # The rules that select the file as a binary apply to all of it, stack memory too...
    out, report, notes = scrub_item(data, {"$attachments.'crash.dmp'": ["@email:mask"]})
    assert b"jane@example.com" not in out and b"stack " + b"*" * 16 in out
    assert 0 not in notes and report.changed_items == [0]
    # ... without an application naming an attachment (no gate for minidumps, as in Sentry).
    out, _, _ = scrub_item(data, {"$binary": ["@email:mask"]})
    assert b"jane@example.com" not in out
    # The rules for a minidump's parts find no parts.
    out, _, notes = scrub_item(data, {"$stack_memory": ["@email:mask"]})
    assert out == data and "does not parse" in notes[0].why


def test_what_was_rewritten_before_a_bad_part_is_kept() -> None:
    """Relay scrubs part by part and falls back on the bytes as far as it got."""
    dump = build([STACK], [HEAP], [Module(LIN_MAIN, LIN_MAIN)])
    data = bytearray(dump.data)
    s, _ = dump.code_files[0]
    data[s : s + 2] = b"\x00\xd8"  # a lone surrogate: the path is no UTF-16
    res = scrub_minidump(
        compile_pii_config({"applications": {"$heap_memory": MASK}}), bytes(data), "crash.dmp"
    )
    assert res.error == "a module path is not UTF-16"
    assert set(dump.at(dump.heaps[0], res.data)) == {ord("*")}
    out, _, _ = scrub_item(bytes(data), {"$heap_memory": MASK, "$binary": ["@email:mask"]})
    assert set(dump.at(dump.heaps[0], out)) == {ord("*")}
    assert b"jane@example.com" not in out  # the fallback reached the stack too


def test_a_minidump_sent_as_a_plain_attachment_is_a_plain_binary() -> None:
    """As in Sentry, only `event.minidump` is read as a dump; other attachments that hold
    one are binaries, rewritten when the policy names an attachment."""
    dump = linux_dump()
    apps = {"$attachments.'other.log'": ["@ip"], "$binary": ["@email:mask"]}
    out, _, _ = scrub_item(dump.data, apps, attachment_type="event.attachment")
    assert all(b"jane@example.com" not in dump.at(s, out) for s in dump.stacks)
    out, _, notes = scrub_item(
        dump.data, {"$binary": ["@email:mask"]}, attachment_type="event.attachment"
    )
    assert out == dump.data and notes[0].why == "binary content (minidump)"


def test_redactions_are_listed_by_byte_range() -> None:
    dump = linux_dump()
    _, report, _ = scrub_item(dump.data, {"$heap_memory": ["@email:mask"]})
    paths = [r.path for r in report.redactions]
    start, end = dump.heaps[0]
    assert paths and all(p.startswith("<bytes>[") for p in paths)
    assert all(start <= int(p[8:].split(":")[0]) < end for p in paths)


# --- through the relay ------------------------------------------------------------------------------


async def test_relay_forwards_the_scrubbed_minidump(
    relay_factory: RelayFactory, recorder: RecordingUpstream
) -> None:
    dump = linux_dump()
    pii = {
        "applications": {
            "$heap_memory": ["@email:mask"],
            "$minidump.code_file": MASK,
            "$stack_memory": ["@email"],
        }
    }
    relay = await relay_factory(policy={"scrubbing": {"pii_config": pii}})
    header = {"type": "attachment", "filename": "crash.dmp", "attachment_type": "event.minidump"}
    body = make_envelope(
        {"event_id": EVENT_ID},
        [({"type": "event"}, orjson.dumps({"message": "crash"})), (header, dump.data)],
    ).serialize()
    resp = await relay.post("/api/42/envelope/", data=body, headers=auth_header())
    assert resp.status == 200
    await recorder.wait_for(1)
    (forwarded,) = recorder.items("attachment")
    out = forwarded.payload
    assert len(out) == len(dump.data) and out[:4] == b"MDMP"
    heap = dump.at(dump.heaps[0], out)
    assert b"jane@example.com" not in heap and u16("jane@example.com") not in heap
    assert all(b"[email]" in dump.at(s, out) for s in dump.stacks[:1])
    assert dump.code_file(out) == "*" * 17 + "/crash"
    assert dump.at(dump.environ, out) == ENVIRON  # type: ignore[arg-type]
    assert read_parts(out) == read_parts(dump.data)
    assert dump.at(dump.cmdline, out) == CMDLINE  # type: ignore[arg-type]


async def test_the_minidump_upload_endpoints_dump_is_scrubbed_by_its_parts(
    relay_factory: RelayFactory, recorder: RecordingUpstream
) -> None:
    # Breakpad and Crashpad post the dump to /minidump/ as a form: the same rules apply.
    dump = linux_dump()
    pii = {"applications": {"$heap_memory": ["@email:mask"], "$minidump.code_file": MASK}}
    relay = await relay_factory(policy={"scrubbing": {"pii_config": pii}})
    boundary = "dumpform"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="upload_file_minidump"; '
            'filename="crash.dmp"\r\nContent-Type: application/octet-stream\r\n\r\n'
        ).encode()
        + dump.data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    resp = await relay.post(
        "/api/42/minidump/",
        data=body,
        headers={**auth_header(), "Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert resp.status == 200, await resp.text()
    await recorder.wait_for(1)
    sent = recorder.received[0].body
    start = sent.index(b"MDMP")
    out = sent[start : start + len(dump.data)]
    heap = dump.at(dump.heaps[0], out)
    assert b"jane@example.com" not in heap and u16("jane@example.com") not in heap
    assert dump.code_file(out) == "*" * 17 + "/crash"
    assert read_parts(out) == read_parts(dump.data)


def test_overlapping_parts_are_not_searched_again_and_again() -> None:
    # A memory list naming the whole file thousands of times: read as parts, every rule
    # would search the file once per entry. Real dumps' parts are disjoint: such a dump
    # does not parse, and is scrubbed once as a plain binary.
    dump = linux_dump()
    data = bytearray(dump.data)
    count, directory = struct.unpack_from("<II", data, 8)
    entries = [struct.unpack_from("<III", data, directory + 12 * i) for i in range(count)]
    (memory,) = (rva for kind, _, rva in entries if kind == MEMORY_LIST)
    (regions,) = struct.unpack_from("<I", data, memory)
    for i in range(regions):  # each descriptor: start (8), size (4), rva (4)
        struct.pack_into("<II", data, memory + 4 + 16 * i + 8, len(data), 0)
    apps = compile_pii_config({"applications": {"$heap_memory": MASK}})
    done = scrub_minidump(apps, bytes(data), "crash.dmp")
    assert done.error is not None and "overlap" in done.error
