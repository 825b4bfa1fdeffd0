"""Character classes in fingerprint-rule globs, as Sentry's fingerprinting reads them:
`[^abc]` negates exactly like `[!abc]`, on every key, and a negated class may match `/`
even in the path-like keys (`path`, `package`, `release`), where `*` and `?` stop at it.

Inbound filters and sampling rules keep Sentry's other glob flavour, in which `^` is a
literal class member: there `[^...]` stays refused, and path globs' negated classes
never match `/`."""

from __future__ import annotations

from typing import Any

import pytest

from relay.config.noise import FiltersConfig, SamplingRule
from relay.processing.filters import validate_filters
from relay.processing.fingerprint import compile_fingerprinting, validate_fingerprinting
from relay.processing.glob import GlobSet
from relay.processing.sampling import validate_sampling


def matches(rule: str, event: dict[str, Any]) -> bool:
    return compile_fingerprinting(f"{rule} -> hit").match(event) is not None


def make_event(
    *, value: str = "disk full", release: str = "shop/1.4", **frame: str
) -> dict[str, Any]:
    frame = {
        "module": "app.views",
        "function": "run",
        "abs_path": "/srv/app/cli.py",
        "package": "/usr/lib/libssl.so",
        **frame,
    }
    exception = {"type": "DiskFull", "value": value, "stacktrace": {"frames": [frame]}}
    return {
        "exception": {"values": [exception]},
        "logger": "svc.a",
        "release": release,
        "tags": {"region": "eu-1"},
    }


# (key, a class holding the value's first character, a class without it); `{n}` is the
# negation. The path-like keys' patterns keep `/` out of the class, so that this test is
# about negation alone.
KEYS = [
    ("type", "[{n}Dx]*", "[{n}qz]*"),
    ("value", "[{n}dx]*", "[{n}qz]*"),
    ("message", "[{n}dx]*", "[{n}qz]*"),
    ("logger", "[{n}sx]*", "[{n}qz]*"),
    ("module", "[{n}ax]*", "[{n}qz]*"),
    ("function", "[{n}rx]*", "[{n}qz]*"),
    ("tags.region", "[{n}ex]*", "[{n}qz]*"),
    ("release", "[{n}sx]hop/*", "[{n}qz]hop/*"),
    ("path", "/[{n}sx]rv/**", "/[{n}qz]rv/**"),
    ("package", "/[{n}ux]sr/**", "/[{n}qz]sr/**"),
]


@pytest.mark.parametrize("negation", ["^", "!"])
@pytest.mark.parametrize(("key", "holding", "without"), KEYS)
def test_caret_and_bang_both_negate(key: str, holding: str, without: str, negation: str) -> None:
    holding, without = holding.format(n=negation), without.format(n=negation)
    assert validate_fingerprinting(f'{key}:"{holding}" -> x') == []
    assert not matches(f'{key}:"{holding}"', make_event())
    assert matches(f'{key}:"{without}"', make_event())
    assert matches(f'!{key}:"{holding}"', make_event())


@pytest.mark.parametrize("negation", ["^", "!"])
@pytest.mark.parametrize(
    ("rule", "field", "value", "expected"),
    [
        ('path:"/srv/app[{n}.]cli.py"', "abs_path", "/srv/app/cli.py", True),
        ('path:"/srv/app[{n}/]cli.py"', "abs_path", "/srv/app/cli.py", False),
        ('path:"/srv/app[{n}.]cli.py"', "abs_path", "\\srv\\app\\cli.py", True),
        ('package:"/usr/lib[{n}x]libssl.so"', "package", "/usr/lib/libssl.so", True),
        ('package:"**\\\\lib[{n}x]libssl.so"', "package", "C:\\lib\\libssl.so", True),
        ('release:"shop[{n}@]1.4"', "release", "shop/1.4", True),
        ('release:"shop[{n}@]1.4"', "release", "shop@1.4", False),
        ('module:"app[{n}.]views"', "module", "app/views", True),
        ('error.value:"disk[{n} ]full"', "value", "disk/full", True),
    ],
)
def test_a_negated_class_matches_a_slash(
    rule: str, field: str, value: str, expected: bool, negation: str
) -> None:
    assert matches(rule.format(n=negation), make_event(**{field: value})) is expected


def test_star_and_question_mark_still_stop_at_a_slash_in_path_keys() -> None:
    assert not matches('path:"/srv/app?cli.py"', make_event())
    assert not matches('release:"shop*1.4"', make_event(release="shop/x/1.4"))


def test_a_negated_class_ignores_case_where_the_key_does() -> None:
    assert not matches('value:"[^D]isk*"', make_event())  # error.value ignores case
    assert matches('type:"[^d]isk*"', make_event())  # error.type does not


def test_other_rules_keep_refusing_the_caret() -> None:
    assert validate_filters(FiltersConfig(releases=["1.18.[^0-4].*"])) != []
    problems = validate_sampling([SamplingRule(match={"error.type": "[^A]*"})])
    assert problems and "does not negate" in problems[0].message
    assert validate_sampling([SamplingRule(match={"error.type": "[!A]*"})]) == []
    assert not GlobSet(["app/[!a]"], path=True).matches("app//")
