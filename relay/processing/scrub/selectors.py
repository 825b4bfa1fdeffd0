"""Sentry's selector grammar: parse once, match against a walker path.

    selector := or
    or       := and (("||" | "|") and)*
    and      := not (("&&" | "&") not)*
    not      := ("!" | "~") atom | atom
    atom     := "(" or ")" | path
    path     := item ("." item)*
    item     := "$" type | "**" | "*" | index | key | "'" quoted "'"   ('' escapes ')

A path is matched from its END against the walker's path: `a.b` selects every `b`
whose parent is `a`, anywhere. `**` matches one or more items; as in Sentry, the root
counts as one, so `**` alone selects top-level fields too. `$type` matches items
whose value has that type (`$string`, `$frame`, `$http`, ...). Keys compare
case-insensitively. Sentry's PII attribute is honoured: on a field that is PII
"maybe" (file names, for example) only specific paths match, never `**` or `$string`;
a field that is never PII (event ids, timestamps) matches nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

#: Value-type names accepted after `$` (Sentry's, aliases included), mapped to the
#: canonical name the walker uses.
VALUE_TYPES: dict[str, str] = {
    "string": "string",
    "binary": "binary",
    "number": "number",
    "boolean": "boolean",
    "bool": "boolean",
    "datetime": "datetime",
    "array": "array",
    "list": "array",
    "object": "object",
    "event": "event",
    "attachments": "attachments",
    "exception": "exception",
    "error": "exception",
    "stacktrace": "stacktrace",
    "stack": "stacktrace",
    "frame": "frame",
    "request": "request",
    "http": "request",
    "user": "user",
    "logentry": "logentry",
    "message": "message",
    "thread": "thread",
    "breadcrumb": "breadcrumb",
    "span": "span",
    "sdk": "sdk",
    "minidump": "minidump",
    "heap_memory": "heap_memory",
    "stack_memory": "stack_memory",
    "replay": "replay",
    "log": "log",
    "trace_metric": "trace_metric",
}
_BASIC = frozenset({"string", "binary", "number", "boolean", "datetime", "array", "object"})
_LEGACY = {
    "freeform": "$string",
    "email": "$string",
    "sensitive": "$string",
    "text": "$string",
    "databag": "$object",
    "container": "$object",
}

#: PII attribute of a walker state (Sentry's `pii = "false" | "maybe" | "true"`).
PII_FALSE, PII_MAYBE, PII_TRUE = 0, 1, 2


class SelectorError(ValueError):
    """The selector does not parse; the message says where."""


# --- AST --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Item:
    """One path item: kind is `type`, `key`, `index`, `*` or `**`."""

    kind: str
    value: str | int | None = None


@dataclass(frozen=True, slots=True)
class PathSel:
    items: tuple[Item, ...]

    def last_key(self) -> str | None:
        last = self.items[-1]
        return last.value if last.kind == "key" and isinstance(last.value, str) else None


@dataclass(frozen=True, slots=True)
class AndSel:
    parts: tuple[Selector, ...]


@dataclass(frozen=True, slots=True)
class OrSel:
    parts: tuple[Selector, ...]


@dataclass(frozen=True, slots=True)
class NotSel:
    inner: Selector


Selector = PathSel | AndSel | OrSel | NotSel

#: One step of the walker's path: the key or index entered, and the value's types.
State = tuple[str | int, frozenset[str]]

# --- parser -----------------------------------------------------------------------------------

_KEY_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")


class _Parser:
    def __init__(self, text: str) -> None:
        self.s = text
        self.i = 0

    def error(self, msg: str) -> SelectorError:
        return SelectorError(f"{msg} at position {self.i} in {self.s!r}")

    def ws(self) -> None:
        while self.i < len(self.s) and self.s[self.i] in " \t\r\n":
            self.i += 1

    def peek(self, tok: str) -> bool:
        self.ws()
        return self.s.startswith(tok, self.i)

    def parse(self) -> Selector:
        sel = self.or_()
        self.ws()
        if self.i != len(self.s):
            raise self.error("unexpected character")
        return sel

    def or_(self) -> Selector:
        parts = [self.and_()]
        while self.peek("|"):
            self.i += 2 if self.s.startswith("||", self.i) else 1
            parts.append(self.and_())
        return parts[0] if len(parts) == 1 else OrSel(tuple(parts))

    def and_(self) -> Selector:
        parts = [self.not_()]
        while self.peek("&"):
            self.i += 2 if self.s.startswith("&&", self.i) else 1
            parts.append(self.not_())
        return parts[0] if len(parts) == 1 else AndSel(tuple(parts))

    def not_(self) -> Selector:
        if self.peek("!") or self.peek("~"):
            self.i += 1
            return NotSel(self.atom())
        return self.atom()

    def atom(self) -> Selector:
        if self.peek("("):
            self.i += 1
            inner = self.or_()
            if not self.peek(")"):
                raise self.error("expected ')'")
            self.i += 1
            return inner
        return self.path()

    def path(self) -> PathSel:
        self.ws()
        items = [self.item()]
        while self.i < len(self.s) and self.s[self.i] == ".":
            self.i += 1
            items.append(self.item())
        if sum(1 for it in items if it.kind == "**") > 1:
            raise SelectorError(f"deep wildcard used more than once in {self.s!r}")
        if len(items) == 1 and items[0].kind == "*":
            raise SelectorError(f"wildcard must be part of a path in {self.s!r}")
        return PathSel(tuple(items))

    def item(self) -> Item:
        s, i = self.s, self.i
        if s.startswith("**", i):
            self.i += 2
            return Item("**")
        if s.startswith("*", i):
            self.i += 1
            return Item("*")
        if s.startswith("$", i):
            j = i + 1
            while j < len(s) and (s[j].isalnum() or s[j] == "_"):
                j += 1
            name = s[i + 1 : j].lower()
            if name not in VALUE_TYPES:
                raise self.error(f"unknown value type ${s[i + 1 : j]}")
            self.i = j
            return Item("type", VALUE_TYPES[name])
        if s.startswith("'", i):
            j = i + 1
            out = []
            while True:
                if j >= len(s):
                    raise self.error("unterminated quoted key")
                if s[j] == "'":
                    if s.startswith("''", j):
                        out.append("'")
                        j += 2
                        continue
                    break
                out.append(s[j])
                j += 1
            self.i = j + 1
            return Item("key", "".join(out).lower())
        j = i
        while j < len(s) and s[j] in _KEY_CHARS:
            j += 1
        if j == i:
            raise self.error("expected a key, index, '*', '**' or '$type'")
        word = s[i:j]
        self.i = j
        if word.isdigit():
            return Item("index", int(word))
        return Item("key", word.lower())


def parse_selector(text: str) -> Selector:
    """Parse a selector (legacy names such as `freeform` included); raise SelectorError."""
    text = text.strip()
    if text in _LEGACY:
        text = _LEGACY[text]
    if not text:
        raise SelectorError("empty selector")
    return _Parser(text).parse()


def parse_key_or_selector(text: str) -> Selector:
    """Sentry's reading of a safe field: a selector, or else a literal key."""
    try:
        return parse_selector(text)
    except SelectorError:
        return PathSel((Item("key", text.strip().lower()),))


# --- matching -------------------------------------------------------------------------------------


def _item_matches(item: Item, pii: int, first: bool, state: State) -> bool:
    kind = item.kind
    if kind == "*":
        return True
    if kind == "**":
        return pii == PII_TRUE
    if kind == "key":
        seg = state[0]
        return isinstance(seg, str) and seg.lower() == item.value
    if kind == "index":
        return state[0] == item.value
    # value type
    if item.value not in state[1]:
        return False
    if pii == PII_TRUE:
        return True
    return item.value not in _BASIC and first


#: The root's state in `_path_matches` (the walker's path starts below it).
_ROOT: State = (None, frozenset())  # type: ignore[assignment]


def _path_matches(items: tuple[Item, ...], states: Sequence[State], pii: int) -> bool:
    n = len(states)
    if len(items) > n:
        return False
    si = n - 1
    ii = len(items) - 1
    deep = False
    while ii >= 0:
        item = items[ii]
        if not _item_matches(item, pii, ii == 0, states[si]):
            return False
        si -= 1
        ii -= 1
        if item.kind == "**":
            deep = True
            break
    if not deep:
        return True
    # Sentry counts the root as a state above the top-level fields: `**` matches those
    # too, and `*` matches the root (no key, no value type).
    if ii < 0:
        return True
    # items[0..ii] must match consecutively, starting at the first state matching items[0].
    remaining = [_ROOT, *states[: si + 1]]
    start = 0
    while start < len(remaining) and not _item_matches(items[0], pii, True, remaining[start]):
        start += 1
    if start >= len(remaining):
        return False
    k = 1
    pos = start + 1
    while k <= ii:
        if pos >= len(remaining):
            return False
        if not _item_matches(items[k], pii, k == 0, remaining[pos]):
            return False
        k += 1
        pos += 1
    return True


def matches(sel: Selector, states: Sequence[State], pii: int) -> bool:
    """Does `sel` select the value at the end of `states` (whose PII attribute is `pii`)?"""
    if pii == PII_FALSE or not states:
        return False
    if isinstance(sel, PathSel):
        return _path_matches(sel.items, states, pii)
    if isinstance(sel, AndSel):
        return all(matches(p, states, pii) for p in sel.parts)
    if isinstance(sel, OrSel):
        return any(matches(p, states, pii) for p in sel.parts)
    return not matches(sel.inner, states, pii)


def is_local(sel: Selector, *, deep: bool = False) -> bool:
    """Is `sel` decided by the value's own types and PII attribute alone?

    True for value types (`$string`, `$message`, ...) and their `&&`, `||` and `!`
    combinations: a one-item path of a type compares only the last state, so no keys,
    indexes or depth are needed to match it (see `Policy.local_rules` in the walker).
    `deep=True` also admits `**` alone, which the walker keeps apart from the value
    types (it selects any PII value below the root, whatever its depth; see
    `Policy.local_rules`).
    """
    if isinstance(sel, PathSel):
        if len(sel.items) != 1:
            return False
        kind = sel.items[0].kind
        return kind == "type" or (deep and kind == "**")
    if isinstance(sel, AndSel | OrSel):
        return all(is_local(p, deep=deep) for p in sel.parts)
    return is_local(sel.inner, deep=deep)


#: What a selector needs of a path (see `path_keys`): keys one of which is the value's own
#: last segment, and keys one of which is the segment of a container above it.
PathKeys = tuple[frozenset[str], frozenset[str]]


def path_keys(sel: Selector) -> PathKeys | None:
    """Keys without which `sel` cannot select a value: `(own, above)`, where a selected
    value's own segment is in `own` or a container above it has its segment in
    `above`; None when no key is needed (`**`, `$frame.*`, `!a`).

    A path that ends in a key needs it as the value's own segment; one that ends in a
    wildcard or an index needs its last key item on a container above (a key item
    matches one state, and every state but the last is a container's).
    """
    if isinstance(sel, PathSel):
        own_key = sel.last_key()
        if own_key is not None:
            return frozenset({own_key}), frozenset()
        keys = [i.value for i in sel.items[:-1] if i.kind == "key" and isinstance(i.value, str)]
        return (frozenset(), frozenset({keys[-1]})) if keys else None
    if isinstance(sel, OrSel):
        own: frozenset[str] = frozenset()
        above: frozenset[str] = frozenset()
        for p in sel.parts:
            found = path_keys(p)
            if found is None:
                return None
            own, above = own | found[0], above | found[1]
        return own, above
    if isinstance(sel, AndSel):
        for p in sel.parts:
            found = path_keys(p)
            if found is not None:
                return found
    return None


def last_keys(sel: Selector) -> frozenset[str] | None:
    """Keys one of which must be the last path segment for `sel` to match, or None if any."""
    if isinstance(sel, PathSel):
        key = sel.last_key()
        return frozenset({key}) if key is not None else None
    if isinstance(sel, OrSel):
        out: set[str] = set()
        for p in sel.parts:
            keys = last_keys(p)
            if keys is None:
                return None
            out |= keys
        return frozenset(out)
    if isinstance(sel, AndSel):
        for p in sel.parts:
            keys = last_keys(p)
            if keys is not None:
                return keys
        return None
    return None
