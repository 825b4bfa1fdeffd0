"""An HTTP proxy on the way to the upstream (`upstream.proxy`): its address, the hosts
that bypass it (`upstream.no_proxy`), and the two protocol steps the upstream client
needs from it.

- `http` upstreams: each request goes to the proxy with the whole URL as its target
  (`POST http://host/api/1/envelope/ HTTP/1.1`) and a `Proxy-Authorization` header when
  the proxy URL has a user.
- `https` upstreams: a `CONNECT host:443` tunnel, in which TLS runs end to end with the
  upstream: the proxy sees neither the envelopes nor the DSN keys.

An `http://` proxy is reached over plain TCP, as most egress proxies are; an `https://`
one over TLS (its certificate checked like an upstream's), and an `https` upstream's TLS
then runs inside that. Authentication is Basic, the only scheme a URL can carry.
"""

from __future__ import annotations

import base64
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

__all__ = ["InvalidProxy", "Proxy", "parse_no_proxy", "tunnel_status"]

#: The longest answer head to a `CONNECT` the client reads.
MAX_TUNNEL_HEAD = 16 * 1024

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class InvalidProxy(ValueError):
    """The proxy URL or a `no_proxy` entry cannot be used; the message says why."""


@dataclass(frozen=True, slots=True)
class Proxy:
    host: str
    port: int
    #: The `Proxy-Authorization` value when the URL has a user, else None.
    authorization: str | None = None
    #: `no_proxy` host names: each covers itself and its subdomains.
    names: tuple[str, ...] = ()
    #: `no_proxy` addresses and ranges.
    networks: tuple[IpNetwork, ...] = ()
    #: `no_proxy` has `*`: nothing goes through the proxy.
    bypass_all: bool = False
    #: An `https://` proxy: the connection to it is TLS.
    tls: bool = False

    @classmethod
    def parse(cls, url: str, no_proxy: str | Sequence[str] = ()) -> Proxy:
        """`http[s]://[user:password@]host[:port]` (port 80 or 443 when left out), and the hosts
        that bypass it: names (`example.com` covers `a.example.com` too; a leading dot
        is the same), IP addresses, CIDR ranges, or `*`; a string is split at commas,
        as in the `NO_PROXY` environment variable. Raises `InvalidProxy`."""
        # urllib's errors quote the URL's netloc or what it read as the port, which is
        # part of the password when that holds a '/', '?' or '#': never shown.
        try:
            parts = urlsplit(url.strip())
        except ValueError:
            raise InvalidProxy("not a proxy URL") from None
        try:
            port = parts.port
        except ValueError:
            raise InvalidProxy(
                "not a proxy URL: the port is not a number up to 65535 (a '/', '?' or '#' "
                "in the user or password must be percent-encoded)"
            ) from None
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https"):
            raise InvalidProxy("must start with http:// or https:// (an HTTP proxy)")
        if not parts.hostname:
            raise InvalidProxy("has no host")
        if port == 0:
            raise InvalidProxy("has port 0")
        if any(c.isspace() or ord(c) < 32 or c in "\x7f%" for c in parts.hostname):
            raise InvalidProxy("has a host name that cannot be one")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise InvalidProxy("must be http[s]://[user:password@]host[:port], without a path")
        authorization = None
        if parts.username is not None:
            userinfo = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            token = base64.b64encode(userinfo.encode("utf-8")).decode("ascii")
            authorization = f"Basic {token}"
        names, networks, bypass_all = parse_no_proxy(no_proxy)
        tls = scheme == "https"
        return cls(
            parts.hostname,
            port or (443 if tls else 80),
            authorization,
            names,
            networks,
            bypass_all,
            tls,
        )

    @property
    def shown(self) -> str:
        """The proxy's address for messages (never its credentials)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def bypasses(self, host: str) -> bool:
        """Whether a request to `host` goes straight to it rather than through the proxy."""
        if self.bypass_all:
            return True
        host = host.lower().strip("[]").rstrip(".")
        for name in self.names:
            if host == name or host.endswith("." + name):
                return True
        if self.networks:
            try:
                address = ipaddress.ip_address(host)
            except ValueError:
                return False
            return any(address in network for network in self.networks)
        return False

    def connect_request(self, host: str, port: int) -> bytes:
        """The request that opens a tunnel to `host:port`."""
        authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        auth = f"Proxy-Authorization: {self.authorization}\r\n" if self.authorization else ""
        return f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n{auth}\r\n".encode("ascii")


def parse_no_proxy(
    no_proxy: str | Sequence[str],
) -> tuple[tuple[str, ...], tuple[IpNetwork, ...], bool]:
    """`no_proxy` entries as (names, networks, whether `*` is one). Raises `InvalidProxy`."""
    entries = no_proxy.split(",") if isinstance(no_proxy, str) else list(no_proxy)
    names: list[str] = []
    networks: list[IpNetwork] = []
    bypass_all = False
    for raw in entries:
        entry = raw.strip().lower()
        if not entry:
            continue
        if entry == "*":
            bypass_all = True
            continue
        try:
            networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
            continue
        except ValueError:
            pass
        name = entry.lstrip(".").rstrip(".").removeprefix("*.")
        if not name.isascii():
            try:  # as the upstream's host is compared: in its ASCII form
                name = name.encode("idna").decode("ascii")
            except UnicodeError:
                name = ""
        if not name or any(c in name for c in ":/@ *"):
            raise InvalidProxy(
                f"entry {raw.strip()!r} is not a host name, an IP address, a CIDR "
                "range or '*' (ports are not supported)"
            )
        names.append(name)
    return tuple(names), tuple(networks), bypass_all


def tunnel_status(head: bytes) -> int:
    """The status code of a proxy's answer head to `CONNECT` (up to its empty line).
    Raises ValueError when it is not an HTTP/1.x status line."""
    line = head.split(b"\r\n", 1)[0]
    version, _, rest = line.partition(b" ")
    code, after = rest[:3], rest[3:4]
    if (
        version not in (b"HTTP/1.1", b"HTTP/1.0")
        or len(code) != 3
        or not code.isdigit()
        or after not in (b"", b" ")
    ):
        raise ValueError(f"not an HTTP answer: {line[:80]!r}")
    return int(code)
