"""`[name, value]` pairs as Sentry's Relay reads them, in `pii_config` selectors and rules
and in the default scrubbing.

Each case is data: a scrubbing section, an event, and the event as Relay leaves it. The
facts they follow (getsentry/relay):

- pair-list fields (`Headers`, `Cookies`, `Query`, `Tags`: `request.headers`,
  `request.cookies`, `request.query_string`, `contexts.response.headers` / `.cookies`,
  `tags`) accept an object or an array of `[name, value]`; the PII processor enters each
  value under its name right below the field (`utils::process_pairlist`), so
  `$http.headers.authorization` selects it in either form, and a pair whose name is not
  a string under its index;
- header names are normalized (`HeaderName::new`: `x-api-key` -> `X-Api-Key`), which is
  the key a `redact_pair` / `password` key pattern sees; selector keys compare
  case-insensitively (`SelectorPathItem::matches_state`);
- anywhere else, an array of two whose first item is a string is a pair
  (`PiiProcessor::process_array`): the value is entered under the name below the array
  itself; when that changed nothing, both items are processed by their index
  (`test_tuple_array_scrubbed_with_path_selector`,
  `test_tuple_array_scrubbed_with_string_selector_and_password_matcher`);
- `{"key": ..., "value": ...}` objects are plain objects to Relay (`extra.l.0.value`);
- a `redact_pair` key pattern that does not match the key is applied to the value, a
  match anywhere redacting all of it (`PatternType::KeyValue`, `ReplaceBehavior::Value`);
- the User-Agent header is exempt from the default IP scrubbing
  (`test_ignore_user_agent_ip_scrubbing`); default filtering of query string pairs by
  name (`querystring_as_pairlist` snapshot).
"""

from __future__ import annotations

import copy
from typing import Any

import orjson
import pytest

from relay.processing.scrub import compile_scrubber
from tests.processing.scrub.conftest import OFF, cfg
from tests.support.relay import auth_header
from tests.support.upstream import RecordingUpstream

UA = "Mozilla/5.0 (X11; Linux x86_64) Chrome/120.0.0.0 Safari/537.36"


def apply(selector: str, rule: str = "@anything:replace", **rules: Any) -> dict[str, Any]:
    """A section with defaults off and one application."""
    return {**OFF, "pii_config": {"rules": rules, "applications": {selector: [rule]}}}


def redact_pair(selector: str, pattern: str, method: str = "replace") -> dict[str, Any]:
    redaction: dict[str, Any] = {"method": method}
    if method == "replace":
        redaction["text"] = "[pair]"
    rule = {"type": "redact_pair", "keyPattern": pattern, "redaction": redaction}
    return apply(selector, "r", r=rule)


def scrub(config: dict[str, Any] | None, event: dict[str, Any]) -> tuple[Any, list[Any]]:
    out = copy.deepcopy(event)
    scrubber = compile_scrubber(None if config is None else cfg(**config))
    rows = scrubber.scrub_event(out)
    return out, [[r.path, r.rule, r.method] for r in rows]


F = "[Filtered]"

# --- pair-list fields: a value is selected by its name, whatever the form ------------------

FIELDS = [
    # (selector, event, scrubbed event)
    (
        "$http.headers.authorization",
        {"request": {"headers": {"Authorization": "Basic a2V5", "Accept": "*/*"}}},
        {"request": {"headers": {"Authorization": F, "Accept": "*/*"}}},
    ),
    (
        "$http.headers.authorization",
        {"request": {"headers": [["Accept", "*/*"], ["authorization", "Basic a2V5"]]}},
        {"request": {"headers": [["Accept", "*/*"], ["authorization", F]]}},
    ),
    # A pair among entries Relay does not read as pairs: still selected by its name.
    (
        "request.headers.authorization",
        {"request": {"headers": [["Authorization", "Basic a2V5"], "junk", ["Accept", "*/*"]]}},
        {"request": {"headers": [["Authorization", F], "junk", ["Accept", "*/*"]]}},
    ),
    # Selector keys compare case-insensitively.
    (
        "$http.headers.X-API-KEY",
        {"request": {"headers": [["x-api-key", "k1"]]}},
        {"request": {"headers": [["x-api-key", F]]}},
    ),
    (
        "$http.cookies.sessionid",
        {"request": {"cookies": [["sessionid", "s1"], ["theme", "dark"]]}},
        {"request": {"cookies": [["sessionid", F], ["theme", "dark"]]}},
    ),
    (
        "$http.cookies.sessionid",
        {"request": {"cookies": {"sessionid": "s1", "theme": "dark"}}},
        {"request": {"cookies": {"sessionid": F, "theme": "dark"}}},
    ),
    (
        "$http.query_string.token",
        {"request": {"query_string": [["page", "2"], ["token", "t1"]]}},
        {"request": {"query_string": [["page", "2"], ["token", F]]}},
    ),
    (
        "tags.customer",
        {"tags": [["customer", "jane"], ["plan", "pro"]]},
        {"tags": [["customer", F], ["plan", "pro"]]},
    ),
    (
        "tags.customer",
        {"tags": {"customer": "jane", "plan": "pro"}},
        {"tags": {"customer": F, "plan": "pro"}},
    ),
    (
        "contexts.response.headers.set-cookie",
        {"contexts": {"response": {"headers": [["Set-Cookie", "sid=1"], ["Vary", "Origin"]]}}},
        {"contexts": {"response": {"headers": [["Set-Cookie", F], ["Vary", "Origin"]]}}},
    ),
    (
        "contexts.response.cookies.sid",
        {"contexts": {"response": {"cookies": [["sid", "s1"]]}}},
        {"contexts": {"response": {"cookies": [["sid", F]]}}},
    ),
    # Not a pair: the pair's own index, nothing below it (name and value untouched).
    (
        "request.headers.0.authorization",
        {"request": {"headers": [["authorization", "Basic a2V5"]]}},
        {"request": {"headers": [["authorization", "Basic a2V5"]]}},
    ),
    # A name that is not a string: the value is selected by the pair's index.
    (
        "request.headers.0",
        {"request": {"headers": [[None, "v0"], ["Accept", "*/*"]]}},
        {"request": {"headers": [[None, F], ["Accept", "*/*"]]}},
    ),
]


@pytest.mark.parametrize(("selector", "event", "expected"), FIELDS)
def test_pair_list_fields_select_a_value_by_its_name(
    selector: str, event: dict[str, Any], expected: dict[str, Any]
) -> None:
    assert scrub(apply(selector), event)[0] == expected


def test_pair_list_paths_in_the_report_and_meta_are_where_the_value_is() -> None:
    event = {"request": {"headers": [["Accept", "*/*"], ["X-Api-Key", "k1"]]}}
    config = {**apply("$http.headers.x-api-key"), "meta": True}
    out, rows = scrub(config, event)
    assert rows == [["request.headers.1.1", "@anything:replace", "replace"]]
    assert out["_meta"] == {
        "request": {
            "headers": {"1": {"1": {"": {"rem": [["@anything:replace", "s", 0, 10]], "len": 2}}}}
        }
    }


# --- header names: key patterns see them as Relay normalizes them ---------------------------

HEADER_NAMES = [
    # (key pattern, headers, scrubbed)
    ("^X-Api-Key$", {"x-api-key": "k1"}, {"x-api-key": "[pair]"}),
    ("^X-Api-Key$", [["x-api-key", "k1"]], [["x-api-key", "[pair]"]]),
    # Only first letters are upper-cased: the rest stays as sent.
    ("^X-Api-Key$", [["X-API-KEY", "k1"]], [["X-API-KEY", "k1"]]),
    ("^X-API-KEY$", [["X-API-KEY", "k1"]], [["X-API-KEY", "[pair]"]]),
    # A case-sensitive lower-case pattern never matches a normalized name.
    ("^x-api-key$", [["x-api-key", "k1"]], [["x-api-key", "k1"]]),
    ("^x-api-key$", {"x-api-key": "k1"}, {"x-api-key": "k1"}),
    ("(?i)^x-api-key$", [["X-API-KEY", "k1"]], [["X-API-KEY", "[pair]"]]),
]


@pytest.mark.parametrize(("pattern", "headers", "expected"), HEADER_NAMES)
def test_key_patterns_see_header_names_as_relay_normalizes_them(
    pattern: str, headers: Any, expected: Any
) -> None:
    config = redact_pair("$http.headers.*", pattern)
    out, _ = scrub(config, {"request": {"headers": headers}})
    assert out == {"request": {"headers": expected}}


def test_key_patterns_elsewhere_see_names_as_sent() -> None:
    event = {"extra": {"x-api-key": "k1"}, "tags": [["x-api-key", "k2"]]}
    out, _ = scrub(redact_pair("**", "^x-api-key$"), event)
    assert out == {"extra": {"x-api-key": "[pair]"}, "tags": [["x-api-key", "[pair]"]]}


@pytest.mark.parametrize(
    "headers",
    [
        [["User-Agent", "127.0.0.1"], ["X-Client-Ip", "10.0.0.1"]],
        [["user-agent", "127.0.0.1"], ["X-Client-Ip", "10.0.0.1"]],
        [["USER-AGENT", "127.0.0.1"], ["X-Client-Ip", "10.0.0.1"]],
        {"user-Agent": "127.0.0.1", "X-Client-Ip": "10.0.0.1"},
    ],
)
def test_the_user_agent_is_exempt_from_the_default_scrubbing_in_any_case_and_form(
    headers: Any,
) -> None:
    out, rows = scrub(None, {"request": {"headers": headers}})
    values = dict(headers if isinstance(headers, list) else headers.items())
    got = dict(
        out["request"]["headers"]
        if isinstance(headers, list)
        else out["request"]["headers"].items()
    )
    ua = next(k for k in values if k.lower() == "user-agent")
    assert got == {ua: "127.0.0.1", "X-Client-Ip": "[ip]"}
    assert [r[1] for r in rows] == ["@ip:replace"]
    # Rules still reach it.
    out, _ = scrub(apply("$http.headers.user-agent"), {"request": {"headers": headers}})
    assert F in str(out)


# --- pairs in free data ---------------------------------------------------------------------

PAIRS = [
    # (applications, event, scrubbed event)
    # A lone pair: the value below the array, under the name.
    (
        {"extra.h.authorization": ["@anything:replace"]},
        {"extra": {"h": ["authorization", "Bearer x1"]}},
        {"extra": {"h": ["authorization", F]}},
    ),
    # Pairs in a list: below each pair's index.
    (
        {"$frame.vars.headers.0.authorization": ["@anything:replace"]},
        {"stacktrace": {"frames": [{"vars": {"headers": [["authorization", "Bearer x1"]]}}]}},
        {"stacktrace": {"frames": [{"vars": {"headers": [["authorization", F]]}}]}},
    ),
    (
        {"vars.headers.*.authorization": ["@anything:replace"]},
        {"stacktrace": {"frames": [{"vars": {"headers": [["a", "1"], ["authorization", "x"]]}}]}},
        {"stacktrace": {"frames": [{"vars": {"headers": [["a", "1"], ["authorization", F]]}}]}},
    ),
    # A pair in a list of other things is a pair all the same.
    (
        {"extra.l.1.authorization": ["@anything:replace"]},
        {"extra": {"l": ["first", ["authorization", "Bearer x1"], 3]}},
        {"extra": {"l": ["first", ["authorization", F], 3]}},
    ),
    # In a pair-list field's place in free data, the name is below the pair's index.
    (
        {"vars.headers.authorization": ["@anything:replace"]},
        {"stacktrace": {"frames": [{"vars": {"headers": [["authorization", "Bearer x1"]]}}]}},
        {"stacktrace": {"frames": [{"vars": {"headers": [["authorization", "Bearer x1"]]}}]}},
    ),
    # Nothing selects the value by its name: its index does.
    (
        {"extra.h.1": ["@anything:replace"]},
        {"extra": {"h": ["authorization", "Bearer x1"]}},
        {"extra": {"h": ["authorization", F]}},
    ),
    # A rule by the name that changes nothing leaves the value to rules by its index.
    (
        {"extra.h.authorization": ["digits"], "extra.h.1": ["@anything:replace"]},
        {"extra": {"h": ["authorization", "Bearer x1"]}},
        {"extra": {"h": ["authorization", F]}},
    ),
    # The name changed it: the index is not tried.
    (
        {"extra.h.authorization": ["@anything:replace"], "extra.h.1": ["@anything:remove"]},
        {"extra": {"h": ["authorization", "Bearer x1"]}},
        {"extra": {"h": ["authorization", F]}},
    ),
    # Rules by index reach the name when the value stayed as it was...
    (
        {"extra.h.0": ["@email:replace"]},
        {"extra": {"h": ["jane@example.com", "primary"]}},
        {"extra": {"h": ["[email]", "primary"]}},
    ),
    (
        {"$string": ["@email:replace"]},
        {"extra": {"h": ["jane@example.com", "primary"]}},
        {"extra": {"h": ["[email]", "primary"]}},
    ),
    # ... and not when it changed.
    (
        {"$string": ["@anything:replace"]},
        {"extra": {"list": ["a", "b"]}},
        {"extra": {"list": ["a", F]}},
    ),
    # The name is the key a key pattern sees.
    (
        {"$string": ["@password:remove"]},
        {"stacktrace": {"frames": [{"vars": {"headers": [["authorization", "abc123"]]}}]}},
        {"stacktrace": {"frames": [{"vars": {"headers": [["authorization", None]]}}]}},
    ),
    (
        {"$string": ["bad_keys"]},
        {"extra": {"h": ["Cookie", "super"], "g": ["other", "fine"]}},
        {"extra": {"h": ["Cookie", None], "g": ["other", "fine"]}},
    ),
    # A null value: no pair, both items by their index.
    (
        {"extra.h.authorization": ["@anything:replace"], "extra.h.0": ["@anything:replace"]},
        {"extra": {"h": ["authorization", None]}},
        {"extra": {"h": [F, None]}},
    ),
    # An array of two arrays is not a pair; each of them is.
    (
        {"extra.h.0.a": ["@anything:replace"], "extra.h.1.c": ["@anything:replace"]},
        {"extra": {"h": [["a", "b"], ["c", "d"]]}},
        {"extra": {"h": [["a", F], ["c", F]]}},
    ),
    # A container value is walked below the name.
    (
        {"extra.h.auth.token": ["@anything:replace"]},
        {"extra": {"h": ["auth", {"token": "t1", "user": "u"}]}},
        {"extra": {"h": ["auth", {"token": F, "user": "u"}]}},
    ),
]

RULES = {
    "digits": {"type": "pattern", "pattern": "[0-9]{9}", "redaction": {"method": "remove"}},
    "bad_keys": {
        "type": "redact_pair",
        "keyPattern": "(?i)cookie|secret[-_]?key",
        "redaction": {"method": "remove"},
    },
}


@pytest.mark.parametrize(("applications", "event", "expected"), PAIRS)
def test_pairs_in_free_data_as_relay_reads_them(
    applications: dict[str, list[str]], event: dict[str, Any], expected: dict[str, Any]
) -> None:
    config = {**OFF, "pii_config": {"rules": RULES, "applications": applications}}
    assert scrub(config, event)[0] == expected


def test_a_lone_pair_is_reported_and_remarked_at_its_value() -> None:
    config = {**apply("extra.h.authorization"), "meta": True}
    out, rows = scrub(config, {"extra": {"h": ["authorization", "Bearer x1"]}})
    assert rows == [["extra.h.1", "@anything:replace", "replace"]]
    assert out["_meta"] == {
        "extra": {"h": {"1": {"": {"rem": [["@anything:replace", "s", 0, 10]], "len": 9}}}}
    }


# --- `{"key": ..., "value": ...}` objects: plain objects to Relay --------------------------

KEY_VALUE = [
    ("extra.attrs.*.value", True),
    ("extra.attrs.0.value", True),
    ("$object.value", True),
    ("extra.attrs.authorization", False),
]


@pytest.mark.parametrize(("selector", "hit"), KEY_VALUE)
def test_key_value_objects_are_selected_as_objects(selector: str, hit: bool) -> None:
    event = {"extra": {"attrs": [{"key": "authorization", "value": "Basic a2V5"}]}}
    out, _ = scrub(apply(selector), event)
    value = F if hit else "Basic a2V5"
    assert out == {"extra": {"attrs": [{"key": "authorization", "value": value}]}}


def test_key_value_objects_are_removed_as_objects() -> None:
    event = {"extra": {"attrs": [{"key": "authorization", "value": "Basic a2V5"}, "x"]}}
    out, rows = scrub(apply("extra.attrs.0", "@anything:remove"), event)
    assert out == {"extra": {"attrs": [None, "x"]}}
    assert rows == [["extra.attrs.0", "@anything:remove", "remove"]]


def test_key_value_objects_have_their_key_selected_too() -> None:
    event = {"extra": {"attrs": [{"key": "jane@example.com", "value": "x"}]}}
    out, _ = scrub(apply("extra.attrs.*.key", "@email:replace"), event)
    assert out == {"extra": {"attrs": [{"key": "[email]", "value": "x"}]}}


# --- key patterns inside values -------------------------------------------------------------

INSIDE = [
    # (value, scrubbed): a key pattern found in the value redacts all of it.
    ("my secret is out", "[pair]"),
    ("SECRET", "SECRET"),  # the pattern is case-sensitive
    ("nothing here", "nothing here"),
]


@pytest.mark.parametrize(("value", "expected"), INSIDE)
def test_a_key_pattern_found_in_a_value_redacts_the_whole_value(value: str, expected: str) -> None:
    event = {"extra": {"note": value}, "request": {"headers": [["X-Note", value]]}}
    out, _ = scrub(redact_pair("$string", "secret"), event)
    assert out == {"extra": {"note": expected}, "request": {"headers": [["X-Note", expected]]}}


def test_redact_pair_on_headers_given_as_pairs() -> None:
    """Relay's `test_basic_stripping`: headers as pairs, `$object.**` with a key pattern,
    `$string` with `@ip`."""
    config = {
        **OFF,
        "meta": True,
        "pii_config": {
            "rules": {
                "remove_bad_headers": {
                    "type": "redact_pair",
                    "keyPattern": "(?i)cookie|secret[-_]?key",
                }
            },
            "applications": {"$string": ["@ip"], "$object.**": ["remove_bad_headers"]},
        },
    }
    event = {
        "logentry": {"formatted": "Hello world!"},
        "request": {
            "env": {"SECRET_KEY": "134141231231231231231312"},
            "headers": [["Cookie", "super secret"], ["X-Forwarded-For", "127.0.0.1"]],
        },
    }
    out, _ = scrub(config, event)
    assert out == {
        "logentry": {"formatted": "Hello world!"},
        "request": {
            "env": {"SECRET_KEY": None},
            "headers": [["Cookie", None], ["X-Forwarded-For", "[ip]"]],
        },
        "_meta": {
            "request": {
                "env": {"SECRET_KEY": {"": {"rem": [["remove_bad_headers", "x"]]}}},
                "headers": {
                    "0": {"1": {"": {"rem": [["remove_bad_headers", "x"]]}}},
                    "1": {"1": {"": {"rem": [["@ip", "s", 0, 4]], "len": 9}}},
                },
            }
        },
    }


# --- the default scrubbing ------------------------------------------------------------------


def test_default_scrubbing_filters_pairs_by_name_in_a_query_string() -> None:
    """Relay's `querystring_as_pairlist` snapshot."""
    event = {
        "request": {
            "query_string": [
                ["foo", "bar"],
                ["password", "hello"],
                ["the_secret", "hello"],
                ["a_password_here", "hello"],
                ["api_key", "secret_key"],
            ]
        }
    }
    out, _ = scrub(None, event)
    rem = [["@password:filter", "s", 0, 10]]
    assert out == {
        "request": {
            "query_string": [
                ["foo", "bar"],
                ["password", F],
                ["the_secret", F],
                ["a_password_here", F],
                ["api_key", F],
            ]
        },
        "_meta": {
            "request": {
                "query_string": {
                    "1": {"1": {"": {"rem": rem, "len": 5}}},
                    "2": {"1": {"": {"rem": rem, "len": 5}}},
                    "3": {"1": {"": {"rem": rem, "len": 5}}},
                    "4": {"1": {"": {"rem": rem, "len": 10}}},
                }
            }
        },
    }


DEFAULTS = [
    # (event, scrubbed event): the default policy, `_meta` left out.
    # A lone pair: the denylist sees the name.
    (
        {"extra": {"creds": ["password", "hunter2"], "other": ["color", "blue"]}},
        {"extra": {"creds": ["password", F], "other": ["color", "blue"]}},
    ),
    (
        {"extra": {"vars": {"request": {"headers": [["secret", "s3"], ["passwd", "p4"]]}}}},
        {"extra": {"vars": {"request": {"headers": [["secret", F], ["passwd", F]]}}}},
    ),
    # A pair's name in free data is a string like any other: scanned.
    (
        {"extra": {"emails": [["jane@example.com", "primary"], ["joe@example.com", "backup"]]}},
        {"extra": {"emails": [["[email]", "primary"], ["[email]", "backup"]]}},
    ),
    (
        {"extra": {"emails": ["jane@example.com", "joe@example.com"]}},
        {"extra": {"emails": ["[email]", "[email]"]}},
    ),
    # ... but a pair-list field's names are keys, never rewritten.
    (
        {"tags": [["jane@example.com", "x"]], "request": {"headers": [["X-Mail", "a@b.io"]]}},
        {"tags": [["jane@example.com", "x"]], "request": {"headers": [["X-Mail", "[email]"]]}},
    ),
    # `{"key": ..., "value": ...}`: the key is scanned, the value filtered by the name.
    (
        {"extra": {"attrs": [{"key": "password", "value": "hunter2"}]}},
        {"extra": {"attrs": [{"key": "password", "value": F}]}},
    ),
    (
        {"extra": {"attrs": [{"key": "jane@example.com", "value": "x"}]}},
        {"extra": {"attrs": [{"key": "[email]", "value": "x"}]}},
    ),
    # Cookies: every value, in any form; in the response context too.
    (
        {"contexts": {"response": {"cookies": [["sid", "s1"]], "headers": {"Vary": "Origin"}}}},
        {"contexts": {"response": {"cookies": [["sid", F]], "headers": {"Vary": "Origin"}}}},
    ),
    # Source context is not free data: two lines are not a pair.
    (
        {"stacktrace": {"frames": [{"pre_context": ["def auth(user):", "    return user.ok"]}]}},
        {"stacktrace": {"frames": [{"pre_context": ["def auth(user):", "    return user.ok"]}]}},
    ),
]


@pytest.mark.parametrize(("event", "expected"), DEFAULTS)
def test_default_scrubbing_of_pairs(event: dict[str, Any], expected: dict[str, Any]) -> None:
    out, _ = scrub(None, event)
    out.pop("_meta", None)
    assert out == expected


def test_pairs_give_the_same_result_on_the_fast_and_the_general_path() -> None:
    """A safe-field selector that never matches (`$binary`) takes the per-value path
    everywhere; the default policy takes the fast paths."""
    event = {
        "extra": {
            "a": ["password", "hunter2"],
            "b": [["jane@example.com", "mail 10.0.0.1"], ["token", {"x": "a@b.io"}]],
            "c": [{"key": "secret", "value": "s"}, {"key": "a@b.io", "value": ["k", "v"]}],
            "d": ["x", ["api_key", "k1"], None],
        },
        "request": {"headers": [["Authorization", "Bearer abcdef0123456789"], [1, "a@b.io"]]},
        "tags": [["user", "a@b.io"]],
    }
    fast = compile_scrubber(None)
    general = compile_scrubber(cfg(safe_fields=["$binary"]))
    for report in (True, False):
        a, b = copy.deepcopy(event), copy.deepcopy(event)
        rows_a = fast.scrub_event(a, report=report)
        rows_b = general.scrub_event(b, report=report)
        assert orjson.dumps(a) == orjson.dumps(b)
        assert rows_a == rows_b


# --- through the relay ----------------------------------------------------------------------


async def test_the_relay_forwards_pairs_scrubbed_by_name(
    relay_factory: Any, recorder: RecordingUpstream
) -> None:
    policy = {
        "scrubbing": {
            "pii_config": {
                "applications": {
                    "$http.headers.x-session || extra.h.authorization": ["@anything:remove"]
                }
            }
        }
    }
    relay = await relay_factory(policy=policy)
    event = {
        "event_id": "9ec79c33ec9942ab8353589fcb2e04dc",
        "message": "boom",
        "request": {"headers": [["X-Session", "opaque-123"], ["Accept", "*/*"]]},
        "extra": {"h": ["authorization", "opaque-456"], "creds": ["password", "opaque-789"]},
    }
    resp = await relay.post("/api/42/store/", data=orjson.dumps(event), headers=auth_header())
    assert resp.status == 200
    await recorder.wait_for(1)
    [item] = recorder.items("event")
    forwarded = orjson.loads(item.payload)
    assert forwarded["request"]["headers"] == [["X-Session", None], ["Accept", "*/*"]]
    assert forwarded["extra"]["h"] == ["authorization", None]
    assert forwarded["extra"]["creds"] == ["password", F]
    assert b"opaque-" not in item.payload
