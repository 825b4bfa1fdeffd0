from __future__ import annotations

import pytest

from relay.processing.glob import GlobSet, glob_to_regex, validate_glob


@pytest.mark.parametrize(
    ("pattern", "value", "expected"),
    [
        ("foo", "foo", True),
        ("foo", "FOO", True),
        ("foo", "foobar", False),
        ("foo*", "foobarblub", True),
        ("*blub", "foobarblub", True),
        ("*bar*", "foobarblub", True),
        ("*foo*", "foo\n", True),
        ("foo*bar", "foo\nbar", True),
        ("*/health", "GET /health", True),
        ("*/health", "/a/b/health", True),
        ("*/health", "/health/", False),
        ("*/health", "/healthz", False),
        ("h?llo", "hallo", True),
        ("h?llo", "hllo", False),
        ("1.18.[0-4].*", "1.18.4.2153-2aa83397b", True),
        ("1.18.[0-4].*", "1.18.5.2153-2aa83397b", False),
        ("1.18.[!0-4].*", "1.18.5.2153-2aa83397b", True),
        ("1.18.[!0-4].*", "1.18.4.2153-2aa83397b", False),
        (r"v[\^1]", "v^", True),
        (r"v[\^1]", "v2", False),
        ("v[!^]", "v^", False),
        ("v[1^]", "v^", True),
        ("[]x]", "]", True),
        ("*{timeout,timed out}*", "request timed out after 5s", True),
        ("*{timeout,timed out}*", "request TIMEOUT", True),
        ("*{timeout,timed out}*", "request failed", False),
        ("a{b,c{d,e}}f", "acef", True),
        ("a{b,c{d,e}}f", "acf", False),
        ("{,x}y", "y", True),
        (r"/api/\{org\}/event*", "/api/{org}/events", True),
        (r"/api/\{org\}/event*", r"/api/\{org\}/events", False),
        ("100% *", "100% sure", True),
        ("a.b", "axb", False),
        ("(x)+", "(x)+", True),
        ("*ünïcode*", "SOME ÜNÏCODE HERE", True),
        ("$HOME^", "$home^", True),
    ],
)
def test_glob_semantics(pattern: str, value: str, expected: bool) -> None:
    assert GlobSet([pattern]).matches(value) is expected


def test_empty_value_and_empty_pattern_never_match() -> None:
    assert GlobSet(["*"]).match("") is None
    assert GlobSet(["*"]).match(None) is None
    assert not GlobSet([""])
    assert GlobSet(["", "x"]).match("x") == "x"


def test_first_matching_pattern_is_reported() -> None:
    globs = GlobSet(["*b*", "a*", "*"])
    assert globs.match("abc") == "*b*"
    assert globs.match("axc") == "a*"
    assert globs.match("zzz") == "*"
    assert globs.patterns == ("*b*", "a*", "*")


def test_case_sensitive_option() -> None:
    assert GlobSet(["Foo*"], case_sensitive=True).match("foobar") is None
    assert GlobSet(["Foo*"], case_sensitive=True).match("Foobar") == "Foo*"


def test_path_semantics() -> None:
    globs = GlobSet(["**/my-utils/*.js"], path=True)
    assert globs.matches("/src/my-utils/a.js")
    assert globs.matches("my-utils/a.js")
    assert not globs.matches("/src/my-utils/x/a.js")
    assert GlobSet(["app/**"], path=True).matches("app/x/y/z.py")
    assert not GlobSet(["app/?"], path=True).matches("app//")
    assert not GlobSet(["app/[!a]"], path=True).matches("app//")


def test_invalid_patterns_are_reported_and_skipped() -> None:
    assert validate_glob("ok*") is None
    assert validate_glob("") == "an empty glob never matches anything"
    assert "position 2: '{' is never closed" in (validate_glob("a{b") or "")
    assert "position 1: '[' is never closed" in (validate_glob("[abc") or "")
    assert "'}' without a matching '{'" in (validate_glob("x}") or "")
    assert "lone backslash" in (validate_glob("a\\") or "")
    assert "reversed" in (validate_glob("[z-a]") or "")
    globs = GlobSet(["a{b", "ok"])
    assert globs.patterns == ("ok",)
    assert globs.match("ok") == "ok"


def test_caret_negation_is_refused() -> None:
    # Sentry negates only with `!`: `[^0-4]` there is the class {^, 0-4}. Rather than
    # silently mean the opposite of Sentry, the pattern is refused with the fix.
    problem = validate_glob("1.18.[^0-4].*") or ""
    assert problem.startswith("invalid glob at position 7: '[^' does not negate")
    assert "'[!...]' to negate" in problem and "'[\\^...]'" in problem
    assert validate_glob("[^a]", path=True) is not None
    assert validate_glob("1.18.[!0-4].*") is None
    assert validate_glob(r"[\^a]") is None
    assert not GlobSet(["v[^1]"])


def test_regex_metacharacters_are_literal() -> None:
    source = glob_to_regex("a.b|c(d)")
    assert "|" not in source.replace("\\x{7c}", "")
    assert GlobSet(["a.b|c(d)"]).matches("a.b|c(d)")
    assert not GlobSet(["a.b|c(d)"]).matches("c(d)")


def test_long_values_match_in_linear_time() -> None:
    value = "a" * 200_000
    globs = GlobSet(["*a*a*a*a*a*a*a*a*b"])
    assert globs.match(value) is None


def test_odd_strings() -> None:
    globs = GlobSet(["*x*", "a*"])
    assert globs.match("a\ud800b") == "a*"
    assert globs.match("\ud800x") == "*x*"
    assert globs.match("üüüx") == "*x*"
    assert globs.match("\x00a\x00") is None
    assert GlobSet(["a\x00*"]).match("a\x00b") == "a\x00*"
