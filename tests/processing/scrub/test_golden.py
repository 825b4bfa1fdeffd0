"""Golden pairs: fixtures/<name>.input.json (config, item type, payload) -> <name>.expected.json."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from relay.processing.scrub import compile_scrubber, validate_scrubbing
from tests.processing.scrub.conftest import cfg

FIXTURES = Path(__file__).parent / "fixtures"
NAMES = sorted(p.name[: -len(".input.json")] for p in FIXTURES.glob("*.input.json"))


def _load(name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    case = json.loads((FIXTURES / f"{name}.input.json").read_text())
    expected = json.loads((FIXTURES / f"{name}.expected.json").read_text())
    return case, expected


def test_every_fixture_has_an_expected_file() -> None:
    assert len(NAMES) >= 40
    for name in NAMES:
        assert (FIXTURES / f"{name}.expected.json").exists(), name


@pytest.mark.parametrize("name", NAMES)
def test_golden(name: str) -> None:
    case, expected = _load(name)
    section = cfg(**case["config"])
    assert validate_scrubbing(section) == []
    payload = copy.deepcopy(case["payload"])
    redactions = compile_scrubber(section).scrub_event(payload, case["item_type"])
    assert payload == expected["payload"]
    assert [[r.path, r.rule, r.method] for r in redactions] == expected["redactions"]


@pytest.mark.parametrize(
    ("rule", "text", "out"),
    [
        # Sentry's documented examples.
        ("@ip", "before 127.0.0.1 after", "before [ip] after"),
        (
            "@ip:hash",
            "before 127.0.0.1 after",
            "before AE12FE3B5F129B5CC4CDD2B136B7B7947C4D2741 after",
        ),
        ("@ip", "[2001:0db8:85a3:0000:0000:8a2e:0370:7334]", "[[ip]]"),
        ("@ip", "before ::1 after", "before [ip] after"),
        ("@ip", "foo::1", "foo::1"),
        ("@creditcard", "4111-1111-1111-1111", "[creditcard]"),
        ("@creditcard:mask", "John 4111111111111111!", "John ****************!"),
        ("@email", "John Appleseed <john@appleseed.com>", "John Appleseed <[email]>"),
        (
            "@email:mask",
            "John Appleseed <john@appleseed.com>",
            "John Appleseed <******************>",
        ),
        (
            "@email:hash",
            "John Appleseed <john@appleseed.com>",
            "John Appleseed <33835528AC0FFF1B46D167C35FEAAA6F08FD3F46>",
        ),
        ("@mac", "ether 4a:00:04:10:9b:50", "ether *****************"),
        ("@mac:replace", "ether 4a:00:04:10:9b:50", "ether [mac]"),
        ("@uuid:replace", "user id ceee0822-ed8f-4622-b2a3-789e73e75cd1", "user id [uuid]"),
        ("@imei", "before 356938035643809 after", "before [imei] after"),
        ("@iban", "some iban: DE89370400440532013000!", "some iban: [iban]!"),
        ("@usssn", "my SSN is 078-05-1120", "my SSN is ***********"),
        ("@userpath", "C:\\Users\\mitsuhiko\\Desktop", "C:\\Users\\[user]\\Desktop"),
        (
            "@userpath:replace",
            "File in /Users/mitsuhiko/Development/sentry-stripping",
            "File in /Users/[user]/Development/sentry-stripping",
        ),
        ("@urlauth", "https://username:password@example.com/", "https://[auth]@example.com/"),
        (
            "@urlauth:hash",
            "https://username:password@example.com/",
            "https://2F82AB8A5E3FAD655B5F81E3BEA30D2A14FEF2AC@example.com/",
        ),
        ("@bearer", "Bearer eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9", "Bearer [token]"),
        ("@anything:mask", "secret", "******"),
    ],
)
def test_builtin_rule_examples(rule: str, text: str, out: str) -> None:
    section = cfg(
        defaults=False,
        ip_addresses=False,
        emails=False,
        secrets=False,
        meta=False,
        pii_config={"applications": {"$string": [rule]}},
    )
    event: dict[str, Any] = {"extra": {"v": text}}
    compile_scrubber(section).scrub_event(event)
    assert event["extra"]["v"] == out
