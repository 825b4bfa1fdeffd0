"""Sentry's selector grammar: parsing and matching from the end of the path."""

from __future__ import annotations

import pytest

from relay.processing.scrub.selectors import (
    PII_FALSE,
    PII_MAYBE,
    PII_TRUE,
    AndSel,
    NotSel,
    OrSel,
    PathSel,
    SelectorError,
    State,
    matches,
    parse_selector,
)


def st(*segs: tuple[str | int, str]) -> list[State]:
    return [(seg, frozenset(types.split())) for seg, types in segs]


FRAME_VAR = st(
    ("exception", "object"),
    ("values", "array"),
    (0, "object exception"),
    ("stacktrace", "object stacktrace"),
    ("frames", "array"),
    (2, "object frame"),
    ("vars", "object"),
    ("password", "string"),
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("$frame.vars.**", True),
        ("$frame.vars.password", True),
        ("vars.password", True),
        ("password", True),
        ("PASSWORD", True),
        ("'password'", True),
        ("$string", True),
        ("$frame.**", True),
        ("**", True),
        ("$error.**", True),
        ("$exception.stacktrace.frames.*.vars.*", True),
        ("frames.2.vars.password", True),
        ("frames.1.vars.password", False),
        ("$http.**", False),
        ("$number", False),
        ("!$number", True),
        ("$string && vars.*", True),
        ("$string && !vars.*", False),
        ("$number || vars.password", True),
        ("($number || $object) && password", False),
        ("!(vars.secret || vars.token)", True),
        ("exception.values", False),
    ],
)
def test_matches_frame_var(text: str, expected: bool) -> None:
    assert matches(parse_selector(text), FRAME_VAR, PII_TRUE) is expected


def test_pii_maybe_only_specific_paths() -> None:
    path = st(
        ("exception", "object"),
        ("values", "array"),
        (0, "object exception"),
        ("stacktrace", "object stacktrace"),
        ("frames", "array"),
        (0, "object frame"),
        ("abs_path", "string"),
    )
    assert matches(parse_selector("$frame.abs_path"), path, PII_MAYBE)
    assert not matches(parse_selector("$string"), path, PII_MAYBE)
    assert not matches(parse_selector("**"), path, PII_MAYBE)
    assert not matches(parse_selector("$frame.**"), path, PII_MAYBE)
    assert not matches(parse_selector("$frame.abs_path"), path, PII_FALSE)


def test_deep_wildcard_counts_the_root() -> None:
    """As in Sentry, the root is a state above the top-level fields: `**` selects them,
    and `*` before a `**` can stand for the root."""
    assert matches(parse_selector("**"), st(("message", "string")), PII_TRUE)
    assert matches(parse_selector("**"), st(("extra", "object"), ("a", "string")), PII_TRUE)
    assert not matches(parse_selector("**"), st(("message", "string")), PII_MAYBE)
    assert not matches(parse_selector("**.message"), st(("message", "string")), PII_TRUE)
    extra_a_b = st(("extra", "object"), ("a", "object"), ("b", "string"))
    assert matches(parse_selector("*.extra.**"), extra_a_b, PII_TRUE)
    assert matches(parse_selector("extra.**"), extra_a_b, PII_TRUE)
    assert not matches(parse_selector("*.*.extra.**"), extra_a_b, PII_TRUE)
    # A selector longer than the path matches nothing (the root is not counted there).
    assert not matches(parse_selector("*.extra.**"), extra_a_b[:2], PII_TRUE)


def test_relay_operator_spellings_and_type_aliases() -> None:
    """Sentry's grammar also spells the operators `&`, `|` and `~`, and accepts `$bool`,
    `$list`, `$stack` and `$trace_metric`."""
    assert parse_selector("a & b") == parse_selector("a && b")
    assert parse_selector("a | b & c") == parse_selector("a || b && c")
    assert parse_selector("~a") == parse_selector("!a")
    assert parse_selector("(debug_meta.images.**.code_file & $string)") == parse_selector(
        "debug_meta.images.**.code_file && $string"
    )
    assert parse_selector("$bool") == parse_selector("$boolean")
    assert parse_selector("$list") == parse_selector("$array")
    assert parse_selector("$stack.frames") == parse_selector("$stacktrace.frames")
    assert isinstance(parse_selector("$trace_metric.**"), PathSel)
    assert matches(parse_selector("$string & vars.*"), FRAME_VAR, PII_TRUE)
    assert not matches(parse_selector("$string & ~vars.*"), FRAME_VAR, PII_TRUE)
    assert matches(parse_selector("$number | vars.password"), FRAME_VAR, PII_TRUE)


def test_quoted_keys_and_structure() -> None:
    sel = parse_selector("extra.'My Value'.'it''s'")
    assert isinstance(sel, PathSel)
    assert [i.value for i in sel.items] == ["extra", "my value", "it's"]
    assert isinstance(parse_selector("a || b && !c"), OrSel)
    assert isinstance(parse_selector("a && (b || c)"), AndSel)
    assert isinstance(parse_selector("!a"), NotSel)
    assert parse_selector("freeform") == parse_selector("$string")
    assert parse_selector("$http.headers.x-api-key") == parse_selector("$request.headers.X-API-KEY")


@pytest.mark.parametrize(
    "text",
    [
        "",
        "$nosuchtype",
        "a..b",
        "(a || b",
        "a ||",
        "a |",
        "*",
        "**.a.**",
        "'unterminated",
        "a b",
        "!!a",
        "~~a",
        "a &&& b",
    ],
)
def test_invalid_selectors(text: str) -> None:
    with pytest.raises(SelectorError):
        parse_selector(text)
