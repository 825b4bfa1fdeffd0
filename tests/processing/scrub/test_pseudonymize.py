"""Pseudonymized values: stable across events, different across keys, never the original."""

from __future__ import annotations

from typing import Any

from relay.processing.scrub import compile_scrubber
from relay.protocol.envelope import make_envelope
from tests.processing.scrub.conftest import cfg

KEY_A = "a-very-long-key-number-one"
KEY_B = "a-very-long-key-number-two"


def event(uid: str, email: str) -> dict[str, Any]:
    return {"user": {"id": uid, "email": email, "username": "alice"}, "message": "hi"}


def test_stable_across_events_and_distinct_per_user() -> None:
    s = compile_scrubber(cfg(pseudonymize={"fields": ["user.id", "$user.email"], "key": KEY_A}))
    e1, e2, e3 = event("42", "a@x.io"), event("42", "a@x.io"), event("43", "b@x.io")
    for e in (e1, e2, e3):
        s.scrub_event(e)
    assert e1["user"]["id"] == e2["user"]["id"] != "42"
    assert e1["user"]["email"] == e2["user"]["email"] != "a@x.io"
    assert e1["user"]["id"] != e3["user"]["id"]
    assert len(e1["user"]["id"]) == 64
    assert e1["user"]["username"] == "alice"
    assert e1["_meta"]["user"]["id"][""]["rem"] == [["@pseudonymize", "p", 0, 64]]


def test_different_keys_differ() -> None:
    a = compile_scrubber(cfg(pseudonymize={"fields": ["user.id"], "key": KEY_A}))
    b = compile_scrubber(cfg(pseudonymize={"fields": ["user.id"], "key": KEY_B}))
    ea, eb = event("42", "x@y.io"), event("42", "x@y.io")
    a.scrub_event(ea)
    b.scrub_event(eb)
    assert ea["user"]["id"] != eb["user"]["id"]


def test_project_adds_fields_with_org_key() -> None:
    org = cfg(pseudonymize={"fields": ["user.id"], "key": KEY_A})
    project = cfg(pseudonymize={"fields": ["user.username"], "key": KEY_A})
    s = compile_scrubber(org, project)
    e = event("42", "x@y.io")
    s.scrub_event(e)
    assert e["user"]["id"] != "42"
    assert e["user"]["username"] != "alice"
    assert e["user"]["email"] == "[email]"


def test_trace_header_user_id_follows_user_id() -> None:
    s = compile_scrubber(cfg(pseudonymize={"fields": ["user.id"], "key": KEY_A}))
    e = event("42", "x@y.io")
    s.scrub_event(e)
    env = make_envelope(
        {"trace": {"trace_id": "86f2111e292348f990b40c2f7ff035f3", "user_id": "42"}}, []
    )
    s.scrub_envelope(env)
    assert env.headers["trace"]["user_id"] == e["user"]["id"]
