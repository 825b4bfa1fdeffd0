"""`json_exceeds_depth` on bytes agrees with `exceeds_depth` on the parsed value."""

from __future__ import annotations

import json
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.protocol.envelope import MAX_JSON_DEPTH, exceeds_depth, json_exceeds_depth

#: Strings rich in what could confuse a bytes-level reading of JSON.
_TRICKY = st.text(alphabet=st.sampled_from('[]{}"\\/ ,:abé\n\t\x00\u2028'), max_size=12)
_LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    _TRICKY,
)
_JSON = st.recursive(
    _LEAVES,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(_TRICKY, inner, max_size=4)
    ),
    max_leaves=60,
)


def _chain(depth: int, leaf: Any) -> Any:
    for i in range(depth):
        leaf = [leaf] if i % 2 else {'k[\\"': leaf, "x": "]}"}
    return leaf


def _encodings(value: Any) -> list[bytes]:
    """Compact, ASCII-escaped and indented JSON (`json`: orjson stops at 255 levels)."""
    return [
        json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode(),
        json.dumps(value).encode(),
        json.dumps(value, ensure_ascii=False, indent=1).encode(),
    ]


@settings(max_examples=400, deadline=None)
@given(_JSON, st.integers(min_value=0, max_value=8))
def test_agrees_with_exceeds_depth(value: Any, limit: int) -> None:
    for raw in _encodings(value):
        assert json_exceeds_depth(raw, limit) == exceeds_depth(orjson.loads(raw), limit)


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=0, max_value=400), _JSON)
def test_agrees_on_deep_chains(depth: int, leaf: Any) -> None:
    value = _chain(depth, leaf)
    for raw in _encodings(value):
        for limit in (MAX_JSON_DEPTH, depth, max(0, depth - 1)):
            assert json_exceeds_depth(raw, limit) == exceeds_depth(orjson.loads(raw), limit)


def test_brackets_inside_strings_do_not_count() -> None:
    raw = orjson.dumps({"a": "[" * 500 + '\\"{' * 300})
    assert not json_exceeds_depth(raw, MAX_JSON_DEPTH)
    assert json_exceeds_depth(json.dumps(_chain(MAX_JSON_DEPTH + 1, 1)).encode(), MAX_JSON_DEPTH)
    assert not json_exceeds_depth(json.dumps(_chain(MAX_JSON_DEPTH, 1)).encode(), MAX_JSON_DEPTH)
