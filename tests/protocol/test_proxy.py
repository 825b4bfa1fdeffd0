"""Proxy URLs, `no_proxy` entries, the `CONNECT` request and the proxy's status line."""

from __future__ import annotations

import base64

import pytest

from relay.protocol.proxy import InvalidProxy, Proxy, parse_no_proxy, tunnel_status


def test_a_proxy_url_gives_the_address_and_basic_credentials() -> None:
    proxy = Proxy.parse("http://relay:p%40ss%3Aw0rd@Proxy.Internal:3128")
    assert (proxy.host, proxy.port, proxy.shown) == ("proxy.internal", 3128, "proxy.internal:3128")
    assert proxy.authorization == "Basic " + base64.b64encode(b"relay:p@ss:w0rd").decode()
    assert "w0rd" not in proxy.shown


@pytest.mark.parametrize(
    ("url", "host", "port", "auth"),
    [
        ("http://proxy", "proxy", 80, None),
        ("http://proxy/", "proxy", 80, None),
        ("HTTP://10.0.0.5:8080", "10.0.0.5", 8080, None),
        ("http://[fd00::1]:3128", "fd00::1", 3128, None),
        ("http://user@proxy:3128", "proxy", 3128, "Basic " + base64.b64encode(b"user:").decode()),
        ("  http://proxy:3128  ", "proxy", 3128, None),
        ("https://proxy", "proxy", 443, None),
        ("HTTPS://proxy:8443", "proxy", 8443, None),
    ],
)
def test_proxy_url_forms(url: str, host: str, port: int, auth: str | None) -> None:
    proxy = Proxy.parse(url)
    assert (proxy.host, proxy.port, proxy.authorization) == (host, port, auth)
    assert proxy.tls == url.strip().lower().startswith("https")


def test_an_ipv6_proxy_is_shown_in_brackets() -> None:
    assert Proxy.parse("http://[fd00::1]:3128").shown == "[fd00::1]:3128"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("socks5://proxy:1080", "must start with http:// or https://"),
        ("proxy:3128", "must start with http:// or https://"),
        ("http://:3128", "has no host"),
        ("http://proxy:3128/path", "without a path"),
        ("http://proxy:3128?x=1", "without a path"),
        ("http://proxy:port", "not a proxy URL"),
        ("http://proxy:99999", "not a proxy URL"),
        ("http://proxy:0", "has port 0"),
        ("http://[fd00::1:3128", "not a proxy URL"),
        ("http://pro xy:3128", "has a host name that cannot be one"),
        ("http://proxy\x00:3128", "has a host name that cannot be one"),
        ("http://[fe80::1%25eth0]:3128", "has a host name that cannot be one"),
    ],
)
def test_bad_proxy_urls_say_why(url: str, message: str) -> None:
    with pytest.raises(InvalidProxy, match=message):
        Proxy.parse(url)


def test_no_proxy_names_cover_their_subdomains_and_nothing_else() -> None:
    proxy = Proxy.parse(
        "http://proxy:3128", ["example.com", ".internal", "*.corp.net", "LocalHost"]
    )
    assert proxy.bypasses("example.com")
    assert proxy.bypasses("ingest.example.com")
    assert proxy.bypasses("EXAMPLE.COM.")
    assert not proxy.bypasses("notexample.com")
    assert not proxy.bypasses("example.com.evil.org")
    assert proxy.bypasses("glitchtip.internal")
    assert proxy.bypasses("a.b.corp.net") and proxy.bypasses("corp.net")
    assert proxy.bypasses("localhost")
    assert not proxy.bypasses("sentry.io")


def test_no_proxy_international_names_match_in_their_ascii_form() -> None:
    proxy = Proxy.parse("http://proxy:3128", ["\u043f\u0440\u0438\u043c\u0435\u0440.\u0440\u0444"])
    assert proxy.names == ("xn--e1afmkfd.xn--p1ai",)
    assert proxy.bypasses("sentry.xn--e1afmkfd.xn--p1ai")  # as the client names the host


def test_no_proxy_addresses_and_ranges() -> None:
    proxy = Proxy.parse("http://proxy:3128", "10.0.0.0/8, 192.168.1.7,[::1], fd00::/8")
    assert proxy.bypasses("10.20.30.40")
    assert proxy.bypasses("192.168.1.7")
    assert not proxy.bypasses("192.168.1.8")
    assert proxy.bypasses("::1") and proxy.bypasses("[::1]")
    assert proxy.bypasses("fd12::5")
    assert not proxy.bypasses("2001:db8::1")
    assert not proxy.bypasses("sentry.io")


def test_a_star_bypasses_everything_and_empty_entries_are_ignored() -> None:
    assert Proxy.parse("http://proxy", "*").bypasses("sentry.io")
    nothing = Proxy.parse("http://proxy", " , ,")
    assert not nothing.bypasses("sentry.io") and not nothing.bypasses("127.0.0.1")
    assert parse_no_proxy("") == ((), (), False)


@pytest.mark.parametrize(
    "entry", ["example.com:8443", "http://example.com", "a b", "user@host", ".", "a..\u0431"]
)
def test_bad_no_proxy_entries_say_why(entry: str) -> None:
    with pytest.raises(InvalidProxy, match="is not a host name, an IP address, a CIDR range"):
        parse_no_proxy([entry])


def test_the_connect_request() -> None:
    plain = Proxy.parse("http://proxy:3128")
    assert plain.connect_request("sentry.io", 443) == (
        b"CONNECT sentry.io:443 HTTP/1.1\r\nHost: sentry.io:443\r\n\r\n"
    )
    auth = Proxy.parse("http://a:b@proxy:3128")
    assert auth.connect_request("fd00::2", 8443) == (
        b"CONNECT [fd00::2]:8443 HTTP/1.1\r\nHost: [fd00::2]:8443\r\n"
        b"Proxy-Authorization: Basic YTpi\r\n\r\n"
    )


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"HTTP/1.1 200 Connection established\r\n\r\n", 200),
        (b"HTTP/1.0 200\r\nProxy-Agent: squid\r\n\r\n", 200),
        (b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n", 407),
    ],
)
def test_the_status_of_a_connect_answer(head: bytes, status: int) -> None:
    assert tunnel_status(head) == status


@pytest.mark.parametrize(
    "head",
    [
        b"SSH-2.0-OpenSSH\r\n\r\n",
        b"HTTP/2 200\r\n\r\n",
        b"HTTP/1.1 2x0\r\n\r\n",
        b"HTTP/1.1 2000 OK\r\n\r\n",
    ],
)
def test_a_connect_answer_that_is_not_http_is_refused(head: bytes) -> None:
    with pytest.raises(ValueError, match="not an HTTP answer"):
        tunnel_status(head)
