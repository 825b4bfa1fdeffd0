"""Inbound filters: an ordered chain of checks, each naming why it would drop an item.

`compile_filters(org, project, trusted_proxies)` builds the chain once per policy
revision; `Filters.check(event, item_type, ctx)` returns a `FilterHit` (the
reason, the rule that matched, and whether the filter only runs as a dry run) or
None. An enforcing hit always wins over a dry-run hit, so trying a rule in
`mode: dry_run` never weakens the filters already enforced.

Order (org filters first, then the project's, each in this order), with the
reason each reports (Sentry's filter names where Sentry has the filter):

    csp                 invalid-csp           CSP report's blocked URI / source file
    client_ips          ip-address            ctx.client_ip in an IP/CIDR list
    releases            release-version       `release` glob
    environments        environment           `environment` glob
    error_types         error-type            exception type glob, `module.Type` too
    error_messages      error-message         "Type: value" or the log message, glob
    localhost           localhost             user IP / request URL / Host is local
    browser_extensions  browser-extensions    Sentry's extension values and sources
    legacy_browsers     legacy-browsers       Sentry's browser classes by user agent
    web_crawlers        web-crawlers          Sentry's crawler user-agent list
    health_checks       health-check          transaction name glob (transactions only)
    transactions        filtered-transaction  transaction name glob (transactions only)

`csp` reads only CSP reports: events of type `csp` (their `csp` interface) and
`raw_security` items as the browser sent them (`csp-report`, or a Reporting API
`csp-violation` body); no other filter reads a `raw_security` item. The records of log
and span containers are checked one by one (`Filters.check_records`) by the filters
Sentry applies to them: `client_ips`, `releases` (their `sentry.release` attribute),
`legacy_browsers` and `web_crawlers` (their `user_agent.original`, or the browser they
name), and for spans `health_checks` and `transactions` (`sentry.segment.name`). Globs are
case-insensitive (see `relay.processing.glob`). The user agent is the event's
`request.headers.User-Agent`, else the HTTP request's. Also here:
`resolve_client_ip` (the first `X-Forwarded-For` hop not added by a trusted proxy)
and `tag_for_shadow` (marks a copy of a dropped event for the shadow project).
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol
from urllib.parse import urlsplit

from relay.config.base import Problem, join_path
from relay.config.noise import (
    DEFAULT_CSP_SOURCES,
    DEFAULT_HEALTH_CHECK_GLOBS,
    MODES,
    ClientIpsFilter,
    CspFilter,
    ErrorTypesFilter,
    FiltersConfig,
    GlobFilter,
    HealthChecksFilter,
    LegacyBrowsersFilter,
    SwitchFilter,
)
from relay.processing.context import AUTO_IP, INFER_IP_PLATFORMS, RequestContext
from relay.processing.glob import GlobSet, validate_glob
from relay.processing.matchers import EventView

__all__ = [
    "LEGACY_BROWSERS",
    "RECORD_CONTAINERS",
    "FilterHit",
    "FilterReason",
    "Filters",
    "IpNetwork",
    "OriginPattern",
    "browser_version",
    "compile_filters",
    "csp_sources",
    "infers_user_agent",
    "match_origin",
    "parse_ip",
    "parse_networks",
    "resolve_client_ip",
    "tag_for_shadow",
    "validate_filters",
    "validate_trusted_proxies",
]

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class FilterReason:
    """The `reason` of each filter's hits (outcome reason and shadow tag)."""

    CSP = "invalid-csp"
    CLIENT_IP = "ip-address"
    RELEASE = "release-version"
    ENVIRONMENT = "environment"
    ERROR_TYPE = "error-type"
    ERROR_MESSAGE = "error-message"
    LOCALHOST = "localhost"
    BROWSER_EXTENSIONS = "browser-extensions"
    LEGACY_BROWSERS = "legacy-browsers"
    WEB_CRAWLERS = "web-crawlers"
    HEALTH_CHECK = "health-check"
    TRANSACTION = "filtered-transaction"


@dataclass(frozen=True, slots=True)
class FilterHit:
    """Why an item is (or, with `dry_run`, would be) filtered.

    `reason` is the filter (FilterReason); `rule` is what matched: the glob, type or
    network from the config, or the entry of a built-in list (never event data).
    """

    reason: str
    rule: str | None
    dry_run: bool


# --- IP addresses ----------------------------------------------------------------------------


#: Distinct addresses remembered by `parse_ip` and `_ip_text` (peers and hops repeat).
_IP_CACHE = 4096


@functools.lru_cache(maxsize=_IP_CACHE)
def parse_ip(text: str | None) -> IpAddress | None:
    """An address from `1.2.3.4`, `1.2.3.4:80`, `::1`, `[::1]:80`; IPv4-mapped IPv6 -> IPv4.

    Memoized: the same few peers and proxy hops come with every request."""
    if not text:
        return None
    text = text.strip()
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            return None
        text = text[1:end]
    elif text.count(":") == 1:
        text = text.split(":", 1)[0]
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _parse_network(text: str) -> IpNetwork:
    network = ipaddress.ip_network(text.strip(), strict=False)
    if isinstance(network, ipaddress.IPv6Network) and network.network_address.ipv4_mapped:
        mapped = network.network_address.ipv4_mapped
        return ipaddress.ip_network(f"{mapped}/{max(network.prefixlen - 96, 0)}", strict=False)
    return network


def parse_networks(entries: Iterable[str]) -> list[IpNetwork]:
    """IPs and CIDRs as networks; invalid entries are skipped (validate them first)."""
    out: list[IpNetwork] = []
    for entry in entries:
        try:
            out.append(_parse_network(entry))
        except ValueError:
            continue
    return out


def _validate_networks(entries: Sequence[str], path: str) -> list[Problem]:
    problems: list[Problem] = []
    for i, entry in enumerate(entries):
        try:
            _parse_network(entry)
        except ValueError:
            problems.append(
                Problem(join_path(path, i), f"not an IP address or CIDR network: {entry!r}")
            )
    return problems


def validate_trusted_proxies(entries: Sequence[str]) -> list[Problem]:
    """Check `listen.trusted_proxies` (paths `[i]`, relative to that key)."""
    return _validate_networks(entries, "")


def _in_networks(ip: IpAddress, networks: Sequence[IpNetwork]) -> IpNetwork | None:
    for network in networks:
        if ip.version == network.version and ip in network:
            return network
    return None


def resolve_client_ip(
    peer: str | None, x_forwarded_for: str | None, trusted_proxies: Sequence[IpNetwork]
) -> str | None:
    """The client's address.

    Only a trusted peer's `X-Forwarded-For` is believed. Hops are read from the right
    (the nearest proxy) and trusted proxies skipped: the first hop that is not a
    trusted proxy is the client. When every hop is trusted, the leftmost is used; an
    unparsable hop ends the walk at the last good address.
    """
    if not x_forwarded_for:
        return _ip_text(peer)
    current = parse_ip(peer)
    if current is None:
        return None
    if _in_networks(current, trusted_proxies) is None:
        return str(current)
    for hop in reversed(x_forwarded_for.split(",")):
        ip = parse_ip(hop)
        if ip is None:
            break
        current = ip
        if _in_networks(ip, trusted_proxies) is None:
            break
    return str(current)


@functools.lru_cache(maxsize=_IP_CACHE)
def _ip_text(text: str | None) -> str | None:
    """`parse_ip(text)` in its normal written form."""
    ip = parse_ip(text)
    return None if ip is None else str(ip)


# --- built-in lists (facts from Sentry's inbound filters) --------------------------------------

_WEB_CRAWLERS: Final[list[tuple[str, str]]] = [
    ("Mediapartners-Google", r"Mediapartners-Google"),
    ("AdsBot-Google", r"AdsBot-Google"),
    ("Googlebot", r"Googlebot"),
    ("FeedFetcher-Google", r"FeedFetcher-Google"),
    ("Storebot-Google", r"Storebot-Google"),
    ("BingBot", r"BingBot"),
    ("BingPreview", r"BingPreview"),
    ("Baiduspider", r"Baiduspider"),
    ("Slurp", r"Slurp"),
    ("Sogou", r"Sogou"),
    ("facebook", r"facebook"),
    ("meta-", r"meta-"),
    ("ia_archiver", r"ia_archiver"),
    ("bot", r"bots?(?:[/\s);]|$)"),
    ("spider", r"spider(?:[/\s);]|$)"),
    ("Slack", r"Slack"),
    ("Calypso AppCrawler", r"Calypso\sAppCrawler"),
    ("pingdom", r"pingdom"),
    ("lyticsbot", r"lyticsbot"),
    ("AWS Security Scanner", r"AWS\sSecurity\sScanner"),
    ("HubSpot Crawler", r"HubSpot\sCrawler"),
    ("Bytespider", r"Bytespider"),
    ("Better Uptime", r"Better\sUptime"),
    ("Cloudflare-Healthchecks", r"Cloudflare-Healthchecks"),
    ("GTmetrix", r"GTmetrix"),
    ("BrightEdgeOnCrawl", r"BrightEdgeOnCrawl"),
    ("ELB-HealthChecker", r"ELB-HealthChecker"),
    ("naver.me/spd", r"naver\.me/spd"),
    ("ClaudeBot", r"ClaudeBot"),
    ("CCBot", r"CCBot"),
    ("OAI-SearchBot", r"OAI-SearchBot"),
    ("GPTBot", r"GPTBot"),
    ("PerplexityBot", r"PerplexityBot"),
    ("Applebot", r"Applebot"),
    ("DuckDuckBot", r"DuckDuckBot"),
]
_ALLOWED_CRAWLERS: Final = re.compile(r"Slackbot\s1\.\d+|SentryUptimeBot|ChatGPT-User", re.I)

_EXTENSION_VALUES: Final[list[tuple[str, str]]] = [
    ("top.GLOBALS", r"top\.GLOBALS"),
    ("originalCreateNotification", r"originalCreateNotification"),
    ("canvas.contentDocument", r"canvas.contentDocument"),
    ("MyApp_RemoveAllHighlights", r"MyApp_RemoveAllHighlights"),
    ("tt.epicplay.com", r"http://tt\.epicplay\.com"),
    ("ZiteReader", r"Can't\sfind\svariable:\sZiteReader"),
    ("jigsaw", r"jigsaw\sis\snot\sdefined"),
    ("ComboSearch", r"ComboSearch\sis\snot\sdefined"),
    ("loading.retry.widdit.com", r"http://loading\.retry\.widdit\.com/"),
    ("atomicFindClose", r"atomicFindClose"),
    ("fb_xd_fragment", r"fb_xd_fragment"),
    ("bmi_SafeAddOnload", r"bmi_SafeAddOnload"),
    ("EBCallBackMessageReceived", r"EBCallBackMessageReceived"),
    ("_gCrWeb", r"_gCrWeb"),
    ("conduitPage", r"conduitPage"),
    ("elt.parentNode", r"null\sis\snot\san\sobject\s\(evaluating\s'elt.parentNode'\)"),
    ("plugin.setSuspendState", r"plugin\.setSuspendState\sis\snot\sa\sfunction"),
    ("Extension context invalidated", r"Extension\scontext\sinvalidated"),
    ("webkit-masked-url", r"webkit-masked-url:"),
    ("can't access dead object", r"can't\saccess\sdead\sobject"),
    (
        "Cannot redefine property: solana|ethereum|googletag",
        r"Cannot\sredefine\sproperty:\s(?:solana|ethereum|googletag)",
    ),
]
_EXTENSION_SOURCES: Final[list[tuple[str, str]]] = [
    ("graph.facebook.com", r"graph\.facebook\.com"),
    ("connect.facebook.net", r"connect\.facebook\.net"),
    ("eatdifferent.com.woopra-ns.com", r"eatdifferent\.com\.woopra-ns\.com"),
    ("static.woopra.com", r"static\.woopra\.com/js/woopra\.js"),
    ("chrome-extension://", r"^chrome(?:-extension)?://"),
    ("moz-extension://", r"^moz-extension://"),
    ("safari-extension://", r"^safari(?:-web)?-extension://"),
    ("webkit-masked-url", r"webkit-masked-url"),
    ("127.0.0.1:4001/isrunning", r"127\.0\.0\.1:4001/isrunning"),
    ("webappstoolbarba.texthelp.com", r"webappstoolbarba\.texthelp\.com/"),
    ("metrics.itunes.apple.com.edgesuite.net", r"metrics\.itunes\.apple\.com\.edgesuite\.net/"),
    ("kaspersky-labs.com", r"kaspersky-labs\.com"),
]
_ANONYMOUS_FRAMES: Final = frozenset({"<anonymous>", "[native code]"})


class _LabelledRegex:
    """Alternatives searched in one pass; `search` returns the label of the first hit."""

    def __init__(self, entries: Sequence[tuple[str, str]]) -> None:
        self._labels = [label for label, _ in entries]
        source = "|".join(f"(?P<g{i}>{rx})" for i, (_, rx) in enumerate(entries))
        self._regex = re.compile(source, re.IGNORECASE)

    def search(self, text: str | None) -> str | None:
        if not text:
            return None
        m = self._regex.search(text)
        if m is None or m.lastgroup is None:
            return None
        return self._labels[int(m.lastgroup[1:])]


_CRAWLERS_RE: Final = _LabelledRegex(_WEB_CRAWLERS)
_EXT_VALUES_RE: Final = _LabelledRegex(_EXTENSION_VALUES)
_EXT_SOURCES_RE: Final = _LabelledRegex(_EXTENSION_SOURCES)

#: Browser classes of the legacy_browsers filter: name -> (family, lowest, highest major).
LEGACY_BROWSERS: Final[dict[str, tuple[str, int, int]]] = {
    "ie_pre_9": ("IE", 0, 8),
    "ie9": ("IE", 9, 9),
    "ie10": ("IE", 10, 10),
    "ie11": ("IE", 11, 11),
    "opera_pre_15": ("Opera", 0, 14),
    "opera_mini_pre_8": ("Opera Mini", 0, 7),
    "android_pre_4": ("Android", 0, 3),
    "safari_pre_6": ("Safari", 0, 5),
    "edge_pre_79": ("Edge", 0, 78),
}
# `default`: each family's minimum supported major version.
_DEFAULT_MIN_VERSIONS: Final = {"IE": 10, "Safari": 6, "Opera": 15, "Android": 4, "Opera Mini": 8}

#: (family, regex, major): the first rule that matches names the browser, as in uap-core's
#: regexes.yaml (which Relay's relay-ua parses with); the major version is the regex's group,
#: or `major` where the token implies it (IE in Compatibility View says `MSIE 7.0`, but
#: `Trident/7.0` is IE 11). Families no class names (UC Browser, Opera Mobile, Amazon Silk,
#: Edge Mobile) come before the rules of the browsers whose tokens their user agents repeat.
_UA_RULES: Final[list[tuple[str, re.Pattern[str], int | None]]] = [
    ("UC Browser", re.compile(r"(?:UC? ?Browser|UCWEB|UCMobile|U3)[ /]?(\d+)\.\d+\.\d+"), None),
    ("Opera Mini", re.compile(r"Opera Mini/(\d+)"), None),
    ("Opera Mobile", re.compile(r"Opera/.{1,100}Opera Mobi.{1,100}Version/(\d+)\.\d+"), None),
    ("Opera Mobile", re.compile(r"Opera/(\d+)\.\d+.{1,100}Opera Mobi"), None),
    ("Opera Mobile", re.compile(r"Opera Mobi.{1,100}Opera(?:/|\s+)(\d+)\.\d+"), None),
    ("Opera Mobile", re.compile(r"Opera Mobi"), None),
    ("Opera Mobile", re.compile(r"Mobile Safari.{1,300}OPR/(\d+)\.\d+\.\d+"), None),
    ("Opera", re.compile(r"OPR/(\d+)"), None),
    ("Opera", re.compile(r"Opera[/ ].*?Version/(\d+)"), None),
    ("Opera", re.compile(r"Opera[/ ](\d+)"), None),
    ("Amazon Silk", re.compile(r"Silk/(\d+)\.\d+"), None),
    ("Edge Mobile", re.compile(r"Windows Phone .{0,200}Edge/(\d+)\.\d+"), None),
    ("Edge Mobile", re.compile(r"(?:EdgiOS|EdgA)/(\d+)"), None),
    ("Edge", re.compile(r"Edge?/(\d+)"), None),
    ("IE", re.compile(r"IEMobile[ /](\d+)"), None),
    ("IE", re.compile(r"Trident/[78]\.0"), 11),
    ("IE", re.compile(r"Trident/6\.0"), 10),
    ("IE", re.compile(r"Trident/5\.0"), 9),
    ("IE", re.compile(r"Trident/4\.0"), 8),
    ("IE", re.compile(r"MSIE (\d+)"), None),
    ("Firefox", re.compile(r"(?:Firefox|FxiOS)/(\d+)"), None),
    ("Chrome", re.compile(r"(?:Chrome|CriOS)/(\d+)"), None),
    ("Android", re.compile(r"Android (\d+)"), None),
    ("Mobile Safari", re.compile(r"Version/(\d+)[^ ]* Mobile(?:/\S+)? Safari/"), None),
    ("Safari", re.compile(r"Version/(\d+).*Safari/"), None),
]


#: User agents remembered by `browser_version`, and the longest one remembered.
_UA_CACHE = 1024
_UA_CACHE_MAX_LEN = 512


def browser_version(user_agent: str) -> tuple[str, int | None] | None:
    """(family, major version) of the browsers the legacy filter tells apart, else None.

    The major version is None when the user agent does not give one (`Opera Mobi`).
    Memoized (up to a length): the same few user agents come with most events."""
    if len(user_agent) > _UA_CACHE_MAX_LEN:
        return _browser_version(user_agent)
    return _browser_version_cached(user_agent)


def _browser_version(user_agent: str) -> tuple[str, int | None] | None:
    for family, regex, major in _UA_RULES:
        m = regex.search(user_agent)
        if m is not None:
            if major is None and regex.groups:
                major = int(m.group(1))
            return family, major
    return None


_browser_version_cached = functools.lru_cache(maxsize=_UA_CACHE)(_browser_version)


# --- the filters -----------------------------------------------------------------------------


class _Check(Protocol):
    reason: str
    dry_run: bool

    def __call__(self, view: EventView, ctx: RequestContext) -> str | None: ...


class _GlobCheck:
    def __init__(self, reason: str, dry_run: bool, field: str, globs: Sequence[str]) -> None:
        self.reason = reason
        self.dry_run = dry_run
        self.field = field
        self.globs = GlobSet(globs)
        self.transactions_only = field == "transaction"

    def __call__(self, view: EventView, ctx: RequestContext) -> str | None:
        if self.transactions_only and not view.is_transaction:
            return None
        return self.globs.match(view.get_str(self.field))


class _ClientIpCheck:
    reason = FilterReason.CLIENT_IP

    def __init__(self, dry_run: bool, entries: Sequence[str]) -> None:
        self.dry_run = dry_run
        self.networks: list[IpNetwork] = []
        self.labels: dict[IpNetwork, str] = {}
        for entry in entries:
            try:
                network = _parse_network(entry)
            except ValueError:
                continue
            self.networks.append(network)
            self.labels.setdefault(network, entry)

    def __call__(self, view: EventView, ctx: RequestContext) -> str | None:
        ip = parse_ip(ctx.client_ip)
        if ip is None:
            return None
        network = _in_networks(ip, self.networks)
        return None if network is None else self.labels[network]


class _ErrorTypeCheck:
    reason = FilterReason.ERROR_TYPE

    def __init__(self, dry_run: bool, types: Sequence[str], outermost: bool) -> None:
        self.dry_run = dry_run
        self.globs = GlobSet(types)
        self.outermost = outermost

    def __call__(self, view: EventView, ctx: RequestContext) -> str | None:
        exceptions = view.exceptions
        if self.outermost:
            exceptions = exceptions[-1:]
        for exc in reversed(exceptions):
            hit = self.globs.match(exc.type)
            if hit is None and exc.module and exc.type:
                hit = self.globs.match(f"{exc.module}.{exc.type}")
            if hit is not None:
                return hit
        return None


class _ErrorMessageCheck:
    reason = FilterReason.ERROR_MESSAGE

    def __init__(self, dry_run: bool, globs: Sequence[str]) -> None:
        self.dry_run = dry_run
        self.globs = GlobSet(globs)

    def __call__(self, view: EventView, ctx: RequestContext) -> str | None:
        hit = self.globs.match(view.log_message)
        if hit is not None:
            return hit
        for exc in view.exceptions:
            if exc.type and exc.value:
                text = f"{exc.type}: {exc.value}"
            else:
                text = exc.type or exc.value or ""
            hit = self.globs.match(text)
            if hit is not None:
                return hit
        return None


_LOCAL_IPS: Final = frozenset({"127.0.0.1", "::1"})
_LOCAL_HOSTS: Final = frozenset({"127.0.0.1", "localhost", "::1"})


def _is_local_host(host: str) -> bool:
    """`localhost`, a subdomain of it, or a loopback address literal."""
    host = host.lower().rstrip(".")
    return host in _LOCAL_HOSTS or host.endswith(".localhost")


def _user_ip(view: EventView, ctx: RequestContext) -> IpAddress | None:
    """`user.ip_address` as Sentry's normalization leaves it before its filters run: `{{auto}}`
    is the client's address; without one, `request.env.REMOTE_ADDR`, else (browser and Apple
    platforms) the client's address."""
    user_ip = view.user_ip()
    if user_ip == AUTO_IP:
        return parse_ip(ctx.client_ip)
    ip = parse_ip(user_ip)
    if ip is not None:
        return ip
    env = view.request().get("env")
    remote = env.get("REMOTE_ADDR") if isinstance(env, Mapping) else None
    if isinstance(remote, str):
        ip = parse_ip(ctx.client_ip if remote == AUTO_IP else remote)
        if ip is not None:
            return ip
    if view.event.get("platform") in INFER_IP_PLATFORMS:
        return parse_ip(ctx.client_ip)
    return None


class _LocalhostCheck:
    reason = FilterReason.LOCALHOST

    def __init__(self, dry_run: bool) -> None:
        self.dry_run = dry_run

    def __call__(self, view: EventView, ctx: RequestContext) -> str | None:
        ip = _user_ip(view, ctx)
        if ip is not None and str(ip) in _LOCAL_IPS:
            return "user.ip_address"
        url = view.request().get("url")
        host = None
        if isinstance(url, str) and url:
            try:
                parts = urlsplit(url.strip())
                host = parts.hostname
            except ValueError:
                parts = None
            if parts is not None and parts.scheme == "file":
                return "request.url"
            if host and _is_local_host(host):
                return "request.url"
        forwarded = view.header("X-Forwarded-For")
        if forwarded and forwarded.strip() in _LOCAL_IPS:
            return "request.headers.X-Forwarded-For"
        if not host:
            # No URL, or a relative one (`/checkout`): the Host headers name the site.
            for name in ("Host", "X-Forwarded-Host"):
                value = view.header(name)
                if value:
                    host = value.strip()
                    host = host[1 : host.find("]")] if host.startswith("[") else host.split(":")[0]
                    if host.lower() in _LOCAL_HOSTS:
                        return f"request.headers.{name}"
        return None


class _BrowserExtensionsCheck:
    reason = FilterReason.BROWSER_EXTENSIONS

    def __init__(self, dry_run: bool) -> None:
        self.dry_run = dry_run

    def __call__(self, view: EventView, ctx: RequestContext) -> str | None:
        if not view.exceptions:
            return None
        first = view.exceptions[0]
        hit = _EXT_VALUES_RE.search(first.value)
        if hit is not None:
            return hit
        for frame in reversed(first.frames):
            path = frame.get("abs_path")
            if not isinstance(path, str):
                return None
            if path not in _ANONYMOUS_FRAMES:
                return _EXT_SOURCES_RE.search(path)
        return None


# --- CSP reports -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OriginPattern:
    """A URL cut into scheme, host and port as Sentry's CSP filter cuts it, lowercased.

    `scheme://` is split off first; the path (from the first `/`) is dropped; the first `:`
    separates host and port. A part that is absent or `*` is None, which as a pattern
    matches anything. No URL parser is involved, so `about:blank` is host `about` with
    port `blank`, and `data:text/html,x` is host `data` with port `text`, as in Sentry.
    """

    scheme: str | None
    host: str | None
    port: str | None

    @classmethod
    def parse(cls, url: str) -> OriginPattern:
        head, sep, rest = url.partition("://")
        scheme, rest = (_part(head), rest) if sep else (None, url)
        host, sep, port = rest.split("/", 1)[0].partition(":")
        return cls(scheme, _part(host), _part(port) if sep else None)

    @property
    def matches_all(self) -> bool:
        return self.scheme is None and self.host is None and self.port is None


def _part(text: str) -> str | None:
    return None if text == "*" else text.lower()


def match_origin(url: str | None, patterns: Sequence[OriginPattern]) -> int | None:
    """The index of the first pattern `url` matches, else None (Sentry's CSP rules).

    A pattern's scheme and port match exactly; its host matches exactly, or, written
    `*.example.com`, `example.com` and any name ending in `.example.com`. A pattern that
    is all wildcards (`*`, `*://*`, `*:*`) matches anything, even a missing URL.
    """
    for i, pattern in enumerate(patterns):
        if pattern.matches_all:
            return i
    if url is None:
        return None
    have = OriginPattern.parse(url)
    for i, pattern in enumerate(patterns):
        if pattern.scheme is not None and have.scheme != pattern.scheme:
            continue
        if pattern.port is not None and have.port != pattern.port:
            continue
        if pattern.host is not None and have.host != pattern.host:
            wild = pattern.host
            host = have.host
            if (
                host is not None
                and wild.startswith("*")
                and (host.endswith(wild[1:]) or host == wild[2:])
            ):
                return i
            continue
        return i
    return None


#: The item type of a security report as the browser sent it (see relay.protocol.security).
RAW_SECURITY: Final = "raw_security"
_RAW_CSP_BLOCKED: Final = ("blocked_uri", "blockedURL", "blocked-uri")
_RAW_CSP_SOURCE: Final = ("source_file", "sourceFile", "source-file")


def _first_str(report: Mapping[str, Any], names: Sequence[str]) -> str | None:
    for name in names:
        value = report.get(name)
        if isinstance(value, str):
            return value
    return None


def csp_sources(event: Mapping[str, Any], item_type: str) -> tuple[str | None, str | None] | None:
    """(blocked URI, source file) of a CSP report, or None when the item is none.

    An event of type `csp` gives its `csp` interface's `blocked_uri` and `source_file`.
    A `raw_security` item is the report as the browser sent it: `{"csp-report": {...}}`
    or a Reporting API `{"type": "csp-violation", "body": {...}}`, with the field names
    browsers use (`blocked-uri`, `blockedURL`, ...); a report without a blocked URI
    blocked the page itself, which Sentry records as `self`. Expect-CT, HPKP and
    Expect-Staple reports are no CSP reports.
    """
    if item_type == RAW_SECURITY:
        report = event.get("csp-report")
        if not isinstance(report, Mapping):
            body = event.get("body")
            if event.get("type") != "csp-violation" or not isinstance(body, Mapping):
                return None
            report = body
        blocked = _first_str(report, _RAW_CSP_BLOCKED)
        return ("self" if blocked is None else blocked), _first_str(report, _RAW_CSP_SOURCE)
    csp = event.get("csp")
    if event.get("type") != "csp" or not isinstance(csp, Mapping):
        return None
    blocked = csp.get("blocked_uri")
    source = csp.get("source_file")
    return (
        blocked if isinstance(blocked, str) else None,
        source if isinstance(source, str) else None,
    )


class _CspCheck:
    reason = FilterReason.CSP

    def __init__(self, dry_run: bool, sources: Sequence[str]) -> None:
        self.dry_run = dry_run
        self.sources = list(dict.fromkeys(sources))
        self.patterns = [OriginPattern.parse(source) for source in self.sources]

    def __call__(self, view: EventView, ctx: RequestContext) -> str | None:
        found = csp_sources(view.event, view.item_type)
        if found is None:
            return None
        for url in found:
            i = match_origin(url, self.patterns)
            if i is not None:
                return self.sources[i]
        return None


# --- log and span records -----------------------------------------------------------------------

#: Container items whose records are filtered one by one (`{"items": [...]}` of logs or spans).
RECORD_CONTAINERS: Final = frozenset({"log", "span"})
_RELEASE_ATTR: Final = "sentry.release"
_SEGMENT_ATTR: Final = "sentry.segment.name"
_USER_AGENT_ATTR: Final = "user_agent.original"
#: (name, version) attribute pairs naming a record's browser: the current convention first,
#: then the older `sentry.`-prefixed names Sentry still reads.
_BROWSER_ATTRS: Final = (
    ("browser.name", "browser.version"),
    ("sentry.browser.name", "sentry.browser.version"),
)


def _attribute(attributes: Mapping[str, Any], key: str) -> str | None:
    """A string attribute (`{"type": "string", "value": ...}`); any other type is none."""
    attr = attributes.get(key)
    if not isinstance(attr, Mapping) or attr.get("type") != "string":
        return None
    value = attr.get("value")
    return value if isinstance(value, str) else None


def infers_user_agent(container: Mapping[str, Any]) -> bool:
    """Whether the request's User-Agent stands for the records' own when they name none:
    a container of version 1 (or without one), or of version 2 whose `ingest_settings`
    ask for it (`infer_user_agent: auto`), as Sentry reads a container's metadata."""
    version = container.get("version", 1)
    if version == 1 and not isinstance(version, bool):
        return True
    if version != 2 or isinstance(version, bool):
        return False
    settings = container.get("ingest_settings")
    return isinstance(settings, Mapping) and settings.get("infer_user_agent") == "auto"


class _RecordView(EventView):
    """A log or span record as Sentry's filters read it.

    The release is its `sentry.release` attribute and, for a span, the transaction name
    its `sentry.segment.name`; its user agent is `user_agent.original`, else the family of
    the browser it names (`browser.name` with `browser.version`), else the request's when
    the container lets it stand in (`request_ua`) and the record names no browser at all.
    `browser` is the named browser, which the legacy browsers filter reads first.
    """

    __slots__ = ("_ua", "browser")

    def __init__(self, record: Mapping[str, Any], item_type: str, request_ua: str | None) -> None:
        attrs = record.get("attributes")
        if not isinstance(attrs, Mapping):
            attrs = {}
        fields: dict[str, Any] = {"release": _attribute(attrs, _RELEASE_ATTR)}
        if item_type == "span":
            fields["type"] = "transaction"
            fields["transaction"] = _attribute(attrs, _SEGMENT_ATTR)
        super().__init__(fields, item_type)
        self.browser: tuple[str, int | None] | None = None
        named = False
        for name_key, version_key in _BROWSER_ATTRS:
            named = named or name_key in attrs or version_key in attrs
            name, version = _attribute(attrs, name_key), _attribute(attrs, version_key)
            if self.browser is None and name and version is not None:
                major = version.split(".", 1)[0]
                self.browser = (name, int(major) if major.isdigit() else None)
        raw = _attribute(attrs, _USER_AGENT_ATTR)
        if raw:
            self._ua: str | None = raw
        elif self.browser is not None:
            self._ua = self.browser[0]
        else:
            self._ua = None if named else request_ua

    @property
    def user_agent(self) -> str | None:
        return self._ua


def _user_agent(view: EventView, ctx: RequestContext) -> str | None:
    if isinstance(view, _RecordView):
        return view.user_agent  # the request's only where the record lets it stand in
    return view.user_agent or ctx.user_agent


class _WebCrawlersCheck:
    reason = FilterReason.WEB_CRAWLERS

    def __init__(self, dry_run: bool) -> None:
        self.dry_run = dry_run

    def __call__(self, view: EventView, ctx: RequestContext) -> str | None:
        ua = _user_agent(view, ctx)
        hit = _CRAWLERS_RE.search(ua)
        if hit is None or (ua and _ALLOWED_CRAWLERS.search(ua)):
            return None
        return hit


class _LegacyBrowsersCheck:
    reason = FilterReason.LEGACY_BROWSERS

    def __init__(self, dry_run: bool, browsers: Sequence[str]) -> None:
        self.dry_run = dry_run
        self.browsers = [b for b in browsers if b == "default" or b in LEGACY_BROWSERS]

    def __call__(self, view: EventView, ctx: RequestContext) -> str | None:
        found = view.browser if isinstance(view, _RecordView) else None
        if found is None:
            ua = _user_agent(view, ctx)
            found = browser_version(ua) if ua else None
        if found is None:
            return None
        family, major = found
        if major is None:
            return None
        for name in self.browsers:
            if name == "default":
                minimum = _DEFAULT_MIN_VERSIONS.get(family)
                if minimum is not None and major < minimum:
                    return name
                continue
            wanted, lowest, highest = LEGACY_BROWSERS[name]
            if family == wanted and lowest <= major <= highest:
                return name
        return None


# --- config -> chain -------------------------------------------------------------------------


def _mode(section: object) -> bool:
    """True when the (full-form) filter runs as a dry run."""
    return getattr(section, "mode", "enforce") == "dry_run"


def _globs_of(value: list[str] | GlobFilter | None) -> tuple[list[str], bool] | None:
    if value is None:
        return None
    if isinstance(value, list):
        return value, False
    return value.globs, _mode(value)


def _switch_of(value: bool | SwitchFilter | None) -> bool | None:
    """None: off; else the dry_run flag."""
    if value is None or value is False:
        return None
    if value is True:
        return False
    return _mode(value) if value.enabled else None


def _csp_of(value: bool | list[str] | CspFilter | None) -> tuple[list[str], bool] | None:
    """(sources, dry_run) of the `csp` filter, or None when it is off."""
    if value is None or value is False:
        return None
    if value is True:
        return list(DEFAULT_CSP_SOURCES), False
    if isinstance(value, list):
        return [*DEFAULT_CSP_SOURCES, *value], False
    if not value.enabled:
        return None
    defaults = list(DEFAULT_CSP_SOURCES) if value.defaults else []
    return [*defaults, *value.sources], _mode(value)


def _chain(cfg: FiltersConfig | None, *, org: bool) -> list[_Check]:
    checks: list[_Check] = []
    if cfg is None:
        cfg = FiltersConfig()

    csp = _csp_of(cfg.csp)
    if csp is not None and csp[0]:
        checks.append(_CspCheck(csp[1], csp[0]))

    ips = cfg.client_ips
    if ips is not None:
        entries, dry = (ips, False) if isinstance(ips, list) else (ips.ips, _mode(ips))
        if entries:
            checks.append(_ClientIpCheck(dry, entries))

    for reason, field, value in (
        (FilterReason.RELEASE, "release", cfg.releases),
        (FilterReason.ENVIRONMENT, "environment", cfg.environments),
    ):
        found = _globs_of(value)
        if found and found[0]:
            checks.append(_GlobCheck(reason, found[1], field, found[0]))

    types = cfg.error_types
    if types is not None:
        if isinstance(types, list):
            checks.append(_ErrorTypeCheck(False, types, outermost=False))
        elif types.types:
            checks.append(_ErrorTypeCheck(_mode(types), types.types, types.match == "outermost"))

    found = _globs_of(cfg.error_messages)
    if found and found[0]:
        checks.append(_ErrorMessageCheck(found[1], found[0]))

    switch = _switch_of(cfg.localhost)
    if switch is not None:
        checks.append(_LocalhostCheck(switch))
    switch = _switch_of(cfg.browser_extensions)
    if switch is not None:
        checks.append(_BrowserExtensionsCheck(switch))

    legacy = cfg.legacy_browsers
    if legacy is True:
        checks.append(_LegacyBrowsersCheck(False, ["default"]))
    elif isinstance(legacy, list) and legacy:
        checks.append(_LegacyBrowsersCheck(False, legacy))
    elif isinstance(legacy, LegacyBrowsersFilter) and legacy.enabled and legacy.browsers:
        checks.append(_LegacyBrowsersCheck(_mode(legacy), legacy.browsers))

    switch = _switch_of(cfg.web_crawlers)
    if switch is not None:
        checks.append(_WebCrawlersCheck(switch))

    health = cfg.health_checks
    if health is None and org:
        health = True
    if health is True:
        checks.append(
            _GlobCheck(FilterReason.HEALTH_CHECK, False, "transaction", DEFAULT_HEALTH_CHECK_GLOBS)
        )
    elif isinstance(health, HealthChecksFilter) and health.enabled and health.globs:
        checks.append(
            _GlobCheck(FilterReason.HEALTH_CHECK, _mode(health), "transaction", health.globs)
        )

    found = _globs_of(cfg.transactions)
    if found and found[0]:
        checks.append(_GlobCheck(FilterReason.TRANSACTION, found[1], "transaction", found[0]))
    return checks


#: What Sentry's filters read of a log or span record: the release, the client's address and
#: the user agent (legacy browsers, web crawlers) of both, and a span's segment name as
#: the transaction name (health checks, transactions). The others read what records lack
#: (exceptions, messages, user IPs, URLs, CSP reports); Sentry has no environment filter.
_RECORD_GLOBS: Final = {
    "log": frozenset({FilterReason.RELEASE}),
    "span": frozenset({FilterReason.RELEASE, FilterReason.HEALTH_CHECK, FilterReason.TRANSACTION}),
}


def _reads_records(check: _Check, item_type: str) -> bool:
    if isinstance(check, _GlobCheck):
        return check.reason in _RECORD_GLOBS[item_type]
    return isinstance(check, _ClientIpCheck | _LegacyBrowsersCheck | _WebCrawlersCheck)


class Filters:
    """A compiled filter chain. Build with `compile_filters`.

    Parameters:
        checks: the chain, in evaluation order.
        trusted_proxies: networks whose `X-Forwarded-For` is believed.
    """

    __slots__ = ("_checks", "_raw_checks", "_record_checks", "_trusted")

    def __init__(self, checks: Sequence[_Check], trusted_proxies: Sequence[IpNetwork]) -> None:
        self._checks = tuple(checks)
        # A raw security report is no event yet: only the CSP filter reads it.
        self._raw_checks = tuple(c for c in self._checks if isinstance(c, _CspCheck))
        # Log and span records: the filters Sentry applies to them (`_reads_records`).
        self._record_checks = {
            item_type: tuple(c for c in self._checks if _reads_records(c, item_type))
            for item_type in RECORD_CONTAINERS
        }
        self._trusted = tuple(trusted_proxies)

    def __len__(self) -> int:
        return len(self._checks)

    @property
    def reasons(self) -> list[tuple[str, bool]]:
        """(reason, dry_run) of each filter in order (for `relay scrub` and debugging)."""
        return [(c.reason, c.dry_run) for c in self._checks]

    def check(self, event: dict[str, Any], item_type: str, ctx: RequestContext) -> FilterHit | None:
        """The first enforcing hit; else the first dry-run hit; else None."""
        view = EventView(event, item_type)
        dry_hit: FilterHit | None = None
        checks = self._raw_checks if item_type == RAW_SECURITY else self._checks
        for check in checks:
            if check.dry_run and dry_hit is not None:
                continue
            rule = check(view, ctx)
            if rule is None:
                continue
            hit = FilterHit(check.reason, rule, check.dry_run)
            if not check.dry_run:
                return hit
            dry_hit = hit
        return dry_hit

    def reads_records(self, item_type: str) -> bool:
        """Whether any filter reads the records of a container item of this type."""
        return bool(self._record_checks.get(item_type))

    def check_records(
        self, container: Mapping[str, Any], item_type: str, ctx: RequestContext
    ) -> list[FilterHit | None]:
        """The hit of each record of a log or span container (`container["items"]`), as
        `check` decides for an event; None for a record no filter drops (or that is no
        object). Empty when the container has no list of records."""
        records = container.get("items")
        if not isinstance(records, list):
            return []
        checks = self._record_checks.get(item_type, ())
        request_ua = ctx.user_agent if infers_user_agent(container) else None
        hits: list[FilterHit | None] = []
        for record in records:
            dry_hit: FilterHit | None = None
            hit: FilterHit | None = None
            if isinstance(record, Mapping) and checks:
                view = _RecordView(record, item_type, request_ua)
                for check in checks:
                    if check.dry_run and dry_hit is not None:
                        continue
                    rule = check(view, ctx)
                    if rule is None:
                        continue
                    if not check.dry_run:
                        hit = FilterHit(check.reason, rule, False)
                        break
                    dry_hit = FilterHit(check.reason, rule, True)
            hits.append(hit or dry_hit)
        return hits

    def client_ip(self, peer: str | None, x_forwarded_for: str | None) -> str | None:
        """The client address of a request (see `resolve_client_ip`)."""
        return resolve_client_ip(peer, x_forwarded_for, self._trusted)


def compile_filters(
    org: FiltersConfig | None, project: FiltersConfig | None, trusted_proxies: Sequence[str] = ()
) -> Filters:
    """Compile the org's filters, then the project's additions (validated configs).

    `health_checks` is on with the default globs unless the org sets it to false; a
    project can add filters (and health-check globs) but cannot turn off the org's.
    """
    checks = _chain(org, org=True)
    if project is not None:
        checks.extend(_chain(project, org=False))
    return Filters(checks, parse_networks(trusted_proxies))


# --- validation --------------------------------------------------------------------------------


def _validate_mode(section: object, path: str) -> list[Problem]:
    mode = getattr(section, "mode", "enforce")
    if mode not in MODES:
        return [Problem(join_path(path, "mode"), "must be 'enforce' or 'dry_run'")]
    return []


def _validate_globs(globs: Sequence[str], path: str) -> list[Problem]:
    problems: list[Problem] = []
    for i, glob in enumerate(globs):
        problem = validate_glob(glob)
        if problem is not None:
            problems.append(Problem(join_path(path, i), problem))
    return problems


def validate_filters(cfg: FiltersConfig) -> list[Problem]:
    """Semantic checks of `policy.filters`; paths are relative to the section."""
    problems: list[Problem] = []
    for name in ("releases", "environments", "error_messages", "transactions"):
        value = getattr(cfg, name)
        if isinstance(value, list):
            problems.extend(_validate_globs(value, name))
        elif isinstance(value, GlobFilter):
            problems.extend(_validate_mode(value, name))
            problems.extend(_validate_globs(value.globs, join_path(name, "globs")))
    types = cfg.error_types
    if isinstance(types, list):
        problems.extend(_validate_globs(types, "error_types"))
    elif isinstance(types, ErrorTypesFilter):
        problems.extend(_validate_mode(types, "error_types"))
        problems.extend(_validate_globs(types.types, "error_types.types"))
        if types.match not in ("any", "outermost"):
            problems.append(Problem("error_types.match", "must be 'any' or 'outermost'"))
    ips = cfg.client_ips
    if isinstance(ips, list):
        problems.extend(_validate_networks(ips, "client_ips"))
    elif isinstance(ips, ClientIpsFilter):
        problems.extend(_validate_mode(ips, "client_ips"))
        problems.extend(_validate_networks(ips.ips, "client_ips.ips"))
    csp = cfg.csp
    sources: list[str] = []
    sources_path = "csp"
    if isinstance(csp, list):
        sources = csp
    elif isinstance(csp, CspFilter):
        problems.extend(_validate_mode(csp, "csp"))
        sources, sources_path = csp.sources, "csp.sources"
    for i, source in enumerate(sources):
        if not source.strip() or any(c.isspace() for c in source):
            problems.append(
                Problem(join_path(sources_path, i), "must be a URL, host or scheme without spaces")
            )
    for name in ("localhost", "browser_extensions", "web_crawlers"):
        value = getattr(cfg, name)
        if isinstance(value, SwitchFilter):
            problems.extend(_validate_mode(value, name))
    legacy = cfg.legacy_browsers
    names: list[str] = []
    names_path = "legacy_browsers"
    if isinstance(legacy, list):
        names = legacy
    elif isinstance(legacy, LegacyBrowsersFilter):
        problems.extend(_validate_mode(legacy, "legacy_browsers"))
        names, names_path = legacy.browsers, "legacy_browsers.browsers"
    known = ["default", *LEGACY_BROWSERS]
    for i, name in enumerate(names):
        if name not in known:
            problems.append(Problem(join_path(names_path, i), f"must be one of {', '.join(known)}"))
    health = cfg.health_checks
    if isinstance(health, HealthChecksFilter):
        problems.extend(_validate_mode(health, "health_checks"))
        problems.extend(_validate_globs(health.globs, "health_checks.globs"))
    return problems


# --- shadow tags -------------------------------------------------------------------------------

TAG_REASON: Final = "relay.dropped_reason"
TAG_RULE: Final = "relay.rule"
TAG_DRY_RUN: Final = "relay.dry_run"
_MAX_TAG_VALUE: Final = 200


def tag_for_shadow(
    event: dict[str, Any], reason: str, rule: str | None, *, dry_run: bool = False
) -> None:
    """Add `relay.dropped_reason` and `relay.rule` (and `relay.dry_run`) tags to `event`.

    Works whether `tags` is a mapping or a list of `[key, value]` pairs; existing tags
    with these keys are replaced. Any other shape never raises: list items that are not
    pairs with a string key are kept as they came, and a `tags` that is neither a list
    nor a mapping is replaced by ours.
    """
    ours: dict[str, str] = {TAG_REASON: reason[:_MAX_TAG_VALUE]}
    if rule is not None:
        ours[TAG_RULE] = rule[:_MAX_TAG_VALUE]
    if dry_run:
        ours[TAG_DRY_RUN] = "true"
    stale = {TAG_REASON, TAG_RULE, TAG_DRY_RUN}
    tags = event.get("tags")
    if isinstance(tags, list):
        kept = [
            pair
            for pair in tags
            if not (
                isinstance(pair, list | tuple)
                and pair
                and isinstance(pair[0], str)
                and pair[0] in stale
            )
        ]
        kept.extend([key, value] for key, value in ours.items())
        event["tags"] = kept
    elif isinstance(tags, dict):
        for key in stale:
            tags.pop(key, None)
        tags.update(ours)
    else:
        event["tags"] = ours
