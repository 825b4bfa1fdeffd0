"""The fast paths give the same answers as the slow ones.

The per-string result cache, skipped dead subtrees and `report=False` are speedups
only: a warm scrubber, a cold one and one without a report must produce the same
bytes, the same `_meta` and (when asked) the same report.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import orjson
import pytest

from relay.processing.scrub import compile_scrubber
from relay.processing.scrub.cache import ScanCache
from relay.protocol.envelope import parse_envelope
from tests.processing.scrub.conftest import OFF, cfg
from tests.support.corpus import ENVELOPES, PLANTED


def _first_item(path: Path) -> tuple[dict[str, Any], str]:
    item = parse_envelope(path.read_bytes()).items[0]
    return orjson.loads(item.payload), item.type


@pytest.mark.parametrize("path", ENVELOPES, ids=lambda p: p.name)
def test_warm_cold_and_no_report_agree(path: Path) -> None:
    event, item_type = _first_item(path)
    cold_event = copy.deepcopy(event)
    cold = compile_scrubber(None).scrub_event(cold_event, item_type)

    scrubber = compile_scrubber(None)
    scrubber.scrub_event(copy.deepcopy(event), item_type)  # fills the cache
    assert len(scrubber.policy.cache) > 0 or not cold
    warm_event = copy.deepcopy(event)
    warm = scrubber.scrub_event(warm_event, item_type)
    quiet_event = copy.deepcopy(event)
    quiet = scrubber.scrub_event(quiet_event, item_type, report=False)

    assert warm_event == cold_event
    assert quiet_event == cold_event
    assert warm == cold
    assert quiet == []
    assert orjson.dumps(warm_event) == orjson.dumps(cold_event)
    assert not any(s in orjson.dumps(warm_event) for s in PLANTED)


@pytest.mark.parametrize("path", ENVELOPES, ids=lambda p: p.name)
def test_envelope_without_report_is_scrubbed_the_same(path: Path) -> None:
    scrubber = compile_scrubber(None)
    full_env = parse_envelope(path.read_bytes())
    full = scrubber.scrub_envelope(full_env)
    quiet_env = parse_envelope(path.read_bytes())
    quiet = scrubber.scrub_envelope(quiet_env, report=False)
    assert quiet_env.serialize() == full_env.serialize()
    assert quiet.redactions == []
    assert quiet.changed_items == full.changed_items
    assert quiet.header_changed == full.header_changed
    assert [d.index for d in quiet.dropped] == [d.index for d in full.dropped]
    assert not any(s in quiet_env.serialize() for s in PLANTED)


def test_cache_is_per_policy() -> None:
    text = "mail bob@example.com from 10.1.2.3"
    emails_off = compile_scrubber(cfg(emails=False))
    strict = compile_scrubber(None)
    assert emails_off.scrub_text(text) == "mail bob@example.com from [ip]"
    assert strict.scrub_text(text) == "mail [email] from [ip]"
    assert emails_off.scrub_text(text) == "mail bob@example.com from [ip]"


def test_cached_results_are_reused_and_stay_correct() -> None:
    scrubber = compile_scrubber(None)
    event = {"message": "token=abcdef123456 for bob@example.com", "extra": {"a": "plain text"}}
    for _ in range(3):
        payload = copy.deepcopy(event)
        red = scrubber.scrub_event(payload)
        assert payload["message"] == "token=[Filtered] for [email]"
        assert payload["extra"] == {"a": "plain text"}
        assert [(r.path, r.rule) for r in red] == [
            ("message", "@password:filter"),
            ("message", "@email:replace"),
        ]
        assert payload["_meta"]["message"][""] == {
            "rem": [["@password:filter", "s", 6, 16], ["@email:replace", "s", 21, 28]],
            "len": 38,
        }
    assert scrubber.policy.cache.data["plain text"] is None


def test_cache_bounds() -> None:
    cache = ScanCache(max_entries=3, max_chars=100, max_len=10)
    cache.put("a" * 11, None)
    assert len(cache) == 0
    for word in ("one", "two", "six"):
        cache.put(word, None)
    assert len(cache) == 3
    cache.put("ten", None)
    assert len(cache) == 1 and "ten" in cache.data
    big = ScanCache(max_entries=100, max_chars=20, max_len=10)
    big.put("0123456789", ("[x]", (("r", 0, 3),), (("r", "s", 0, 3),)))
    assert big.chars == 13
    big.put("abcdefghij", None)
    assert len(big) == 1 and big.chars == 10
    off = ScanCache(max_entries=0)
    off.put("abc", None)
    assert len(off) == 0


def test_disabled_cache_still_scrubs() -> None:
    scrubber = compile_scrubber(None)
    scrubber.policy.cache = ScanCache(max_entries=0)
    for _ in range(2):
        event = {"message": "card 4111 1111 1111 1111", "extra": {"x": "203.0.113.77"}}
        scrubber.scrub_event(event)
        assert event["message"] == "card [Filtered]"
        assert event["extra"]["x"] == "[ip]"


def test_rule_and_default_detector_on_one_string_both_apply() -> None:
    """A PII-config rule's change survives the default detectors' rewrite of the same value."""
    section = cfg(
        pii_config={
            "rules": {
                "order": {
                    "type": "pattern",
                    "pattern": "[0-9]{5}",
                    "redaction": {"method": "mask"},
                }
            },
            "applications": {"$string": ["order"]},
        }
    )
    scrubber = compile_scrubber(section)
    for _ in range(2):  # cold, then warm
        event = {"message": "order 12345 by bob@example.com"}
        red = scrubber.scrub_event(event)
        assert event["message"] == "order ***** by [email]"
        assert [(r.path, r.rule, r.method) for r in red] == [
            ("message", "order", "mask"),
            ("message", "@email:replace", "replace"),
        ]
        assert event["_meta"]["message"][""]["rem"] == [
            ["order", "m", 6, 11],
            ["@email:replace", "s", 15, 22],
        ]
        assert event["_meta"]["message"][""]["len"] == 30


@pytest.mark.parametrize("key", ["", "rem", "len"])
def test_keys_that_look_like_meta_do_not_break_remarks(key: str) -> None:
    scrubber = compile_scrubber(None)
    event = {"extra": {key: "bob@example.com", "x": {key: {key: "10.0.0.1", "": "a@b.io"}}}}
    scrubber.scrub_event(event)
    out = orjson.dumps(event)
    assert b"bob@example.com" not in out
    assert b"10.0.0.1" not in out
    assert b"a@b.io" not in out


def test_never_pii_subtrees_are_left_alone_but_ip_fields_inside_are_removed() -> None:
    scrubber = compile_scrubber(None)
    event = {
        "modules": {"bob@example.com": "1.2.3.4"},
        "sdk": {
            "name": "sentry.python",
            "client_ip": "203.0.113.9",
            "packages": [{"name": "token=abc", "version": "10.0.0.1"}],
        },
        "extra": {"where": "10.0.0.1"},
    }
    red = scrubber.scrub_event(event)
    assert event["modules"] == {"bob@example.com": "1.2.3.4"}
    assert event["sdk"]["client_ip"] is None
    assert event["sdk"]["packages"] == [{"name": "token=abc", "version": "10.0.0.1"}]
    assert event["extra"]["where"] == "[ip]"
    assert sorted(r.path for r in red) == ["extra.where", "sdk.client_ip"]


def test_scrub_text_report_cold_and_warm() -> None:
    scrubber = compile_scrubber(None)
    text = "GET https://user:pa55@api.example.com/?token=eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln"
    first = scrubber.scrub_text_report(text)
    second = scrubber.scrub_text_report(text)
    assert first == second
    assert "pa55" not in first[0] and "eyJ" not in first[0]
    assert [rule for rule, _ in first[1]] == ["@urlauth:legacy", "@jwt:filter"]


def test_policy_without_value_detectors_skips_scanning() -> None:
    scrubber = compile_scrubber(cfg(**OFF))
    event = {"message": "bob@example.com 10.0.0.1", "extra": {"password": "x"}}
    assert scrubber.scrub_event(event) == []
    assert event == {"message": "bob@example.com 10.0.0.1", "extra": {"password": "x"}}
    assert len(scrubber.policy.cache) == 0
