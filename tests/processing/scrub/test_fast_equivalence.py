"""The walker's fast paths give the same bytes and report as its general path.

A policy with a safe-field selector that never matches (`$binary`: JSON has no binary
values) takes the general per-value path everywhere, as any policy with selectors
does; otherwise it is the default policy. So on any payload the two must agree,
`_meta` remarks (and their order) and report rows included. This covers what only the
fast paths do: the per-key plan tables, the plans of key tuples at typed nodes (dead
keys skipped), denylisted keys filtered without the per-value path, attributes
objects, the clean-string set, and results applied at once when nothing is recorded.
"""

from __future__ import annotations

import copy
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay.processing.scrub import compile_scrubber
from relay.processing.scrub.cache import ScanCache
from tests.processing.scrub.conftest import cfg

#: Warm across examples (strings repeat), like a running relay.
FAST = compile_scrubber(None)
GENERAL = compile_scrubber(cfg(safe_fields=["$binary"]))

SECRETS = [
    "4111 1111 1111 1111",
    "alice.smith@example.com",
    "203.0.113.77",
    "2001:db8::7334",
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl",
    "password=hunter2",
    "https://user:pa55@api.example.com/x",
    "DE89 3704 0044 0532 0130 00",
    "Bearer abcdef0123456789",
    "/Users/bob/project",
]
WORDS = ["", "ok", "id", "GET /x", "v1.2", "12", "::", "hello world", "é", "日本"]
#: Keys with a meaning in the schema (typed nodes, never-PII and "maybe" fields, flags),
#: denylisted and IP keys, and plain ones.
KEYS = [
    "exception",
    "values",
    "stacktrace",
    "frames",
    "vars",
    "pre_context",
    "context_line",
    "filename",
    "abs_path",
    "function",
    "lineno",
    "breadcrumbs",
    "message",
    "data",
    "timestamp",
    "category",
    "user",
    "ip_address",
    "request",
    "headers",
    "cookies",
    "env",
    "REMOTE_ADDR",
    "contexts",
    "trace",
    "trace_id",
    "sdk",
    "client_ip",
    "modules",
    "items",
    "body",
    "attributes",
    "spans",
    "sentry_tags",
    "extra",
    "tags",
    "password",
    "api_key",
    "Authorization",
    "session",
    "x-forwarded-for",
    "user.ip_address",
    "value",
    "key",
    "type",
    "",
    "a",
    "note",
]

texts = st.one_of(
    st.sampled_from(WORDS),
    st.builds(
        lambda pre, secret, post: f"{pre} {secret} {post}",
        st.sampled_from(WORDS),
        st.sampled_from(SECRETS),
        st.sampled_from(WORDS),
    ),
)
scalars = st.one_of(
    texts, st.integers(-3, 10**6), st.floats(allow_nan=False), st.booleans(), st.none()
)


def _containers(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    keys = st.sampled_from(KEYS)
    return st.one_of(
        st.dictionaries(keys, children, max_size=6),
        st.lists(children, max_size=4),
        # Key/value pairs, `{"key": ..., "value": ...}` objects, attributes.
        st.lists(st.tuples(keys, scalars).map(list), min_size=1, max_size=3),
        st.lists(st.fixed_dictionaries({"key": keys, "value": children}), max_size=2),
        st.dictionaries(
            keys,
            st.one_of(
                st.fixed_dictionaries({"value": children, "type": st.just("string")}),
                children,
            ),
            max_size=5,
        ),
    )


values = st.recursive(scalars, _containers, max_leaves=25)


#: Attribute names: plain, denylisted, IP.
ATTRIBUTE_NAMES = ["a", "user.email", "user.ip_address", "client.address", "password", "", "key"]
attributes = st.dictionaries(
    st.sampled_from(ATTRIBUTE_NAMES),
    st.one_of(
        st.fixed_dictionaries({"value": scalars, "type": st.just("string")}),
        st.fixed_dictionaries({"value": values, "type": st.just("array")}),
        values,
    ),
    max_size=6,
)


@st.composite
def payloads(draw: st.DrawFn) -> tuple[dict[str, Any], str]:
    item_type = draw(st.sampled_from(["event", "transaction", "log", "span", "otel_log"]))
    payload = draw(st.dictionaries(st.sampled_from(KEYS), values, min_size=1, max_size=8))
    if item_type in ("log", "span") and draw(st.booleans()):
        # Logs and spans as SDKs send them: items with attributes.
        item = draw(st.dictionaries(st.sampled_from(KEYS), values, max_size=4))
        item["attributes"] = draw(attributes)
        payload = {"version": 2, "items": [item, *draw(st.lists(values, max_size=1))]}
    if draw(st.booleans()):
        # A `_meta` the SDK sent along (removed; the remarks replace it).
        payload["_meta"] = {
            "extra": {
                "password": {"": {"rem": [["!config", "s"]]}},
                "a": {"": {"rem": [["!config", "s"]], "len": 3}},
                "note": {"x": {"": {"err": ["invalid_data"]}}},
            },
            "message": {"": {"rem": [["!config", "x"]]}},
            "user": {"": {"err": ["invalid_data"]}},
            "tags": "not an object",
        }
    return payload, item_type


def _scrub(scrubber: Any, payload: dict[str, Any], item_type: str, report: bool) -> Any:
    copied = copy.deepcopy(payload)
    rows = scrubber.scrub_event(copied, item_type, report=report)
    return orjson.dumps(copied, option=orjson.OPT_NON_STR_KEYS), rows


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payloads())
def test_fast_paths_agree_with_the_general_path(case: tuple[dict[str, Any], str]) -> None:
    payload, item_type = case
    assert GENERAL.policy.uses_selectors and not FAST.policy.uses_selectors
    for report in (True, False):
        assert _scrub(FAST, payload, item_type, report) == _scrub(
            GENERAL, payload, item_type, report
        )


def test_typed_objects_with_many_key_sets_agree() -> None:
    """Past the plans kept per node (key tuples), keys are looked up one by one."""
    warm = compile_scrubber(None)
    for n in range(90):
        frame: dict[str, Any] = {
            "function": "f",
            "filename": "/Users/bob/app.py",
            "vars": {"password": "x", "card": "4111 1111 1111 1111"},
            "context_line": "token=abcdef123456",
        }
        for i in range(n % 7):
            frame[f"extra_{n}_{i}"] = "mail bob@example.com"
        event = {
            "exception": {"values": [{"stacktrace": {"frames": [frame]}}]},
            f"key_{n}": "203.0.113.9",
            "platform": "python",
        }
        assert _scrub(warm, event, "event", True) == _scrub(
            compile_scrubber(None), event, "event", True
        )


def test_scan_cache_clean_set_follows_the_results() -> None:
    cache = ScanCache(max_entries=3, max_chars=1000, max_len=10)
    cache.put("clean", None)
    cache.put("dirty", ("[x]", (("r", 0, 3),), {}))
    cache.put_all({"also": None, "long string, not kept": None})
    assert cache.clean == {"clean", "also"}
    assert all(cache.data[text] is None for text in cache.clean)
    cache.put("four", None)  # over `max_entries`: emptied, then refilled
    assert cache.clean == {"four"} and set(cache.data) == {"four"}
    cache.clear()
    assert not cache.clean and not cache.data
