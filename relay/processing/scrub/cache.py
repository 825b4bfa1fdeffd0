"""`ScanCache`: a bounded in-memory memo of value-detector results per string.

Module names, file paths, source lines, SQL and breadcrumb messages repeat from one
event to the next; looking a string up beats scanning it again. One cache belongs to
one compiled policy (its results depend on the policy's detectors), lives only in
process memory and is bounded by entry count and by the characters it holds: when a
new entry would exceed either bound the cache is emptied and refilled. Strings longer
than `max_len` are never stored. Keys are the original (unscrubbed) strings: the cache
is never serialized, logged or shared between processes.

A result is `None` (no detector matched) or `(new_text, changes, leaf)`, where
`changes` is a tuple of `(rule, start, end)`: which default rule replaced what range of
`new_text`, and `leaf` the value's `_meta` object as Sentry writes it,
`{"": {"rem": [[rule, "s", start, end], ...], "len": len(text)}}`. Leaves are shared by
every payload the string appears in: the walker never mutates one in place.

`clean` holds the stored strings whose result is `None`, so that the walker's common
case, a string seen before in which nothing was found, is one set membership test.
"""

from __future__ import annotations

from typing import Any

#: (rule, start, end) of one replacement, the range in the rewritten text.
Change = tuple[str, int, int]
#: A cached scan outcome: None when the text is clean.
ScanResult = tuple[str, tuple[Change, ...], dict[str, Any]] | None


class ScanCache:
    """Bounded `text -> ScanResult` memo.

    Parameters:
        max_entries: most strings held (0 disables the cache).
        max_chars: most characters held, originals and rewritten texts together.
        max_len: longer strings are not stored.
    """

    __slots__ = ("chars", "clean", "data", "max_chars", "max_entries", "max_len")

    def __init__(
        self, max_entries: int = 20_000, max_chars: int = 4_000_000, max_len: int = 4096
    ) -> None:
        self.data: dict[str, ScanResult] = {}
        #: The keys of `data` whose result is None (always a subset of `data`).
        self.clean: set[str] = set()
        self.chars = 0
        self.max_entries = max_entries
        self.max_chars = max_chars
        self.max_len = max_len

    def __len__(self) -> int:
        return len(self.data)

    def put(self, text: str, result: ScanResult) -> None:
        size = len(text)
        if size > self.max_len or self.max_entries <= 0:
            return
        if result is not None:
            size += len(result[0])
        if len(self.data) >= self.max_entries or self.chars + size > self.max_chars:
            self.clear()
        self.data[text] = result
        if result is None:
            self.clean.add(text)
        else:
            self.clean.discard(text)
        self.chars += size

    def put_all(self, results: dict[str, ScanResult]) -> None:
        """`put` of every item, in order."""
        data = self.data
        clean = self.clean
        max_len, max_entries, max_chars = self.max_len, self.max_entries, self.max_chars
        if max_entries <= 0:
            return
        for text, result in results.items():
            size = len(text)
            if size > max_len:
                continue
            if result is not None:
                size += len(result[0])
            if len(data) >= max_entries or self.chars + size > max_chars:
                self.clear()
            data[text] = result
            if result is None:
                clean.add(text)
            else:
                clean.discard(text)
            self.chars += size

    def clear(self) -> None:
        self.data.clear()
        self.clean.clear()
        self.chars = 0


#: One remark a tuple of rules made on a string: (rule, method, (start, end)).
Mark = tuple[str, str, tuple[int, int]]


class RulesMemo:
    """Bounded memo of what one tuple of rules (none of which looks at the key) does to
    strings: `clean` holds those it changes nothing in, `done` the others, each with its
    rewritten text and remarks. Bounded like `ScanCache` (entries, characters held,
    longest string); process memory only.
    """

    __slots__ = ("chars", "clean", "done", "max_chars", "max_entries", "max_len")

    def __init__(
        self, max_entries: int = 20_000, max_chars: int = 1_000_000, max_len: int = 4096
    ) -> None:
        self.clean: set[str] = set()
        self.done: dict[str, tuple[str, tuple[Mark, ...]]] = {}
        self.chars = 0
        self.max_entries = max_entries
        self.max_chars = max_chars
        self.max_len = max_len

    def put(self, text: str, result: tuple[str, tuple[Mark, ...]] | None) -> None:
        size = len(text) + (len(result[0]) if result is not None else 0)
        if len(text) > self.max_len:
            return
        if (
            len(self.clean) + len(self.done) >= self.max_entries
            or self.chars + size > self.max_chars
        ):
            self.clean.clear()
            self.done.clear()
            self.chars = 0
        if result is None:
            self.clean.add(text)
        else:
            self.done[text] = result
        self.chars += size
