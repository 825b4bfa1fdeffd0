"""HTTP(S) URLs in the form a request to them needs.

    parse_http_url(url) -> HttpUrl    scheme, ASCII host, port, request target
    ascii_host(hostname) -> str       a host name as DNS and the `Host` header take it
    local_authority(host, port)       `host:port` that reaches a listener on this machine
    InvalidUrl(ValueError)            what is wrong, never quoting the URL

The same checks run when a config is validated (`upstream.url`, DSNs) and when the
upstream client sends, so a URL that `relay check-config` passes can be sent to. An
internationalized host name goes out in its IDNA form, a path beyond ASCII as UTF-8,
percent-encoded (as browsers do). Messages do not quote the URL: it may carry a key.
"""

from __future__ import annotations

import ipaddress
import string
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

__all__ = ["HttpUrl", "InvalidUrl", "ascii_host", "local_authority", "parse_http_url"]

#: What a request target may hold as it is (printable ASCII but the space).
_PRINTABLE = "".join(chr(c) for c in range(0x21, 0x7F))
_PRINTABLE_SET = frozenset(_PRINTABLE)


#: What a host name may hold once in ASCII: letters, digits, hyphens, dots, and the
#: underscores of container and service names.
_HOST_CHARS = frozenset(string.ascii_letters + string.digits + "-._")


class InvalidUrl(ValueError):
    """A URL the relay cannot send a request to; the message says why, without the URL."""


@dataclass(frozen=True, slots=True)
class HttpUrl:
    #: `http` or `https`, lower case.
    scheme: str
    #: The host as DNS takes it: ASCII (IDNA for a name beyond it); an IPv6 address bare.
    host: str
    port: int
    #: The request line's target: path (at least `/`) and query, ASCII.
    target: str

    @property
    def netloc(self) -> str:
        """The `Host` header's value: the port only when it is not the scheme's default."""
        shown = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return shown if self.port == default else f"{shown}:{self.port}"


def ascii_host(hostname: str) -> str:
    """`hostname` as DNS and the `Host` header take it. Raises `InvalidUrl` for a name no
    request can carry: empty or over-long labels, spaces, punctuation, control characters."""
    if not hostname:
        raise InvalidUrl("has no host")
    if ":" in hostname:  # in brackets in the URL: an IPv6 address, nothing else
        try:
            ipaddress.IPv6Address(hostname)
        except ValueError:
            raise InvalidUrl("has a host name that cannot be one") from None
        return hostname
    try:
        # IDNA 2003, as browsers and DNS resolvers long did; it leaves ASCII names as
        # they are but for checking their labels' lengths.
        host = hostname.encode("idna").decode("ascii")
    except UnicodeError:
        raise InvalidUrl("has a host name that cannot be one") from None
    if not _HOST_CHARS.issuperset(host):  # nameprep can even turn a character into a space
        raise InvalidUrl("has a host name that cannot be one")
    return host


def parse_http_url(url: str) -> HttpUrl:
    """Checks an `http://` or `https://` URL and gives its parts. Raises `InvalidUrl`."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:  # its message quotes the URL
        raise InvalidUrl("has a host or port that cannot be one") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise InvalidUrl("must start with http:// or https://")
    host = ascii_host(parts.hostname or "")
    if port == 0:
        raise InvalidUrl("has port 0")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if not target.isascii():
        try:
            target = quote(target, safe=_PRINTABLE)
        except UnicodeEncodeError:  # a lone surrogate
            raise InvalidUrl("has a path that cannot be sent in a request line") from None
    if not _PRINTABLE_SET.issuperset(target):  # spaces, control characters
        raise InvalidUrl("has a path that cannot be sent in a request line")
    return HttpUrl(scheme, host, port or (443 if scheme == "https" else 80), target)


#: Where to reach a listener on every address: the loopback of the same family (a socket
#: on `::` takes no IPv4 connections, asyncio binds it IPv6-only).
_LOOPBACK = {"0.0.0.0": "127.0.0.1", "::": "::1"}


def local_authority(host: str, port: int) -> str:
    """`host:port` for a request from this machine to a listener on `host` (`listen.host`):
    an every-address host becomes its family's loopback, an IPv6 literal gets brackets."""
    host = host.strip("[]")
    host = _LOOPBACK.get(host, host)
    shown = f"[{host}]" if ":" in host else host
    return f"{shown}:{port}"
