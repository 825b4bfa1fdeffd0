"""Binary attachments through the `pii_config` rules that select them, byte by byte.

Sentry's Relay rewrites an attachment it cannot read as text in place and never changes
its length (relay-pii `attachments.rs`); this module does the same. Per rule, in order:

1. The bytes are searched as they are, ASCII-wise (what a UTF-8 or Latin-1 string in
   the file looks like): user patterns in byte mode (`\\xc3\\x28` finds those two bytes,
   `.` any byte, `\\b` and `\\w` ASCII only), the value detectors over the bytes with
   every non-ASCII byte read as a character that is no letter, digit or space.
2. What step 1 left untouched is searched as UTF-16LE text, on even offsets: runs of
   valid code units (a lone surrogate ends one) of 5 characters or more, each on its
   own, as Relay reads them.

A rule that redacts a whole value redacts the whole file: `anything`, a `redact_pair` or
`password` key pattern found in the bytes (Relay treats every pattern as a value
pattern here; in UTF-16 text only the match is redacted) or matching the file name (as
for text attachments). Each match is overwritten with as many bytes (as many code units
in UTF-16): `remove` and `mask` fill it with `*`; `replace` writes its text and `hash`
the HMAC-SHA1 hex digest of the matched bytes (keyed with `hashKey`, as elsewhere), both
cut to the match's length at a character boundary and padded with `*`.

`scrub_binary` gives the new bytes (None when unchanged) and, per redaction, the rule and
the byte range. Its cost is a few passes over the file per rule; the value detectors
run only where a re2 prefilter says they can match.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Sequence
from functools import lru_cache, partial
from typing import Any

import re2

from relay.processing.scrub import detectors as det
from relay.processing.scrub.rules import Method, Rule

Span = tuple[int, int]
#: One search of a rule (its pattern, detectors, a key pattern) over text: the spans.
_Search = Callable[[Any], list[Span]]

#: Relay's shortest UTF-16 string worth searching, in characters.
MIN_WIDE_CHARS = 5
_FILL = b"*"
_FILL_WIDE = "*".encode("utf-16-le")

_BYTES_OPTIONS = re2.Options()
_BYTES_OPTIONS.encoding = re2.Options.Encoding.LATIN1
_BYTES_OPTIONS.dot_nl = True
_BYTES_OPTIONS.log_errors = False
_BYTES_OPTIONS.max_mem = 64 << 20
_TEXT_OPTIONS = re2.Options()
_TEXT_OPTIONS.log_errors = False
_TEXT_OPTIONS.max_mem = 64 << 20

#: Non-ASCII bytes as DEL for the detectors: no letter, digit, space or punctuation.
_ASCII_ONLY = bytes(range(128)) + b"\x7f" * 128
#: A surrogate in decoded UTF-16: lone ones end a run (valid pairs decode to one character).
_SURROGATE = re.compile("[\ud800-\udfff]")
_ASTRAL = re.compile("[\U00010000-\U0010ffff]")
#: Joins the decoded stretches of one UTF-16 search (a lone surrogate: ends a run).
_JOIN = "\ud800"

# How a search covers the UTF-16 runs (`_wide_searches`).
_JOINED, _LINES, _EACH = range(3)
#: What `anything` overwrites in UTF-16 text alone: every line (Relay's `.*`).
_ANY_LINE = re2.compile(".+", _TEXT_OPTIONS)

#: `scrub_binary`'s encodings: both steps, step 1 alone, step 2 alone.
ALL, UTF8, UTF16LE = "all", "utf8", "utf16le"


def scrub_binary(
    rules: Sequence[Rule], data: bytes, filename: str, *, encodings: str = ALL
) -> tuple[bytes | None, list[tuple[Rule, int, int]]]:
    """`data` through `rules` in order (see the module docstring): the new bytes, of the
    same length (None when unchanged), and the redactions as (rule, start, end).

    `encodings`: `ALL` (both steps), `UTF8` (step 1 only) or `UTF16LE` (step 2 only,
    over all of `data`; there `anything` overwrites each run's lines, as Relay's `.*`
    does in UTF-16 text)."""
    done: list[tuple[Rule, int, int]] = []
    current = data
    narrow_text: tuple[bytes, str] | None = None
    wide: tuple[bytes, list[Span], _Wide] | None = None
    for rule in rules:
        if not current:
            break
        narrow: list[Span] = []
        if encodings != UTF16LE:
            if narrow_text is None or narrow_text[0] is not current:
                narrow_text = (current, "")  # the detectors' text, made when one needs it
            narrow, narrow_text = _narrow_spans(rule, current, filename, narrow_text)
            narrow = _merge(narrow)
        current = _overwrite(current, narrow, rule, _narrow, done)
        if encodings == UTF8:
            continue
        searches = _wide_searches(rule, wide_only=encodings == UTF16LE)
        gaps = _gaps(narrow, len(current))
        if not searches or not gaps:
            continue
        if wide is None or wide[0] is not current or wide[1] != gaps:
            wide = (current, gaps, _Wide(current, gaps))
        current = _overwrite(current, _wide_spans(searches, wide[2]), rule, _wide, done)
    return (None if current == data else current), done


# --- what a rule finds ------------------------------------------------------------------------


@lru_cache(maxsize=512)
def _bytes_regex(pattern: str) -> Any:
    """`pattern` compiled for bytes (Latin-1 mode: a byte is a character, a non-ASCII
    character of the pattern matches its UTF-8 bytes); None if re2 refuses it so."""
    try:
        return re2.compile(pattern.encode("utf-8", "surrogatepass"), _BYTES_OPTIONS)
    except Exception:  # re2.error, or a pattern re2 cannot take as bytes
        return None


@lru_cache(maxsize=512)
def _lines_regex(pattern: str) -> Any:
    """`pattern` with `^` and `$` matching at line breaks (to find the runs where it may
    match, see `_wide_spans`); None when it has `\\A` or `\\z`, or re2 refuses it."""
    if "\\A" in pattern or "\\z" in pattern:
        return None
    try:
        return re2.compile("(?m)" + pattern, _TEXT_OPTIONS)
    except Exception:
        return None


@lru_cache(maxsize=256)
def _scanner(detectors: tuple[det.Detector, ...]) -> det.Scanner[None]:
    return det.Scanner([(d, None) for d in detectors])


def _anchored(pattern: str) -> bool:
    """Does `pattern` hold `^`, `$`, `\\A` or `\\z` outside a character class?"""
    i, n = 0, len(pattern)
    in_class = False
    while i < n:
        c = pattern[i]
        if c == "\\":
            if not in_class and pattern[i + 1 : i + 2] in ("A", "z"):
                return True
            i += 2
            continue
        if in_class:
            in_class = c != "]"
        elif c == "[":
            in_class = True
            i += 1
            if pattern[i : i + 1] == "^":
                i += 1
            if pattern[i : i + 1] == "]":  # a literal `]` first in the class
                i += 1
            continue
        elif c in "^$":
            return True
        i += 1
    return False


def _whole_patterns(rule: Rule) -> list[Any]:
    """The key patterns and value patterns of `rule` that redact a whole value."""
    out: list[Any] = []
    for p in (*rule.key_patterns, *rule.value_whole):
        if all(p is not q for q in out):
            out.append(p)
    return out


def _group_spans(regex: Any, groups: frozenset[int] | None, text: Any) -> list[Span]:
    """The non-empty spans of the groups to replace (None: the whole match)."""
    out: list[Span] = []
    for m in regex.finditer(text):
        if groups is None:
            s, e = m.span()
            if s < e:
                out.append((s, e))
            continue
        for g in sorted(groups):
            if g <= regex.groups:
                s, e = m.span(g)
                if 0 <= s < e:
                    out.append((s, e))
    return out


def _match_spans(regex: Any, text: Any) -> list[Span]:
    return [m.span() for m in regex.finditer(text) if m.start() < m.end()]


def _detector_spans(detectors: tuple[det.Detector, ...], text: str) -> list[Span]:
    return [(h.start, h.end) for h in _scanner(detectors).scan(text)]


def _narrow_spans(
    rule: Rule, data: bytes, filename: str, text: tuple[bytes, str]
) -> tuple[list[Span], tuple[bytes, str]]:
    """What `rule` redacts of `data` read byte-wise (step 1), and the detectors' text
    of `data` (`text`, made here when a detector first needs it)."""
    whole = [(0, len(data))]
    if rule.type == "anything" or rule.applies_to_key(filename):
        return whole, text
    for p in _whole_patterns(rule):
        regex = _bytes_regex(p.pattern)
        if regex is not None and any(m.start() < m.end() for m in regex.finditer(data)):
            return whole, text
    spans: list[Span] = []
    if rule.pattern is not None:
        regex = _bytes_regex(rule.pattern.pattern)
        if regex is not None:
            spans += _group_spans(regex, rule.groups, data)
    if rule.detectors:
        if not text[1]:
            text = (data, data.translate(_ASCII_ONLY).decode("ascii"))
        spans += _detector_spans(rule.detectors, text[1])
    return spans, text


def _overwrite(
    data: bytes,
    spans: list[Span],
    rule: Rule,
    fill: Callable[[Method, bytes], bytes],
    done: list[tuple[Rule, int, int]],
) -> bytes:
    """`data` with each span overwritten by `fill` (same length), recorded in `done`."""
    if not spans:
        return data
    buf = bytearray(data)
    for s, e in spans:
        buf[s:e] = fill(rule.redaction, data[s:e])
        done.append((rule, s, e))
    return bytes(buf)


def _wide_searches(rule: Rule, *, wide_only: bool = False) -> list[tuple[_Search, int, Any]]:
    """The searches of `rule` over decoded UTF-16 text (step 2), each with how it covers
    the runs (`_JOINED`, `_LINES` with its line-mode regex, `_EACH`); `wide_only`: step 2
    runs without step 1."""
    out: list[tuple[_Search, int, Any]] = []
    if rule.type == "anything":
        if wide_only:  # each line of each run
            out.append((partial(_match_spans, _ANY_LINE), _EACH, None))
        return out  # else step 1 took the whole file
    patterns: list[tuple[_Search, str]] = []
    if rule.pattern is not None:
        patterns.append((partial(_group_spans, rule.pattern, rule.groups), rule.pattern.pattern))
    if rule.detectors:
        out.append((partial(_detector_spans, rule.detectors), _JOINED, None))
    for p in _whole_patterns(rule):
        patterns.append((partial(_match_spans, p), p.pattern))
    for search, source in patterns:
        if not _anchored(source):
            out.append((search, _JOINED, None))
            continue
        lines = _lines_regex(source)
        out.append((search, _EACH, None) if lines is None else (search, _LINES, lines))
    return out


# --- UTF-16LE runs ----------------------------------------------------------------------------


class _Wide:
    """The UTF-16LE text of some byte ranges (`gaps`, starting on even offsets): decoded
    and joined into one string whose runs are separated by a lone surrogate, so that one
    search covers them all. `text` has NUL in place of every surrogate (a NUL ends a
    value for the detectors, as the start or end of a string does)."""

    def __init__(self, data: bytes, gaps: Iterable[Span]) -> None:
        parts: list[str] = []
        #: Per decoded range: where it starts in the joined text and in the data.
        self.char_starts: list[int] = []
        self.byte_starts: list[int] = []
        pos = units = 0
        for gs, ge in gaps:
            count = (ge - gs) // 2
            if count < MIN_WIDE_CHARS:
                continue
            part = data[gs : gs + 2 * count].decode("utf-16-le", "surrogatepass")
            self.char_starts.append(pos)
            self.byte_starts.append(gs)
            parts.append(part)
            pos += len(part) + 1
            units += count + 1
        self.raw = _JOIN.join(parts)
        self.size = len(self.raw)
        #: Positions of the separators and lone surrogates: where runs end.
        self.cuts = [m.start() for m in _SURROGATE.finditer(self.raw)]
        self.text = _SURROGATE.sub("\x00", self.raw) if self.cuts else self.raw
        self._lines: str | None = None
        #: Positions of characters of two code units (`raw` is shorter than the units).
        self.astral = [m.start() for m in _ASTRAL.finditer(self.raw)] if pos != units else []

    @property
    def lines(self) -> str:
        """The joined text with a line break in place of every surrogate."""
        if self._lines is None:
            self._lines = _SURROGATE.sub("\n", self.raw) if self.cuts else self.raw
        return self._lines

    def run_at(self, pos: int) -> Span:
        """The run holding position `pos` (a cut: the empty run after it)."""
        i = bisect_right(self.cuts, pos)
        start = self.cuts[i - 1] + 1 if i else 0
        end = self.cuts[i] if i < len(self.cuts) else self.size
        return start, max(start, end)

    def runs(self, start: int = 0, end: int | None = None) -> list[Span]:
        """The runs worth searching (`MIN_WIDE_CHARS` or longer) that overlap
        [start, end), or hold `start` when the range is empty."""
        end = max(start + 1, self.size if end is None else end)
        out: list[Span] = []
        i = bisect_right(self.cuts, start)
        s = self.cuts[i - 1] + 1 if i else 0
        while s < end and s <= self.size:
            e = self.cuts[i] if i < len(self.cuts) else self.size
            if e - s >= MIN_WIDE_CHARS:
                out.append((s, e))
            s = e + 1
            i += 1
        return out

    def to_bytes(self, start: int, end: int) -> Span:
        """Positions in the joined text (within one decoded range) as data offsets."""
        p = bisect_right(self.char_starts, start) - 1
        base = self.char_starts[p]
        before = bisect_left(self.astral, base)
        s = self.byte_starts[p] + 2 * (start - base + bisect_left(self.astral, start) - before)
        e = self.byte_starts[p] + 2 * (end - base + bisect_left(self.astral, end) - before)
        return s, e


def _wide_spans(searches: list[tuple[_Search, int, Any]], wide: _Wide) -> list[Span]:
    """What `searches` find in the UTF-16LE runs of `wide` (step 2), as byte spans.

    A search runs once over the joined text (`_JOINED`); a match that leaves its run,
    or lies in one too short, is not one Relay would find: the runs it touches are then
    searched on their own. A pattern anchored with `^` or `$` runs on its own over each
    run where its line-mode form matches (`_LINES`: no run it matches in is missed), or
    over every run (`_EACH`)."""
    if not wide.size:
        return []
    text = wide.text
    found: list[Span] = []
    for search, how, lines in searches:
        runs: list[Span] = []
        if how == _EACH:
            runs = wide.runs()
        elif how == _LINES:
            for m in lines.finditer(wide.lines):
                for run in wide.runs(m.start(), m.end()):
                    if not runs or runs[-1] != run:
                        runs.append(run)
        else:
            inside: list[Span] = []
            for s, e in search(text):
                rs, re_ = wide.run_at(s)
                if rs <= s and e <= re_:
                    if re_ - rs >= MIN_WIDE_CHARS:
                        inside.append((s, e))
                    continue
                for run in wide.runs(s, e):
                    if not runs or runs[-1] != run:
                        runs.append(run)
            if runs:
                redo = set(runs)
                inside = [(s, e) for s, e in inside if wide.run_at(s) not in redo]
            found += inside
        for rs, re_ in runs:
            found += [(rs + s, rs + e) for s, e in search(text[rs:re_])]
    return [wide.to_bytes(s, e) for s, e in _merge(found)]


# --- spans and redaction ----------------------------------------------------------------------


def _merge(spans: Iterable[Span]) -> list[Span]:
    """Sorted spans, overlapping ones joined (Relay overwrites each: their union)."""
    out: list[Span] = []
    for s, e in sorted(spans):
        if out and s < out[-1][1]:
            if e > out[-1][1]:
                out[-1] = (out[-1][0], e)
            continue
        out.append((s, e))
    return out


def _gaps(spans: list[Span], size: int) -> list[Span]:
    """What `spans` (merged) leave of [0, size), each piece starting on an even offset."""
    out: list[Span] = []
    pos = 0
    for s, e in [*spans, (size, size)]:
        start = pos + (pos & 1)
        if s > start:
            out.append((start, s))
        pos = e
    return out


def _digest(method: Method, matched: bytes) -> str:
    return hmac.new(method.hash_key, matched, hashlib.sha1).hexdigest().upper()


def _narrow(method: Method, matched: bytes) -> bytes:
    """`matched` redacted, byte-wise, at the same length."""
    size = len(matched)
    if method.method == "replace":
        text = method.text.encode("utf-8", "surrogatepass")
    elif method.method == "hash":
        text = _digest(method, matched).encode("ascii")
    else:  # remove, mask
        return _FILL * size
    if len(text) > size:
        cut = size
        while cut and text[cut] & 0xC0 == 0x80:  # not inside a UTF-8 character
            cut -= 1
        text = text[:cut]
    return text + _FILL * (size - len(text))


def _wide(method: Method, matched: bytes) -> bytes:
    """`matched` (UTF-16LE) redacted at the same length, in UTF-16LE."""
    units = len(matched) // 2
    if method.method == "replace":
        text = method.text.encode("utf-16-le", "surrogatepass")
    elif method.method == "hash":
        text = _digest(method, matched).encode("utf-16-le")
    else:  # remove, mask
        return _FILL_WIDE * units
    if len(text) > 2 * units:
        cut = 2 * units
        if 0xD8 <= text[cut - 1] <= 0xDB:  # not between the halves of a surrogate pair
            cut -= 2
        text = text[:cut]
    return text + _FILL_WIDE * (units - len(text) // 2)
