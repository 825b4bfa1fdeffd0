"""JSON nested deeper than the walker goes, walked in pieces.

Replay recordings hold the page's DOM as nested JSON (rrweb snapshots), legitimately
deeper than the envelope's depth limit. The walker recurses once per level and orjson
writes at most 254 levels, so such a payload is cut, without recursion, into pieces
at most `PIECE_DEPTH` levels deep: a container that deep below its piece's root is
replaced by a placeholder string and becomes a piece of its own. Each piece is walked
with the item type's schema as a payload of its own: the key denylist, IP keys, the
value detectors and rules whose selectors need no keys above the piece apply as
everywhere. The pieces are then serialized and put back in place of their
placeholders, deepest first. A piece whose placeholder the walk filtered or removed
(it sat under a denylisted key) is left out with it.

Placeholders are strings of private-use characters that the payload does not hold;
a payload that holds all the candidates cannot be walked (`Unreadable`).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import orjson

from relay.processing.scrub.content import Unreadable

if TYPE_CHECKING:
    from relay.processing.scrub.scrubber import Scrubber
    from relay.processing.scrub.walker import Redaction

#: Levels per piece: well within the walker's recursion and orjson's 254.
PIECE_DEPTH = 64
#: The largest payload walked in pieces (about two seconds of the event loop at most on
#: the benchmark host); a deeper one of more bytes is `Unreadable`, so dropped.
MAX_DEEP_BYTES = 1024 * 1024
#: First code points of the placeholder alphabets tried: the mark, then ten digits.
_BASES = (0xE000, 0xE100, 0xF000, 0xF100)

#: Where a container sits: (the parent's link, its key or index), None for the root.
_Link = tuple[Any, str | int] | None


def walk_deep(
    scrubber: Scrubber, data: Any, raw: bytes, item_type: str, index: int, want: bool
) -> tuple[bytes, list[Redaction]]:
    """Walk `data` (parsed from the JSON text `raw`) in pieces; its new JSON text and the
    redactions (`want`: else none), with paths from the payload's root. Raises
    `Unreadable` when `raw` is over `MAX_DEEP_BYTES`."""
    if len(raw) > MAX_DEEP_BYTES:
        raise Unreadable(
            f"nested deeper than the depth limit and larger than {MAX_DEEP_BYTES // 1024} KiB"
        )
    base = _free_base(raw)
    pieces: list[Any] = [data]
    links: list[_Link] = [None]
    _cut(data, base, pieces, links, want)
    redactions: list[Redaction] = []
    for piece, link in zip(pieces, links, strict=True):
        _, found = scrubber.walk_payload(piece, item_type, item=index, report=want)
        if found and link is not None:
            prefix = _path(link)
            found = [r._replace(path=f"{prefix}.{r.path}") for r in found]
        redactions += found
    return _join(pieces, base), redactions


def _free_base(raw: bytes) -> int:
    """A placeholder alphabet none of whose characters `raw` holds, raw or escaped."""
    lowered = raw.lower()
    for base in _BASES:
        chars = [chr(base + i) for i in range(11)]
        if not any(c.encode() in raw or f"\\u{ord(c):04x}".encode() in lowered for c in chars):
            return base
    raise Unreadable("holds every placeholder character the deep walk can use")


def _placeholder(base: int, number: int) -> str:
    return chr(base) + "".join(chr(base + 1 + int(d)) for d in str(number)) + chr(base)


def _cut(data: Any, base: int, pieces: list[Any], links: list[_Link], want: bool) -> None:
    """Replace every container `PIECE_DEPTH` levels below its piece's root by a
    placeholder, appending it to `pieces` (and where it sat to `links`)."""
    stack: list[tuple[Any, int, _Link]] = [(data, 1, None)]
    while stack:
        node, depth, link = stack.pop()
        entries = list(node.items()) if isinstance(node, dict) else list(enumerate(node))
        for key, value in entries:
            if not isinstance(value, dict | list):
                continue
            here: _Link = (link, key) if want else None
            if depth < PIECE_DEPTH:
                stack.append((value, depth + 1, here))
                continue
            node[key] = _placeholder(base, len(pieces))
            pieces.append(value)
            links.append(here)
            stack.append((value, 1, here))


def _path(link: _Link) -> str:
    keys: list[str] = []
    while link is not None:
        link, key = link
        keys.append(str(key))
    return ".".join(reversed(keys))


def _join(pieces: list[Any], base: int) -> bytes:
    """The JSON text of `pieces[0]` with every placeholder left in it replaced by its
    piece's text, built deepest piece first."""
    digits = [chr(base + 1 + d).encode() for d in range(10)]
    mark = re.escape(chr(base).encode())
    alternatives = b"|".join(re.escape(d) for d in digits)
    pattern = re.compile(b'"' + mark + b"((?:" + alternatives + b")+)" + mark + b'"')
    width = len(digits[0])

    def number(found: bytes) -> int:
        return int(
            "".join(str(digits.index(found[i : i + width])) for i in range(0, len(found), width))
        )

    texts: dict[int, bytes] = {}
    for n in range(len(pieces) - 1, -1, -1):
        text = orjson.dumps(pieces[n])
        if texts:
            text = pattern.sub(lambda m: texts.pop(number(m.group(1)), b"null"), text)
        texts[n] = text
    return texts[0]
