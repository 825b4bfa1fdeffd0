"""A query string or cookies sent as one string, read as Sentry's Relay reads them.

Relay's event schema parses `request.query_string` (`Query`) and `request.cookies` /
`contexts.response.cookies` (`Cookies`) from a string into a list of `[name, value]`
pairs, so `pii_config` selectors naming a pair (`$http.query_string.token`,
`request.cookies.sid`, `**` key rules) reach its value. The facts (getsentry/relay,
`relay-event-schema/src/protocol/request.rs`):

- `Query::parse`: one leading `?` dropped, then `application/x-www-form-urlencoded`
  parsing: `&`-separated, empty parts skipped, split at the first `=` (a name without
  `=` gets an empty value: `test_querystring_without_value`), `+` and percent escapes
  decoded;
- `Cookies::parse`: `;`-separated, blank parts skipped, each part a cookie
  (`Cookie::parse_encoded`: name and value trimmed and percent-decoded; no `=` or an
  empty name is an error, and the cookie is left out: `test_cookies_parsing`).

The walker parses only when the policy has selectors, and writes the field back as the
list of pairs only when something changed; otherwise the string stays as it was.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from relay.processing.scrub import compile_scrubber
from relay.processing.scrub.walker import parse_pairs
from tests.processing.scrub.conftest import OFF, cfg

F = "[Filtered]"


def apply(selector: str, rule: str = "@anything:replace", **rules: Any) -> dict[str, Any]:
    """A section with defaults off and one application."""
    return {**OFF, "pii_config": {"rules": rules, "applications": {selector: [rule]}}}


def redact_pair(selector: str, pattern: str) -> dict[str, Any]:
    rule = {
        "type": "redact_pair",
        "keyPattern": pattern,
        "redaction": {"method": "replace", "text": "[pair]"},
    }
    return apply(selector, "r", r=rule)


def pattern(text: str) -> dict[str, Any]:
    """A `$string` application of one pattern rule (replaced by `[Filtered]`)."""
    rule = {"type": "pattern", "pattern": text, "redaction": {"method": "replace", "text": F}}
    return apply("$string", "r", r=rule)


def scrub(config: dict[str, Any] | None, event: dict[str, Any]) -> tuple[Any, list[Any]]:
    out = copy.deepcopy(event)
    scrubber = compile_scrubber(None if config is None else cfg(**config))
    rows = scrubber.scrub_event(out)
    return out, [[r.path, r.rule, r.method] for r in rows]


# --- parsing ------------------------------------------------------------------------------

PARSED = [
    # (form, string, pairs). Relay's own vectors first (`request.rs` tests).
    ("query", "foo=bar", [["foo", "bar"]]),
    ("query", "?foo=bar", [["foo", "bar"]]),
    ("query", "foo=bar&baz=42", [["foo", "bar"], ["baz", "42"]]),
    ("query", "foo=bar&baz", [["foo", "bar"], ["baz", ""]]),
    (
        "cookies",
        " PHPSESSID=298zf09hf012fh2; csrftoken=u32t4o3tb3gg43; _gat=1;",
        [["PHPSESSID", "298zf09hf012fh2"], ["csrftoken", "u32t4o3tb3gg43"], ["_gat", "1"]],
    ),
    # Form decoding: `+` is a space, percent escapes in names and values, `=` in a value.
    ("query", "a%20b=c%2Bd+e&x=1=2", [["a b", "c+d e"], ["x", "1=2"]]),
    # Empty parts skipped; an empty name kept; only one `?` dropped; `;` is no separator.
    ("query", "&&=v&a=1&", [["", "v"], ["a", "1"]]),
    ("query", "??a=1", [["?a", "1"]]),
    ("query", "a=1;b=2", [["a", "1;b=2"]]),
    ("query", "", []),
    # Invalid UTF-8 after decoding becomes U+FFFD.
    ("query", "a=%FF", [["a", "\ufffd"]]),
    # Cookies: trimmed, percent-decoded (`+` stays), split at the first `=`.
    ("cookies", "sid = a%3Bb ;theme=dark+blue", [["sid", "a;b"], ["theme", "dark+blue"]]),
    ("cookies", "a=b=c", [["a", "b=c"]]),
    ("cookies", "empty=", [["empty", ""]]),
    # No `=`, an empty name, invalid UTF-8: left out, the other cookies kept.
    ("cookies", "junk; =x;  ; bad=%FF; ok=1", [["ok", "1"]]),
]


@pytest.mark.parametrize(("form", "text", "pairs"), PARSED)
def test_strings_parse_into_pairs_as_relay_parses_them(
    form: str, text: str, pairs: list[list[str]]
) -> None:
    assert parse_pairs(form, text) == pairs


# --- selectors reach a pair of the string -------------------------------------------------

SELECTED = [
    # (config, event, scrubbed event)
    (
        apply("$http.query_string.token"),
        {"request": {"query_string": "page=2&token=t1"}},
        {"request": {"query_string": [["page", "2"], ["token", F]]}},
    ),
    (
        apply("request.query_string.token"),
        {"request": {"query_string": "?token=t%201&page=2"}},
        {"request": {"query_string": [["token", F], ["page", "2"]]}},
    ),
    (
        apply("request.cookies.sid"),
        {"request": {"cookies": "sid=abc; theme=dark"}},
        {"request": {"cookies": [["sid", F], ["theme", "dark"]]}},
    ),
    (
        apply("$http.cookies.sid"),
        {"request": {"cookies": "sid=abc; theme=dark"}},
        {"request": {"cookies": [["sid", F], ["theme", "dark"]]}},
    ),
    (
        apply("contexts.response.cookies.sid"),
        {"contexts": {"response": {"cookies": "sid=abc"}}},
        {"contexts": {"response": {"cookies": [["sid", F]]}}},
    ),
    # `**` key rules see each pair's name.
    (
        redact_pair("**", "^token$"),
        {"request": {"query_string": "page=2&token=t1"}},
        {"request": {"query_string": [["page", "2"], ["token", "[pair]"]]}},
    ),
    (
        redact_pair("**", "^sid$"),
        {"request": {"cookies": "sid=abc; theme=dark"}},
        {"request": {"cookies": [["sid", "[pair]"], ["theme", "dark"]]}},
    ),
    # Value-type selectors (a local policy) see the decoded values.
    (
        pattern("^t 1$"),
        {"request": {"query_string": "page=2&token=t+1"}},
        {"request": {"query_string": [["page", "2"], ["token", "[Filtered]"]]}},
    ),
    # The field itself is an array: a rule selecting it removes it.
    (
        apply("$http.query_string", "@anything:remove"),
        {"request": {"query_string": "page=2&token=t1"}},
        {"request": {"query_string": None}},
    ),
    # Nothing selected changed: the string stays as it was sent.
    (
        apply("$http.query_string.other"),
        {"request": {"query_string": "?page=2&token=t%201"}},
        {"request": {"query_string": "?page=2&token=t%201"}},
    ),
    (
        apply("request.cookies.other"),
        {"request": {"cookies": "sid=abc; theme=dark"}},
        {"request": {"cookies": "sid=abc; theme=dark"}},
    ),
    # Nothing in the pairs changed (a name is a key, never rewritten; `&&` is no value's):
    # the string stays one, and the rules for strings apply to it as before.
    (
        pattern("zzz"),
        {"request": {"query_string": "zzz"}},
        {"request": {"query_string": F}},
    ),
    (
        pattern("&&"),
        {"request": {"query_string": "a=1&&b=2"}},
        {"request": {"query_string": "a=1[Filtered]b=2"}},
    ),
]


@pytest.mark.parametrize(("config", "event", "expected"), SELECTED)
def test_selectors_reach_the_pairs_of_a_string(
    config: dict[str, Any], event: dict[str, Any], expected: dict[str, Any]
) -> None:
    assert scrub(config, event)[0] == expected


def test_report_and_meta_name_where_the_pairs_hold_the_value() -> None:
    # Selected by name; recorded where the forwarded list holds the value, as for a field
    # sent as pairs (test_pair_lists_sent_as_lists_are_unchanged).
    event = {"request": {"query_string": "page=2&token=t1", "cookies": "sid=abc; a=b"}}
    config = {
        **OFF,
        "meta": True,
        "pii_config": {
            "applications": {
                "$http.query_string.token": ["@anything:replace"],
                "request.cookies.sid": ["@anything:remove"],
            }
        },
    }
    out, rows = scrub(config, event)
    assert out["request"] == {
        "query_string": [["page", "2"], ["token", F]],
        "cookies": [["sid", None], ["a", "b"]],
    }
    assert rows == [
        ["request.query_string.1.1", "@anything:replace", "replace"],
        ["request.cookies.0.1", "@anything:remove", "remove"],
    ]
    assert out["_meta"] == {
        "request": {
            "query_string": {
                "1": {"1": {"": {"rem": [["@anything:replace", "s", 0, 10]], "len": 2}}}
            },
            "cookies": {"0": {"1": {"": {"rem": [["@anything:remove", "x"]]}}}},
        }
    }


def test_denylist_and_detectors_see_the_pairs_when_selectors_are_configured() -> None:
    # Defaults on, plus one application: the query string is parsed; the denylist sees
    # each name and the detectors each decoded value.
    config = {
        "pii_config": {"applications": {"$http.query_string.page": ["@anything:replace"]}},
    }
    event = {"request": {"query_string": "password=hunter2&mail=jane%40example.com&q=1"}}
    out, rows = scrub(config, event)
    qs = out["request"]["query_string"]
    assert qs[0] == ["password", F]
    assert qs[1][0] == "mail" and "jane@example.com" not in qs[1][1]
    assert qs[2] == ["q", "1"]
    paths = [r[0] for r in rows]
    assert "request.query_string.0.1" in paths  # password
    assert "request.query_string.1.1" in paths  # mail


def test_a_detector_hit_alone_makes_the_field_pairs() -> None:
    config = {
        "pii_config": {"applications": {"$http.query_string.page": ["@anything:replace"]}},
    }
    out, rows = scrub(config, {"request": {"query_string": "mail=jane%40example.com"}})
    qs = out["request"]["query_string"]
    assert isinstance(qs, list) and qs[0][0] == "mail" and "@" not in qs[0][1]
    assert [r[0] for r in rows] == ["request.query_string.0.1"]


def test_default_policy_leaves_the_strings_alone() -> None:
    # No selectors: nothing is parsed (the fast path); the strings go to the detectors
    # whole, and default cookie filtering replaces the whole string, as before.
    event = {"request": {"query_string": "page=2&q=t1", "cookies": "sid=abc; a=b"}}
    out, _ = scrub(None, event)
    assert out["request"]["query_string"] == "page=2&q=t1"
    assert out["request"]["cookies"] == F


def test_pair_lists_sent_as_lists_are_unchanged() -> None:
    event = {"request": {"query_string": [["page", "2"], ["token", "t1"]]}}
    out, rows = scrub(apply("$http.query_string.token"), event)
    assert out == {"request": {"query_string": [["page", "2"], ["token", F]]}}
    assert rows == [["request.query_string.1.1", "@anything:replace", "replace"]]
