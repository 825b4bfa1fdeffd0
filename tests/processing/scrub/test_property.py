"""Property: secrets planted anywhere in random nested events never survive."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay.processing.scrub import compile_scrubber

SCRUB = compile_scrubber(None)

SECRETS = [
    "4111 1111 1111 1111",
    "5500-0000-0000-0004",
    "DE89 3704 0044 0532 0130 00",
    "alice.smith@example.com",
    "203.0.113.77",
    "2001:db8::7334",
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl",
    "AKIAIOSFODNN7EXAMPLE",
    "ghp_0123456789abcdefghijABCDEFGHIJ012345",
    "sk_live_51HqLyjWDarjtT1zdp7dc",
    "xoxb-1234567890-abcdefghij",
    "078-05-1120",
]
#: Secrets that only count as such behind a sensitive key or in `key=value` form.
KEYED = "hunter2-Pa55w0rd"
SENSITIVE_KEYS = ["password", "api_key", "Authorization", "session_token", "secret", "X-Api-Key"]

words = st.sampled_from(
    ["ok", "order", "user", "id", "GET", "/api/x", "v1.2.3", "12", "x-y", "é", "日本"]
)
keys = st.sampled_from(
    ["a", "data", "message", "value", "extra", "k", "tags", "body", "note", "vars"]
)
separators = st.sampled_from([" ", ", ", " (", ": ", "\n", "'", '"', "<", "|"])


@st.composite
def planted_text(draw: st.DrawFn) -> tuple[str, str]:
    secret = draw(st.sampled_from(SECRETS))
    before = draw(st.lists(words, max_size=3))
    after = draw(st.lists(words, max_size=3))
    s1, s2 = draw(separators), draw(separators)
    return " ".join(before) + s1 + secret + s2 + " ".join(after), secret


def _nest(draw: st.DrawFn, leaf: Any, depth: int) -> Any:
    for _ in range(depth):
        if draw(st.booleans()):
            leaf = {draw(keys): leaf, "other": draw(words)}
        else:
            leaf = [draw(words), leaf]
    return leaf


@st.composite
def events(draw: st.DrawFn) -> tuple[dict[str, Any], list[str]]:
    planted: list[str] = []
    event: dict[str, Any] = {"event_id": "fe4272fa94e54186acc6e75b1bb21a2c", "platform": "python"}
    for _ in range(draw(st.integers(1, 4))):
        if draw(st.integers(0, 4)) == 0:
            key = draw(st.sampled_from(SENSITIVE_KEYS))
            leaf: Any = {key: KEYED}
            planted.append(KEYED)
        else:
            text, secret = draw(planted_text())
            leaf = text
            planted.append(secret)
        top = draw(
            st.sampled_from(
                [
                    "extra",
                    "contexts",
                    "tags",
                    "request",
                    "breadcrumbs",
                    "exception",
                    "message",
                    "user",
                ]
            )
        )
        nested = _nest(draw, leaf, draw(st.integers(0, 4)))
        existing = event.get(top)
        if isinstance(existing, list):
            existing.append(nested)
        else:
            event[top] = [nested] if existing is None else [existing, nested]
    return event, planted


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events())
def test_planted_secrets_never_survive(case: tuple[dict[str, Any], list[str]]) -> None:
    event, planted = case
    SCRUB.scrub_event(event)
    out = orjson.dumps(event).decode()
    for secret in planted:
        assert secret not in out


@settings(max_examples=200, deadline=None)
@given(planted_text())
def test_scrub_text_removes_planted(case: tuple[str, str]) -> None:
    text, secret = case
    assert secret not in SCRUB.scrub_text(text)
