"""`_meta` value objects are shared between payloads and never changed in place.

A warm scrubber links the same remarks object into every payload where the same string
(or the same kind of change) occurs. Whatever the scrubber does to one payload's `_meta`
later (a second scrub, merging with remarks the payload brought) must not show up in
the next payload's `_meta`. (Callers treat `_meta` as read-only, see `scrub_event`.)
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import orjson
import pytest

from relay.processing.scrub import compile_scrubber
from relay.protocol.envelope import parse_envelope
from tests.support.corpus import ENVELOPES


def _first_item(path: Path) -> tuple[dict[str, Any], str]:
    item = parse_envelope(path.read_bytes()).items[0]
    return orjson.loads(item.payload), item.type


def _plain(obj: Any) -> Any:
    """A deep copy through JSON: no object shared with anything."""
    return orjson.loads(orjson.dumps(obj))


@pytest.mark.parametrize("path", ENVELOPES, ids=lambda p: p.name)
def test_later_changes_to_one_meta_do_not_leak(path: Path) -> None:
    event, item_type = _first_item(path)
    scrubber = compile_scrubber(None)
    first = copy.deepcopy(event)
    scrubber.scrub_event(first, item_type, report=False)
    expected = _plain(first)

    second = copy.deepcopy(event)
    scrubber.scrub_event(second, item_type, report=False)
    assert _plain(second) == expected
    # Scrubbing the output again merges new remarks into the existing `_meta`.
    scrubber.scrub_event(second, item_type, report=False)
    scrubber.scrub_event(second, item_type, report=False)

    third = copy.deepcopy(event)
    scrubber.scrub_event(third, item_type, report=False)
    assert _plain(third) == expected


def test_same_string_twice_in_one_payload_then_rescrubbed() -> None:
    scrubber = compile_scrubber(None)
    event: dict[str, Any] = {
        "extra": {"a": "mail bob@example.com now", "b": "mail bob@example.com now"},
        "user": {"ip_address": "192.0.2.1", "email": "bob@example.com"},
    }
    out = copy.deepcopy(event)
    scrubber.scrub_event(out, "event", report=False)
    meta = out["_meta"]
    assert meta["extra"]["a"] == {"": {"rem": [["@email:replace", "s", 5, 12]], "len": 24}}
    assert meta["extra"]["b"] == meta["extra"]["a"]
    assert meta["user"]["ip_address"] == {"": {"rem": [["@anything:remove", "x"]]}}
    before = _plain(out["_meta"])

    # A second pass on the output leaves the clean strings alone and finds nothing: the
    # first pass's `_meta` is now the client's, and goes.
    scrubbed = _plain(out)
    scrubber.scrub_event(out, "event", report=False)
    del scrubbed["_meta"]
    assert out == scrubbed

    again = copy.deepcopy(event)
    scrubber.scrub_event(again, "event", report=False)
    assert again["_meta"] == before


def test_remarks_replace_the_meta_the_event_brings() -> None:
    scrubber = compile_scrubber(None)
    brought = {"extra": {"a": {"": {"rem": [["!config", "s"]]}}, "z": {"": {"err": ["x"]}}}}
    event: dict[str, Any] = {"extra": {"a": "to bob@example.com"}, "_meta": brought}
    scrubber.scrub_event(event, "event", report=False)
    assert event["_meta"] == {
        "extra": {"a": {"": {"rem": [["@email:replace", "s", 3, 10]], "len": 18}}}
    }
    assert brought == {"extra": {"a": {"": {"rem": [["!config", "s"]]}}, "z": {"": {"err": ["x"]}}}}
    fresh: dict[str, Any] = {"extra": {"a": "to bob@example.com"}}
    scrubber.scrub_event(fresh, "event", report=False)
    assert fresh["_meta"] == {
        "extra": {"a": {"": {"rem": [["@email:replace", "s", 3, 10]], "len": 18}}}
    }
