"""HTTP(S) URLs as the relay sends to them: one check for the config and the client."""

from __future__ import annotations

import pytest

from relay.protocol.dsn import Dsn, InvalidDsn
from relay.protocol.url import HttpUrl, InvalidUrl, ascii_host, parse_http_url


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://sentry.example.com", HttpUrl("http", "sentry.example.com", 80, "/")),
        (
            "HTTPS://Sentry.Example.com:8443/a?b=c",
            HttpUrl("https", "sentry.example.com", 8443, "/a?b=c"),
        ),
        ("http://[::1]:9000/x", HttpUrl("http", "::1", 9000, "/x")),
        ("http://sentry_web:9000", HttpUrl("http", "sentry_web", 9000, "/")),
        ("https://bücher.example/ä", HttpUrl("https", "xn--bcher-kva.example", 443, "/%C3%A4")),
        ("http://key@host.example./1", HttpUrl("http", "host.example.", 80, "/1")),
    ],
)
def test_urls_a_request_can_be_sent_to(url: str, expected: HttpUrl) -> None:
    assert parse_http_url(url) == expected


def test_the_host_header_names_the_port_only_when_not_the_default() -> None:
    assert parse_http_url("https://h:443/").netloc == "h"
    assert parse_http_url("http://h:8080/").netloc == "h:8080"
    assert parse_http_url("http://[::1]/").netloc == "[::1]"


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("ftp://host/", "must start with http:// or https://"),
        ("http://", "has no host"),
        ("http://:8080/", "has no host"),
        ("http://host:99999/", "has a host or port that cannot be one"),
        ("http://host:x/", "has a host or port that cannot be one"),
        ("http://[::1/", "has a host or port that cannot be one"),
        ("http://host:0/", "has port 0"),
        ("http://a..b/", "has a host name that cannot be one"),
        ("http://" + "x" * 64 + ".example/", "has a host name that cannot be one"),
        ("http://ex ample.com/", "has a host name that cannot be one"),
        ("http://a..\u0431/", "has a host name that cannot be one"),
        ("http://\u00a8.example/", "has a host name that cannot be one"),  # IDNA: " \u0308"
        ("http://a!b.example/", "has a host name that cannot be one"),
        ("http://[zz::1]/", "has a host or port that cannot be one"),
        ("http://host/a b", "has a path that cannot be sent in a request line"),
        ("http://host/a\x00b", "has a path that cannot be sent in a request line"),
        ("http://host/a\x7fb?c", "has a path that cannot be sent in a request line"),
        ("http://host/\udc80", "has a path that cannot be sent in a request line"),
    ],
)
def test_urls_no_request_can_be_sent_to(url: str, why: str) -> None:
    with pytest.raises(InvalidUrl) as raised:
        parse_http_url("http://secret-key@" + url[7:] if url.startswith("http://") else url)
    assert str(raised.value) == why
    assert "secret-key" not in str(raised.value)


def test_ascii_host_leaves_addresses_alone() -> None:
    assert ascii_host("127.0.0.1") == "127.0.0.1"
    assert ascii_host("fe80::1") == "fe80::1"
    assert ascii_host("Пример.рф") == "xn--e1afmkfd.xn--p1ai"


def test_a_dsn_whose_host_cannot_be_sent_to_is_invalid() -> None:
    with pytest.raises(InvalidDsn, match=r"^not a valid DSN: has a host name that cannot be one$"):
        Dsn.parse("https://0123abcd@a..b/42")
    assert Dsn.parse("https://0123abcd@bücher.example/42").host == "bücher.example"
