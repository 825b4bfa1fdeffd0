"""Value detectors: what they find, and what they must leave alone."""

from __future__ import annotations

import pytest

from relay.processing.scrub import compile_scrubber
from relay.processing.scrub.detectors import iban_ok, luhn_ok

SCRUB = compile_scrubber(None)


@pytest.mark.parametrize(
    ("text", "out"),
    [
        ("card 4111 1111 1111 1111 ok", "card [Filtered] ok"),
        ("card 4111-1111-1111-1111", "card [Filtered]"),
        ("amex 378282246310005", "amex [Filtered]"),
        ("iban DE89 3704 0044 0532 0130 00.", "iban [Filtered]."),
        ("iban GB82WEST12345698765432", "iban [Filtered]"),
        ("ssn 078-05-1120", "ssn [Filtered]"),
        ("mail bob@example.org now", "mail [email] now"),
        ("from 198.51.100.23:443", "from [ip]:443"),
        ("v6 2001:db8::1 here", "v6 [ip] here"),
        ("https://user:pa55@api.example.com/x", "https://user:[Filtered]@api.example.com/x"),
        (
            "postgres://shop:Pa55w0rd!@db.internal:5432/shop",
            "postgres://shop:[Filtered]@db.internal:5432/shop",
        ),
        ("Authorization: Bearer 9f8e7d6c5b4a", "Authorization: [Filtered]"),
        ("got Bearer abc.def.ghi", "got [Filtered]"),
        ("jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl end", "jwt [Filtered] end"),
        ("aws AKIAIOSFODNN7EXAMPLE", "aws [Filtered]"),
        ("gh ghp_0123456789abcdefghijABCDEFGHIJ012345", "gh [Filtered]"),
        ("gl glpat-xxxxxxxxxxxxxxxxxxxx", "gl [Filtered]"),
        ("slack xoxb-1234567890-abcdef", "slack [Filtered]"),
        ("stripe sk_live_51HqLyjWDarjtT1zdp7dc", "stripe [Filtered]"),
        ("google AIzaSyA1234567890abcdefghijklmnopqrstuv", "google [Filtered]"),
        ('password="hunter2" next', 'password="[Filtered]" next'),
        ("api_key = sk-thing", "api_key = [Filtered]"),
        ("session_token: 'abc def'", "session_token: '[Filtered]'"),
        ("secret=s3cr3t-value&x=1", "secret=[Filtered]&x=1"),
        ("path /home/alice/app.py", "path /home/[Filtered]/app.py"),
        ("C:\\Users\\bob\\file", "C:\\Users\\[Filtered]\\file"),
        (
            "-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----",
            "-----BEGIN RSA PRIVATE KEY-----\n[Filtered]\n-----END RSA PRIVATE KEY-----",
        ),
    ],
)
def test_scrub_text_finds(text: str, out: str) -> None:
    assert SCRUB.scrub_text(text) == out


@pytest.mark.parametrize(
    "text",
    [
        "fe4272fa94e54186acc6e75b1bb21a2c",  # event id
        "86f2111e292348f990b40c2f7ff035f3-88ada23d0c48924e-1",  # sentry-trace
        "0f8fad5b-d9cb-469f-a165-70867728950e",  # a bare UUID (not a secret by itself)
        "shop@1.4.2",  # release
        "my-app@2.3.4+build.7",
        "3.11.7 (main, May  9 2026, 07:35:25) [GCC 12.2.0]",  # runtime build
        "version 1.2.3 and 10.0.19041",
        "2026-11-22T02:07:16.963348Z",  # timestamp
        "1795313236.963435",
        "line 1234, column 56",
        "shop.payments.charge",  # module / function
        "sentry_sdk.integrations.aiohttp",
        "/srv/shop/app/checkout.py",  # ordinary paths
        "/usr/local/lib/python3.11/site-packages/sentry_sdk/logger.py",
        "GET /api/users/42",  # a route, not a home directory
        "order 1234 total 5678 qty 3",
        "1234567890123",  # a number that fails Luhn
        "4111 1111 1111 1112",  # card-like, Luhn fails
        "DE12 3456 7890 1234 5678 90",  # IBAN-like, checksum fails
        "std::vector<int> a::b",
        "12:30:45",
        "author=Bob",
        "pypi:sentry-sdk",
        "token count 5",
        "password reset requested",
    ],
)
def test_default_policy_leaves_alone(text: str) -> None:
    assert SCRUB.scrub_text(text) == text


def test_event_fields_not_touched() -> None:
    event = {
        "event_id": "fe4272fa94e54186acc6e75b1bb21a2c",
        "timestamp": "2026-11-22T02:07:16.964119Z",
        "release": "shop@1.4.2",
        "dist": "4111111111111111",
        "environment": "production",
        "modules": {"urllib3": "2.8.0"},
        "contexts": {
            "trace": {"trace_id": "86f2111e292348f990b40c2f7ff035f3", "span_id": "88ada23d0c48924e"}
        },
        "exception": {
            "values": [
                {
                    "type": "KeyError",
                    "module": "auth.tokens",
                    "stacktrace": {
                        "frames": [
                            {
                                "function": "check_password",
                                "module": "auth.passwords",
                                "filename": "/home/alice/auth.py",
                                "abs_path": "/home/alice/auth.py",
                                "lineno": 4111111111111111,
                                "colno": 12,
                            }
                        ]
                    },
                }
            ]
        },
        "spans": [{"span_id": "8d78c59d9752bb92", "op": "db", "start_timestamp": 1.5}],
        "extra": {"count": 1234, "ratio": 0.5, "flag": True},
    }
    import copy

    before = copy.deepcopy(event)
    assert SCRUB.scrub_event(event) == []
    assert event == before


def test_luhn_and_iban() -> None:
    assert luhn_ok("4111111111111111")
    assert not luhn_ok("4111111111111112")
    assert iban_ok("DE89 3704 0044 0532 0130 00")
    assert iban_ok("GB82WEST12345698765432")
    assert not iban_ok("GB82WEST12345698765433")
    assert not iban_ok("DE89")
