"""Glob patterns, compiled once into one linear-time (RE2) regex per pattern list.

Syntax (Sentry's glob flavour, plus `**` for paths):

    *        any run of characters, `/` and newlines included
             (with ``path=True``: any run without `/`)
    **       with ``path=True``, as a whole segment (`**/a`, `a/**`, `a/**/b`, `**`):
             any run, `/` included; inside a segment (`a**`, `**.py`) like `*`
    ?        exactly one character
    [abc]    one of the listed characters; ranges `[a-z]`; negated `[!a-z]`
             (`[^...]` is refused: Sentry's filters read its `^` literally, not as a
             negation; `[\\^...]` is a class with a literal `^`). With ``path=True`` a
             negated class does not match `/`.
    {a,b}    one of the alternatives (may nest and contain other syntax)
    \\x       the character `x` literally

``fingerprint=True`` is the flavour of Sentry's fingerprint rules instead: `[^a-z]`
negates like `[!a-z]`, and a negated class matches `/` even with ``path=True``.

A glob matches the whole value; the empty value never matches (nor does an empty
pattern). Matching is case-insensitive unless ``case_sensitive=True``.

`GlobSet(patterns)` combines a list into a single regex and reports which pattern
matched first (for outcome reasons and shadow tags); `validate_glob(pattern)` says
what is wrong with a pattern, for `check-config`.
"""

from __future__ import annotations

from collections.abc import Iterable

import re2

__all__ = ["GlobError", "GlobSet", "glob_to_regex", "validate_glob"]

_OPTIONS = re2.Options()
_OPTIONS.log_errors = False
_OPTIONS.max_mem = 64 << 20


class GlobError(ValueError):
    """A pattern is not a valid glob; `position` is the 0-based offset of the problem."""

    def __init__(self, message: str, position: int) -> None:
        super().__init__(message)
        self.position = position


def _literal(ch: str) -> str:
    if ch.isascii() and (ch.isalnum() or ch == "_"):
        return ch
    if ch.isascii():
        return f"\\x{{{ord(ch):02x}}}"
    return ch


def _class_char(ch: str) -> str:
    return ch if ch.isascii() and ch.isalnum() else f"\\x{{{ord(ch):x}}}"


class _Translator:
    def __init__(self, pattern: str, path: bool, fingerprint: bool) -> None:
        self.p = pattern
        self.i = 0
        self.path = path
        self.fingerprint = fingerprint

    def run(self) -> str:
        return self.sequence(stop_at_brace=False)

    def sequence(self, *, stop_at_brace: bool) -> str:
        parts: list[str] = []
        p = self.p
        start = self.i
        while self.i < len(p):
            ch = p[self.i]
            if stop_at_brace and ch in ",}":
                return "".join(parts)
            if ch == "\\":
                if self.i + 1 >= len(p):
                    raise GlobError("pattern ends with a lone backslash", self.i)
                parts.append(_literal(p[self.i + 1]))
                self.i += 2
            elif ch == "*":
                if self.path and p.startswith("**", self.i):
                    whole = self.whole_segment(start, stop_at_brace)
                    self.i += 2
                    if not whole:
                        parts.append("[^/]*")  # `a**`, `**.py`: one segment, as in Sentry
                    elif p.startswith("/", self.i):
                        # `**/` also matches no directory at all.
                        self.i += 1
                        parts.append("(?:.*/)?")
                    else:
                        parts.append(".*")
                else:
                    self.i += 1
                    parts.append("[^/]*" if self.path else ".*")
            elif ch == "?":
                self.i += 1
                parts.append("[^/]" if self.path else ".")
            elif ch == "[":
                parts.append(self.char_class())
            elif ch == "{":
                parts.append(self.alternatives())
            elif ch == "}" and not stop_at_brace:
                raise GlobError("'}' without a matching '{' (escape it as \\})", self.i)
            else:
                parts.append(_literal(ch))
                self.i += 1
        return "".join(parts)

    def whole_segment(self, start: int, in_braces: bool) -> bool:
        """Whether the `**` at `self.i` is a whole path segment (Sentry's `**` rule): at the
        start of the pattern or of an alternative and before `/` or the end, or after `/`
        and before `/`, the end, or the end of an alternative."""
        after = self.p[self.i + 2 : self.i + 3]
        if self.i == start:
            return after in ("", "/")
        if self.p[self.i - 1] != "/":
            return False
        return after in ("", "/") or (in_braces and after in (",", "}"))

    def alternatives(self) -> str:
        start = self.i
        self.i += 1
        options: list[str] = []
        while True:
            options.append(self.sequence(stop_at_brace=True))
            if self.i >= len(self.p):
                raise GlobError("'{' is never closed", start)
            closer = self.p[self.i]
            self.i += 1
            if closer == "}":
                return "(?:" + "|".join(options) + ")"

    def char_class(self) -> str:
        start = self.i
        p = self.p
        self.i += 1
        negate = False
        if self.i < len(p) and p[self.i] == "^" and not self.fingerprint:
            raise GlobError(
                "'[^' does not negate in Sentry's globs: write '[!...]' to negate a class"
                " (and '[\\^...]' for a class with a literal '^')",
                self.i,
            )
        if self.i < len(p) and p[self.i] in "!^":
            negate = True
            self.i += 1
        items: list[str] = []
        first = True
        while True:
            if self.i >= len(p):
                raise GlobError("'[' is never closed", start)
            ch = p[self.i]
            if ch == "]" and not first:
                self.i += 1
                break
            first = False
            if ch == "\\" and self.i + 1 < len(p):
                ch = p[self.i + 1]
                self.i += 1
            self.i += 1
            if self.i + 1 < len(p) and p[self.i] == "-" and p[self.i + 1] != "]":
                end = p[self.i + 1]
                if end == "\\" and self.i + 2 < len(p):
                    end = p[self.i + 2]
                    self.i += 1
                if ord(end) < ord(ch):
                    raise GlobError(f"range '{ch}-{end}' is reversed", self.i - 1)
                items.append(f"{_class_char(ch)}-{_class_char(end)}")
                self.i += 2
            else:
                items.append(_class_char(ch))
        if self.path and negate and not self.fingerprint:
            items.append("/")
        return "[" + ("^" if negate else "") + "".join(items) + "]"


def glob_to_regex(pattern: str, *, path: bool = False, fingerprint: bool = False) -> str:
    """Translate one glob into RE2 syntax (without anchors or flags). Raises GlobError."""
    return _Translator(pattern, path, fingerprint).run()


def validate_glob(pattern: str, *, path: bool = False, fingerprint: bool = False) -> str | None:
    """Return what is wrong with `pattern`, or None if it is a valid glob."""
    if not isinstance(pattern, str):
        return "a glob must be a string"
    if pattern == "":
        return "an empty glob never matches anything"
    try:
        glob_to_regex(pattern, path=path, fingerprint=fingerprint)
    except GlobError as exc:
        return f"invalid glob at position {exc.position + 1}: {exc}"
    return None


class _Regex:
    """An RE2 regex used for whole-string matches, through the extension's direct API
    (the `re2` module's match objects cost more than the match itself)."""

    __slots__ = ("_public", "_raw")

    def __init__(self, source: str) -> None:
        self._public = re2.compile(source, _OPTIONS)
        raw = getattr(self._public, "_regexp", None)
        self._raw = raw if raw is not None and hasattr(raw, "Match") else None

    def spans(self, text: str) -> list[tuple[int, int]] | None:
        """Group spans (in bytes; (-1, -1) for groups that did not take part), or None."""
        if self._raw is None:  # pragma: no cover - other re2 builds
            m = self._public.fullmatch(text)
            return None if m is None else [m.span(i) for i in range((m.lastindex or 0) + 1)]
        data = text.encode("utf-8", "surrogatepass")
        spans: list[tuple[int, int]] = self._raw.Match(_ANCHOR_BOTH, data, 0, len(data))
        return None if spans[0][0] < 0 else spans


_ANCHOR_BOTH = re2._re2.RE2.Anchor.ANCHOR_BOTH


class GlobSet:
    """An ordered list of globs matched in one pass; `match` names the first that matches.

    Parameters:
        patterns: the globs, in priority order. Invalid or empty patterns are skipped
            (validate them first with `validate_glob`).
        case_sensitive: match letters exactly (default: case-insensitive).
        path: path semantics (`*` stops at `/`, `**` crosses it).
        fingerprint: the class syntax of Sentry's fingerprint rules (see the module doc).
    """

    __slots__ = ("_any", "_patterns", "_which")

    def __init__(
        self,
        patterns: Iterable[str],
        *,
        case_sensitive: bool = False,
        path: bool = False,
        fingerprint: bool = False,
    ) -> None:
        kept: list[str] = []
        sources: list[str] = []
        for pattern in patterns:
            if not pattern:
                continue
            try:
                sources.append(glob_to_regex(pattern, path=path, fingerprint=fingerprint))
            except GlobError:
                continue
            kept.append(pattern)
        self._patterns = tuple(kept)
        self._any: _Regex | None = None
        self._which: _Regex | None = None
        if sources:
            flags = "(?s)" if case_sensitive else "(?si)"
            # One regex answers "does any match" (fast, no captures); the second,
            # with a group per pattern, runs only on a hit to say which one.
            self._any = _Regex(flags + "(?:" + "|".join(sources) + ")")
            if len(sources) > 1:
                self._which = _Regex(flags + "(?:" + "|".join(f"({s})" for s in sources) + ")")

    @property
    def patterns(self) -> tuple[str, ...]:
        return self._patterns

    def __bool__(self) -> bool:
        return self._any is not None

    def __repr__(self) -> str:
        return f"GlobSet({list(self._patterns)!r})"

    def match(self, value: str | None) -> str | None:
        """The first pattern that matches all of `value`, or None."""
        if self._any is None or not value or self._any.spans(value) is None:
            return None
        if self._which is None:
            return self._patterns[0]
        spans = self._which.spans(value) or []
        for index, span in enumerate(spans[1:]):
            if span[0] >= 0:
                return self._patterns[index]
        return None  # pragma: no cover - both regexes agree

    def matches(self, value: str | None) -> bool:
        if self._any is None or not value:
            return False
        return self._any.spans(value) is not None
