from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.protocol.auth import (
    Auth,
    AuthError,
    dsn_project_id,
    extract_auth,
    is_valid_public_key,
    parse_auth_header,
)

KEY = "abc123def4567890abc123def4567890"
OTHER = "ffffffffffffffffffffffffffffffff"
HEADER = f"Sentry sentry_key={KEY}, sentry_version=7, sentry_client=sentry.python/2.75.0"
DSN = f"http://{KEY}@127.0.0.1:3000/42"


def test_parse_auth_header() -> None:
    assert parse_auth_header(HEADER) == {
        "sentry_key": KEY,
        "sentry_version": "7",
        "sentry_client": "sentry.python/2.75.0",
    }


@pytest.mark.parametrize(
    "value",
    [
        f"sentry sentry_key={KEY},sentry_version=7",
        f"SENTRY   sentry_key = {KEY} ,  sentry_version=7  ",
        f'Sentry sentry_key="{KEY}", sentry_version="7"',
        f"Sentry key={KEY}, version=7",
        f"Sentry sentry_key={KEY}, sentry_version=7,",
    ],
)
def test_parse_auth_header_tolerates_spacing_quotes_and_prefixless_names(value: str) -> None:
    fields = parse_auth_header(value)
    assert fields["sentry_key"] == KEY
    assert fields["sentry_version"] == "7"


@pytest.mark.parametrize("value", [f"sentry_key={KEY}", f"Bearer {KEY}"])
def test_parse_auth_header_rejects(value: str) -> None:
    with pytest.raises(AuthError) as info:
        parse_auth_header(value)
    assert info.value.status == 401  # as Sentry answers a bad X-Sentry-Auth


def test_fields_sentry_skips_are_skipped_and_a_versions_minor_part_ignored() -> None:
    # As Sentry's auth parser: a field without `=` (or a name) is skipped, and the version
    # is read up to its first dot.
    value = f"Sentry sentry_key={KEY}, sentry_version=2.0, sentry_client=x/1, flag, =v"
    assert parse_auth_header(value) == {
        "sentry_key": KEY,
        "sentry_version": "2.0",
        "sentry_client": "x/1",
    }
    auth = extract_auth({"X-Sentry-Auth": value}, {})
    assert (auth.public_key, auth.version) == (KEY, "2")
    with pytest.raises(AuthError, match="no sentry_key"):
        extract_auth({"X-Sentry-Auth": "Sentry sentry_key"}, {})
    with pytest.raises(AuthError, match="invalid sentry_version"):
        extract_auth({"X-Sentry-Auth": f"Sentry sentry_key={KEY}, sentry_version=x.1"}, {})


def test_x_sentry_auth() -> None:
    auth = extract_auth({"X-Sentry-Auth": HEADER}, {})
    assert auth == Auth(KEY, "7", "sentry.python/2.75.0", None, "header")


def test_header_names_are_case_insensitive() -> None:
    assert extract_auth({"x-sentry-auth": HEADER}, {}).public_key == KEY
    assert extract_auth({"AUTHORIZATION": HEADER}, {}).source == "authorization"


def test_authorization_sentry() -> None:
    auth = extract_auth({"Authorization": HEADER.replace("Sentry", "sentry", 1)}, {})
    assert (auth.public_key, auth.source) == (KEY, "authorization")


def test_secret_key() -> None:
    auth = extract_auth({"X-Sentry-Auth": f"Sentry sentry_key={KEY}, sentry_secret=s3"}, {})
    assert auth.secret_key == "s3"


def test_authorization_basic() -> None:
    token = base64.b64encode(f"{KEY}:".encode()).decode()
    auth = extract_auth({"Authorization": f"Basic {token}"}, {})
    assert (auth.public_key, auth.source) == (KEY, "authorization")


@pytest.mark.parametrize("value", [f"Bearer {KEY}", "Token abc", "Basic !!!", "Digest x"])
def test_other_authorization_schemes_are_ignored(value: str) -> None:
    with pytest.raises(AuthError) as info:
        extract_auth({"Authorization": value}, {})
    assert info.value.status == 401
    # ... and do not conflict with real Sentry auth.
    assert extract_auth({"Authorization": value}, {"sentry_key": KEY}).source == "query"


def test_x_sentry_auth_without_prefix_counts_as_absent() -> None:
    with pytest.raises(AuthError) as info:
        extract_auth({"X-Sentry-Auth": f"sentry_key={KEY}"}, {})
    assert info.value.status == 401
    assert str(info.value) == "missing authorization information"


def test_query() -> None:
    query = {"sentry_key": KEY, "sentry_version": "7", "sentry_client": "sentry.javascript/8"}
    assert extract_auth({}, query) == Auth(KEY, "7", "sentry.javascript/8", None, "query")


def test_envelope_dsn_only_when_allowed() -> None:
    with pytest.raises(AuthError) as info:
        extract_auth({}, {}, DSN)
    assert info.value.status == 401
    auth = extract_auth({}, {}, DSN, allow_envelope=True)
    assert (auth.public_key, auth.source, auth.version) == (KEY, "envelope", None)


def test_envelope_dsn_invalid() -> None:
    with pytest.raises(AuthError) as info:
        extract_auth({}, {}, "not a dsn", allow_envelope=True)
    assert info.value.status == 400


def test_order_and_agreement() -> None:
    headers = {"X-Sentry-Auth": HEADER, "Authorization": f"Sentry sentry_key={KEY}"}
    auth = extract_auth(headers, {"sentry_key": KEY}, DSN, allow_envelope=True)
    assert auth.source == "header"
    auth = extract_auth({}, {"sentry_key": KEY}, DSN, allow_envelope=True)
    assert auth.source == "query"


def test_missing_fields_are_taken_from_later_sources() -> None:
    auth = extract_auth(
        {"X-Sentry-Auth": f"Sentry sentry_key={KEY}"},
        {"sentry_key": KEY, "sentry_version": "7", "sentry_client": "js/1"},
    )
    assert (auth.source, auth.version, auth.client) == ("header", "7", "js/1")


@pytest.mark.parametrize(
    ("headers", "query", "dsn"),
    [
        ({"X-Sentry-Auth": HEADER, "Authorization": f"Sentry sentry_key={OTHER}"}, {}, None),
        ({"X-Sentry-Auth": HEADER}, {"sentry_key": OTHER}, None),
        ({}, {"sentry_key": KEY}, f"http://{OTHER}@h/42"),
    ],
)
def test_conflicting_keys(headers: dict[str, str], query: dict[str, str], dsn: str | None) -> None:
    with pytest.raises(AuthError) as info:
        extract_auth(headers, query, dsn, allow_envelope=True)
    assert (info.value.status, str(info.value)) == (401, "conflicting authentication")


def test_missing() -> None:
    with pytest.raises(AuthError) as info:
        extract_auth({"User-Agent": "x"}, {"other": "1"})
    assert (info.value.status, str(info.value)) == (401, "missing authorization information")


@pytest.mark.parametrize(
    "key", ["", "a b", "abc!", "x" * 65, "<script>", "abc\x00", "-leading", "ключ"]
)
def test_invalid_keys(key: str) -> None:
    with pytest.raises(AuthError) as info:
        extract_auth({}, {"sentry_key": key})
    assert info.value.status == 401


@pytest.mark.parametrize("key", [KEY, KEY.upper(), "12345678-1234-1234-1234-123456789abc", "a"])
def test_valid_keys(key: str) -> None:
    assert is_valid_public_key(key)
    assert extract_auth({}, {"sentry_key": key}).public_key == key


def test_bad_version() -> None:
    with pytest.raises(AuthError) as info:
        extract_auth({"X-Sentry-Auth": f"Sentry sentry_key={KEY}, sentry_version=seven"}, {})
    assert info.value.status == 401


def test_dsn_project_id() -> None:
    assert dsn_project_id(DSN) == "42"
    assert dsn_project_id("https://k@host/prefix/7/") == "7"
    assert dsn_project_id(None) is None
    assert dsn_project_id("garbage") is None


@given(
    headers=st.dictionaries(
        st.sampled_from(["X-Sentry-Auth", "Authorization", "x-sentry-auth", "Other"]),
        st.text(max_size=80),
    ),
    query=st.dictionaries(
        st.sampled_from(["sentry_key", "sentry_version", "sentry_client", "x"]),
        st.text(max_size=40),
    ),
    dsn=st.one_of(st.none(), st.text(max_size=60)),
)
def test_fuzz_only_auth_errors(
    headers: dict[str, str], query: dict[str, str], dsn: str | None
) -> None:
    try:
        auth = extract_auth(headers, query, dsn, allow_envelope=True)
    except AuthError as exc:
        assert exc.status in (400, 401)
    else:
        assert is_valid_public_key(auth.public_key)
