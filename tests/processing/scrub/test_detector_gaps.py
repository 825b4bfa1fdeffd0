"""The strict default policy: key names and value shapes that must never leave unscrubbed.

One-time-password and cookie keys, Sentry's and sentry-python's sensitive key names,
credentials in URLs without a user, session cookies in free text, URL-encoded emails,
query-string passwords, PGP and truncated PEM keys, SSNs of every area number, span
links' attributes, and `_meta` objects the client sent.
"""

from __future__ import annotations

import copy
from typing import Any

import orjson
import pytest

from relay.processing.scrub import compile_scrubber, validate_scrubbing_override
from relay.protocol.envelope import make_envelope, parse_envelope
from tests.processing.scrub.conftest import OFF, cfg

SCRUB = compile_scrubber(None)
EMAIL = "alice.leak@example.com"
CARD = "4111111111111111"


def scrubbed(event: dict[str, Any], item_type: str = "event") -> dict[str, Any]:
    out = copy.deepcopy(event)
    SCRUB.scrub_event(out, item_type, report=False)
    return out


def extra_after(key: str, value: Any) -> Any:
    return scrubbed({"extra": {key: value}})["extra"][key]


def text_after(text: str) -> str:
    return SCRUB.scrub_text(text)


# --- keys -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    [
        # One-time passwords and second factors, as a word of the key.
        "otp",
        "otp_code",
        "otpCode",
        "totp",
        "hotp",
        "user_otp",
        "user.otp",
        "Two-Factor",
        "two_factor_code",
        "2fa_code",
        # Names Sentry's and sentry-python's denylists filter (substring).
        "author",
        "tokenizer_name",
        "proxy-authorization",
        "XSRF-TOKEN",
        "aws_credential",
        # Sensitive names filtered exactly (case and `-`/`_` ignored).
        "pass",
        "PWD",
        "pin",
        "cvv",
        "card_cvc",
        "cvv2",
        "credential",
        "session_key",
        "connection_string",
        "ConnectionString",
        "database_url",
        "DATABASE-URL",
        "encryption_key",
        "client_secret",
        "access_key",
        "signing_key",
        # The same as the last segment of a dotted (OpenTelemetry) name.
        "db.connection_string",
        "http.request.header.cookie.sessionid",
        # Cookie headers under any name that ends in `cookie`/`cookies`.
        "cookie",
        "set-cookie",
        "Set-Cookie",
        "http.request.header.cookie",
        "http.response.header.set_cookie",
        "http.response.header.set-cookie",
        "X-Forwarded-Cookie",
        "request_cookies",
        "setCookie",
    ],
)
def test_sensitive_keys_are_filtered(key: str) -> None:
    assert extra_after(key, "hunter2-value") == "[Filtered]"


@pytest.mark.parametrize(
    "key",
    ["footprint", "hotpath", "snapshot_path", "pinned", "passenger", "cookie_consent", "topic"],
)
def test_ordinary_keys_are_kept(key: str) -> None:
    assert extra_after(key, "plain words") == "plain words"


def test_a_project_cannot_exempt_the_new_keys() -> None:
    problems = validate_scrubbing_override(cfg(), cfg(safe_fields=["otp_code", "db.pin"]))
    assert [p.path for p in problems] == ["safe_fields[0]", "safe_fields[1]"]


def test_cookie_attributes_of_spans_and_logs_are_filtered() -> None:
    jar = "session=eyJ1aWQiOjQyfQ.Zk1x.sigSIG; laravel_session=LSVALUE123; connect.sid=s%3AX"
    attrs = {
        "http.request.header.cookie": {"value": jar, "type": "string"},
        "http.response.header.set-cookie": {"value": jar, "type": "string"},
        "http.request.method": {"value": "GET", "type": "string"},
    }
    for item_type in ("span", "log"):
        payload = {"version": 2, "items": [{"name": "GET /", "attributes": copy.deepcopy(attrs)}]}
        out = scrubbed(payload, item_type)["items"][0]["attributes"]
        assert out["http.request.header.cookie"]["value"] == "[Filtered]"
        assert out["http.response.header.set-cookie"]["value"] == "[Filtered]"
        assert out["http.request.method"]["value"] == "GET"


# --- values -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "out"),
    [
        # Credentials in URLs without a user (redis-py, Celery).
        ("redis://:Sup3rS3cretPw@redis:6379/0", "redis://:[Filtered]@redis:6379/0"),
        ("broker rediss://:pw%2Fx@cache:6380 up", "broker rediss://:[Filtered]@cache:6380 up"),
        # URL-encoded emails.
        ("GET /u?email=alice.leak%40example.com&x=1", "GET /u?email=[email]&x=1"),
        ("to=bob%2Bx%40mail.example.org&a=1", "to=[email]&a=1"),
        # Passwords and PINs in query strings.
        ("/login?user=bob&pass=hunter4&next=/", "/login?user=bob&pass=[Filtered]&next=/"),
        ("/login?pwd=hunter4", "/login?pwd=[Filtered]"),
        ("/card?PIN=1234#x", "/card?PIN=[Filtered]#x"),
        ("/x?passcode=99&pinned=1", "/x?passcode=[Filtered]&pinned=1"),
        # SSNs of every area number, as Sentry's `usssn` finds them.
        ("ssn 912-34-5678", "ssn [Filtered]"),
        ("ssn 666-12-3456.", "ssn [Filtered]."),
        # Session cookies in free text.
        (
            "Cookie: session=eyJ1aWQiOjQyfQ.Zk1x.sig; theme=dark",
            "Cookie: session=[Filtered]; theme=dark",
        ),
        ("laravel_session=LSVALUE123;", "laravel_session=[Filtered];"),
        ("_myapp_session=abc123 end", "_myapp_session=[Filtered] end"),
        ("connect.sid=s%3AEXPRESSSID.sig", "connect.sid=[Filtered]"),
    ],
)
def test_value_detectors(text: str, out: str) -> None:
    assert text_after(text) == out


@pytest.mark.parametrize(
    "text",
    [
        "x?passenger=3&pinned=yes",
        "session started at 10:00",
        "http://:8080/path",
        "ssn 912-34-56789",
        "%40 is an encoded at sign",
    ],
)
def test_value_detectors_leave_alone(text: str) -> None:
    assert text_after(text) == text


def test_pgp_private_key_block() -> None:
    text = (
        "key -----BEGIN PGP PRIVATE KEY BLOCK-----\nlQOYBGSECRETBODY\n=ab12\n"
        "-----END PGP PRIVATE KEY BLOCK----- done"
    )
    out = text_after(text)
    assert "SECRETBODY" not in out
    assert out.endswith("-----END PGP PRIVATE KEY BLOCK----- done")


def test_pem_key_without_end_line_is_filtered_to_the_end() -> None:
    text = "cfg: -----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA7PEMBODY"
    assert text_after(text) == "cfg: -----BEGIN RSA PRIVATE KEY-----\n[Filtered]"
    # Each string of an event ends its own key.
    out = scrubbed({"extra": {"a": text, "b": "kept " + EMAIL}})["extra"]
    assert out == {"a": "cfg: -----BEGIN RSA PRIVATE KEY-----\n[Filtered]", "b": "kept [email]"}


def test_pii_config_rules_see_the_same_shapes() -> None:
    rules = {
        "applications": {"extra.a": ["@urlauth"], "extra.b": ["@usssn"], "extra.c": ["@pemkey"]}
    }
    scrubber = compile_scrubber(cfg(**OFF, pii_config=rules))
    event: dict[str, Any] = {
        "extra": {
            "a": "redis://:Sup3rS3cretPw@redis:6379/0",
            "b": "912-34-5678",
            "c": "-----BEGIN PRIVATE KEY-----\nMIIBODY",
        }
    }
    scrubber.scrub_event(event)
    assert event["extra"] == {
        "a": "redis://[auth]@redis:6379/0",
        "b": "***********",
        "c": "-----BEGIN PRIVATE KEY-----\n[pemkey]",
    }


# --- structure --------------------------------------------------------------------------------


def test_span_links_attributes_are_scrubbed() -> None:
    link = {
        "trace_id": "e" * 32,
        "span_id": "b" * 16,
        "sampled": True,
        "attributes": {
            "user.email": EMAIL,
            "card": CARD,
            "auth_token": {"value": "tok-abc", "type": "string"},
        },
    }
    span = {"span_id": "a" * 16, "op": "db", "links": [link]}
    event = {"type": "transaction", "spans": [copy.deepcopy(span)]}
    for out in (
        scrubbed(event, "transaction")["spans"][0]["links"][0],
        scrubbed({"version": 2, "items": [copy.deepcopy(span)]}, "span")["items"][0]["links"][0],
        scrubbed(copy.deepcopy(span), "span")["links"][0],
    ):
        assert out["attributes"] == {
            "user.email": "[email]",
            "card": "[Filtered]",
            "auth_token": {"value": "[Filtered]", "type": "string"},
        }
        assert out["trace_id"] == "e" * 32


def test_client_meta_is_dropped_before_remarks_are_added() -> None:
    event = {
        "message": "m",
        "extra": {"mail": EMAIL, "_meta": {"": {"val": EMAIL}}},
        "_meta": {"message": {"": {"val": f"{EMAIL} {CARD}", "rem": [["!x", "s"]]}}},
    }
    out = scrubbed(event)
    assert out["_meta"] == {
        "extra": {"mail": {"": {"rem": [["@email:replace", "s", 0, 7]], "len": len(EMAIL)}}}
    }
    assert "_meta" not in out["extra"]
    # Nothing found: no remarks, and still no client `_meta`.
    quiet = scrubbed({"message": "m", "_meta": {"message": {"": {"val": EMAIL}}}})
    assert quiet == {"message": "m"}


def test_client_meta_is_dropped_with_meta_off_and_in_logs() -> None:
    scrubber = compile_scrubber(cfg(meta=False))
    event: dict[str, Any] = {"message": "m", "_meta": {"message": {"": {"val": EMAIL}}}}
    scrubber.scrub_event(event)
    assert event == {"message": "m"}
    log = {"version": 2, "items": [{"body": "b", "_meta": {"body": {"": {"val": EMAIL}}}}]}
    assert scrubbed(log, "log") == {"version": 2, "items": [{"body": "b"}]}


def test_client_meta_in_an_envelope_never_reaches_the_upstream() -> None:
    event = {
        "event_id": "1" * 32,
        "message": "m",
        "_meta": {"message": {"": {"val": f"{EMAIL} {CARD}"}}},
    }
    span = {
        "version": 2,
        "items": [{"span_id": "f" * 16, "links": [{"attributes": {"to": EMAIL}}], "_meta": {}}],
    }
    built = make_envelope(
        {"event_id": "1" * 32},
        [({"type": "event"}, orjson.dumps(event)), ({"type": "span"}, orjson.dumps(span))],
    )
    envelope = parse_envelope(built.serialize())
    report = SCRUB.scrub_envelope(envelope)
    assert report.changed_items == [0, 1]
    body = envelope.serialize()
    assert EMAIL.encode() not in body and CARD.encode() not in body
    assert b'"_meta"' not in body
