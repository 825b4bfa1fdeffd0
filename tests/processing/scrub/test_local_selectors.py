"""Local and keyed policies agree with the general path.

A policy whose applications all use selectors such as `$string`, `$message` or
`!$number` finds its rules per schema node and value type, and walks without
tracking paths (`Policy.local`). A policy whose selectors all end in a key
(`extra.a`, `$http.headers.x-api-key`, safe fields and pseudonymized fields such as
`user.id`) tracks paths but takes the per-value path only under those keys
(`Policy.keyed`). The same policy plus a safe field that never matches (`$binary`)
takes the general per-value path everywhere. On any payload both must give the same
bytes, `_meta` remarks and report rows.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

from relay.processing.scrub import compile_scrubber
from tests.processing.scrub.conftest import cfg
from tests.processing.scrub.test_fast_equivalence import _scrub, payloads

RULES: dict[str, Any] = {
    "digits": {
        "type": "pattern",
        "pattern": r"[0-9]{2,}",
        "redaction": {"method": "replace", "text": "[num]"},
    },
    "hello": {"type": "pattern", "pattern": "(?i)hello|bob", "redaction": {"method": "mask"}},
    "word": {"type": "pattern", "pattern": r"wor(ld)", "redaction": {"method": "remove"}},
}

APPLICATIONS: list[dict[str, list[str]]] = [
    {"$string": ["digits"]},
    {"$string": ["digits", "hello"], "$message": ["word"]},
    {"$message": ["hello"], "$string": ["@email"]},
    {"$number": ["@anything:remove"]},
    {"$boolean || $number": ["@anything:remove"], "$string": ["@ip"]},
    {"$object": ["@anything:remove"]},
    {"$array": ["@anything:remove"], "$string": ["word"]},
    {"!$string": ["@anything:remove"]},
    {"$string && !$message": ["@password"]},
    {"$error || $frame || $http": ["@anything:remove"]},
    {"$string": ["@anything:replace"]},
    {"$datetime": ["@anything:remove"], "$logentry": ["@anything:remove"]},
    {"$object || $array || $string": ["digits"]},
]


def _pair(applications: dict[str, list[str]], **extra: Any) -> tuple[Any, Any]:
    config = {"rules": RULES, "applications": applications}
    local = compile_scrubber(cfg(pii_config=config, **extra))
    general = compile_scrubber(cfg(pii_config=config, safe_fields=["$binary"], **extra))
    return local, general


PAIRS = [_pair(apps) for apps in APPLICATIONS]
QUIET = [_pair(apps, meta=False) for apps in APPLICATIONS[:3]]
#: Local policies with safe keys (exempt from the denylist and detectors, not from rules).
SAFE_KEYS = ["note", "a", "password", "value"]
SAFE_PAIRS = [
    (
        compile_scrubber(
            cfg(pii_config={"rules": RULES, "applications": apps}, safe_fields=SAFE_KEYS)
        ),
        compile_scrubber(
            cfg(
                pii_config={"rules": RULES, "applications": apps},
                safe_fields=[*SAFE_KEYS, "$binary"],
            )
        ),
    )
    for apps in (APPLICATIONS[0], APPLICATIONS[3], APPLICATIONS[5], APPLICATIONS[8])
]

#: Keyed policies: applications, safe fields and pseudonymized fields whose selectors all
#: end in a key (keys of the payloads drawn by `payloads`).
KEYED: list[dict[str, Any]] = [
    {"pii_config": {"rules": RULES, "applications": {"extra.a": ["digits"]}}},
    {"pii_config": {"rules": RULES, "applications": {"a": ["digits"], "note": ["hello"]}}},
    {"pii_config": {"rules": RULES, "applications": {"**.value": ["digits"]}}},
    {"pii_config": {"rules": RULES, "applications": {"$frame.vars.a || extra.note": ["word"]}}},
    {"pii_config": {"rules": RULES, "applications": {"password": ["@anything:replace"]}}},
    {"pii_config": {"rules": RULES, "applications": {"key && $string": ["hello"]}}},
    {"pii_config": {"rules": RULES, "applications": {"$http.headers.a": ["@anything:remove"]}}},
    {"pii_config": {"rules": RULES, "applications": {"extra.*.a": ["@anything:remove"]}}},
    {"safe_fields": ["extra.a", "$frame.vars.password"]},
    {"safe_fields": ["extra.password", "contexts.trace.a"], "sensitive_fields": ["note"]},
    {"pseudonymize": {"fields": ["user.id", "extra.a", "$user.email"], "key": "k"}},
    {
        "pseudonymize": {"fields": ["a"], "key": "k"},
        "safe_fields": ["extra.value"],
        "pii_config": {"rules": RULES, "applications": {"note": ["digits"]}},
    },
    # With local applications too: their rules apply everywhere, as in a local policy.
    {"pii_config": {"rules": RULES, "applications": {"$string": ["digits"], "a": ["hello"]}}},
    {
        "safe_fields": ["extra.a"],
        "pii_config": {"rules": RULES, "applications": {"$string": ["word"]}},
    },
    {
        "pseudonymize": {"fields": ["user.id"], "key": "k"},
        "pii_config": {
            "rules": RULES,
            "applications": {"$number || $boolean": ["@anything:remove"], "$message": ["hello"]},
        },
    },
    {
        "pii_config": {
            "rules": RULES,
            "applications": {"$object": ["@anything:remove"], "extra.a": ["digits"]},
        }
    },
    # Selectors that end in a wildcard or an index need a key on a container above.
    {"pii_config": {"rules": RULES, "applications": {"$frame.vars.**": ["digits"]}}},
    {
        "pii_config": {
            "rules": RULES,
            "applications": {"extra.*": ["@anything:remove"], "a": ["hello"]},
        }
    },
    {"pii_config": {"rules": RULES, "applications": {"values.0 || attributes.*": ["digits"]}}},
    {"pii_config": {"rules": RULES, "applications": {"data.** && $string": ["word"]}}},
    {"pii_config": {"rules": RULES, "applications": {"attributes.**": ["digits"]}}},
    {"safe_fields": ["extra.**"], "pseudonymize": {"fields": ["headers.*"], "key": "k"}},
    {
        "safe_fields": ["contexts.*"],
        "pii_config": {
            "rules": RULES,
            "applications": {"$string": ["digits"], "tags.**": ["hello"]},
        },
    },
    {
        "pii_config": {
            "rules": RULES,
            "applications": {"$object || $string": ["digits"], "a": ["word"]},
        }
    },
    # `**` alone: pii "true", at any depth (the root counts as a state, as in Sentry).
    {"pii_config": {"rules": RULES, "applications": {"**": ["digits"]}}},
    {"pii_config": {"rules": RULES, "applications": {"**": ["hello"], "extra.a": ["word"]}}},
    {
        "pii_config": {
            "rules": RULES,
            "applications": {"$string && !**": ["digits"], "!**": ["word"]},
        }
    },
    {
        "safe_fields": ["extra.a"],
        "pii_config": {"rules": RULES, "applications": {"** || $number": ["@anything:remove"]}},
    },
]


def _keyed_pair(config: dict[str, Any]) -> tuple[Any, Any]:
    keyed = compile_scrubber(cfg(**config))
    safe = [*config.get("safe_fields", []), "$binary"]
    general = compile_scrubber(cfg(**{**config, "safe_fields": safe}))
    return keyed, general


KEYED_PAIRS = [_keyed_pair(config) for config in KEYED]


@pytest.mark.parametrize("index", range(len(PAIRS)), ids=[str(a) for a in APPLICATIONS])
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=payloads())
def test_local_policies_agree_with_the_general_path(
    index: int, case: tuple[dict[str, Any], str]
) -> None:
    local, general = PAIRS[index]
    assert local.policy.local and not local.policy.tracks_paths
    assert general.policy.tracks_paths and not general.policy.local
    payload, item_type = case
    for _ in range(2):  # the second time from the policies' caches
        for report in (True, False):
            assert _scrub(local, payload, item_type, report) == _scrub(
                general, payload, item_type, report
            )


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=payloads())
def test_local_policies_without_meta_agree(case: tuple[dict[str, Any], str]) -> None:
    payload, item_type = case
    for local, general in QUIET:
        for report in (True, False):
            assert _scrub(local, payload, item_type, report) == _scrub(
                general, payload, item_type, report
            )


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=payloads())
def test_local_policies_with_safe_keys_agree(case: tuple[dict[str, Any], str]) -> None:
    payload, item_type = case
    for local, general in SAFE_PAIRS:
        assert local.policy.local and not general.policy.local
        for report in (True, False):
            assert _scrub(local, payload, item_type, report) == _scrub(
                general, payload, item_type, report
            )


@pytest.mark.parametrize("index", range(len(KEYED)), ids=[str(c) for c in KEYED])
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=payloads())
def test_keyed_policies_agree_with_the_general_path(
    index: int, case: tuple[dict[str, Any], str]
) -> None:
    keyed, general = KEYED_PAIRS[index]
    assert keyed.policy.keyed and not general.policy.keyed and general.policy.tracks_paths
    payload, item_type = case
    for _ in range(2):
        for report in (True, False):
            assert _scrub(keyed, payload, item_type, report) == _scrub(
                general, payload, item_type, report
            )


def test_path_selectors_keep_the_general_path() -> None:
    for applications in ({"extra.a": ["digits"]}, {"**": ["digits"]}, {"$frame.vars": ["hello"]}):
        scrubber = compile_scrubber(cfg(pii_config={"rules": RULES, "applications": applications}))
        assert scrubber.policy.tracks_paths and not scrubber.policy.local
    for applications in (
        {"$frame.**": ["digits"]},
        {"$frame.*": ["hello"]},
        {"!extra.a": ["word"]},
    ):
        scrubber = compile_scrubber(cfg(pii_config={"rules": RULES, "applications": applications}))
        assert not scrubber.policy.keyed
    mixed = {"$string": ["digits"], "extra.a": ["hello"]}
    assert compile_scrubber(
        cfg(pii_config={"rules": RULES, "applications": mixed})
    ).policy.tracks_paths
    safe_path = compile_scrubber(
        cfg(
            pii_config={"rules": RULES, "applications": {"$string": ["digits"]}},
            safe_fields=["extra.a"],
        )
    )
    assert safe_path.policy.tracks_paths and not safe_path.policy.local


def test_a_string_rule_redacts_everywhere_it_would_on_the_general_path() -> None:
    local, general = _pair({"$string": ["digits"]})
    event = {
        "message": "order 12345",
        "extra": {"a": "id 42", "n": 7, "list": ["x 99", {"k": "v 100"}]},
        "exception": {"values": [{"type": "E", "value": "code 500"}]},
        "logentry": {"message": "took 250 ms"},
    }
    out, rows = _scrub(local, event, "event", True)
    assert (out, rows) == _scrub(general, event, "event", True)
    for secret in (b"12345", b"42", b"99", b"100", b"500", b"250"):
        assert secret not in out.split(b'"_meta"')[0]
    assert b"[num]" in out and len(rows) >= 6


def test_keyed_selectors_reach_attribute_values_again_and_again() -> None:
    """Attributes take the fast loop under a keyed policy unless a selector ends in
    `value`; a name seen before (so known plain) must not let a value past a rule."""
    log = {
        "version": 2,
        "items": [
            {
                "body": "took 250 ms",
                "attributes": {
                    "a": {"value": "x 12345", "type": "string"},
                    "n": {"value": 42, "type": "integer"},
                    "note": "bob 77",
                },
            }
        ],
    }
    for config in (
        {"pii_config": {"rules": RULES, "applications": {"**.value": ["digits"]}}},
        {"pii_config": {"rules": RULES, "applications": {"note": ["hello"], "a": ["digits"]}}},
        {"pii_config": {"rules": RULES, "applications": {"attributes.**": ["digits"]}}},
        {"pii_config": {"rules": RULES, "applications": {"items.** && $string": ["digits"]}}},
    ):
        keyed, general = _keyed_pair(config)
        assert keyed.policy.keyed
        for _ in range(3):
            assert _scrub(keyed, log, "log", True) == _scrub(general, log, "log", True)
    keyed, _ = _keyed_pair(KEYED[2])
    for _ in range(2):
        out = _scrub(keyed, log, "log", False)[0]
        assert b"12345" not in out and b"x [num]" in out


def test_path_keys_name_what_a_selector_needs_of_a_path() -> None:
    from relay.processing.scrub.selectors import parse_selector, path_keys

    def keys(text: str) -> tuple[set[str], set[str]] | None:
        found = path_keys(parse_selector(text))
        return None if found is None else (set(found[0]), set(found[1]))

    assert keys("extra.a") == ({"a"}, set())
    assert keys("$http.headers.X-Api-Key") == ({"x-api-key"}, set())
    assert keys("$frame.vars.**") == (set(), {"vars"})
    assert keys("exception.values.0") == (set(), {"values"})
    assert keys("a.**.b.*") == (set(), {"b"})
    assert keys("a || b.*") == ({"a"}, {"b"})
    assert keys("$string && extra.*") == (set(), {"extra"})
    for general in ("**", "$frame.*", "!a", "a || **", "$string && $frame.0"):
        assert keys(general) is None, general


def test_rules_memo_is_bounded() -> None:
    from relay.processing.scrub.cache import RulesMemo

    memo = RulesMemo(max_entries=3, max_chars=100, max_len=10)
    memo.put("clean", None)
    memo.put("dirty 12", ("dirty [num]", (("digits", "replace", (6, 11)),)))
    memo.put("far too long a string", None)  # longer than max_len: not kept
    assert memo.clean == {"clean"} and set(memo.done) == {"dirty 12"}
    memo.put("third", None)
    memo.put("fourth", None)  # over max_entries: emptied, then refilled
    assert memo.clean == {"fourth"} and not memo.done
    memo.put("x" * 10, ("y" * 95, ()))  # over max_chars with what is held: emptied first
    assert not memo.clean and set(memo.done) == {"x" * 10} and memo.chars == 105
