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

`csp` reads only CSP reports: events of type `csp` (their `csp` interface). A
security report as the browser sent it (a `raw_security` item: `csp-report`, or a
Reporting API `csp-violation` body) is filtered as Sentry filters it, as the event Sentry makes of it
(`security_event`: its message, the page as `request.url`, the client's address as the
user's, the request's User-Agent, `sentry_release` / `sentry_environment` from the item
headers), checked as a `security` item by every filter. Security events count the
client's address as the user's (Sentry's normalization puts it there). The records of log
and span containers are checked one by one (`Filters.check_records`) by the filters
Sentry applies to them: `client_ips`, `releases` (their `sentry.release` attribute),
`legacy_browsers` and `web_crawlers` (their `user_agent.original`, or the browser they
name), and for spans `health_checks` and `transactions` (`sentry.segment.name`); an OTel
log (`otel_log`) and a standalone span (a `span` item holding one v1 span) are checked
the same way as one record (`Filters.check_item`), once converted as Sentry converts them
(`otel_log_record`, `span_v1_record`). Globs are case-insensitive (see
`relay.processing.glob`). The user agent is the event's `request.headers.User-Agent`, else
the HTTP request's. Also here: `resolve_client_ip` (the first `X-Forwarded-For` hop not
added by a trusted proxy) and `tag_for_shadow` (marks a copy of a dropped event for the
shadow project).
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol
from urllib.parse import urlsplit

import orjson

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
    "otel_log_record",
    "parse_ip",
    "parse_networks",
    "resolve_client_ip",
    "security_event",
    "span_v1_record",
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
    if ctx.client_ip and _is_security_report(view.event):
        # Sentry's normalization makes the sender of a security report its user.
        return parse_ip(ctx.client_ip)
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


_RAW_CSP_BLOCKED: Final = ("blocked_uri", "blockedURL", "blocked-uri")
_RAW_CSP_SOURCE: Final = ("source_file", "sourceFile", "source-file")


def _first_str(report: Mapping[str, Any], names: Sequence[str]) -> str | None:
    for name in names:
        value = report.get(name)
        if isinstance(value, str):
            return value
    return None


def csp_sources(event: Mapping[str, Any], item_type: str) -> tuple[str | None, str | None] | None:
    """(blocked URI, source file) of a CSP report, or None when the event is none: an
    event of type `csp` gives its `csp` interface's `blocked_uri` and `source_file` (a
    report as the browser sent it is read as the event `security_event` makes of it)."""
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


# --- security reports as Sentry's events ------------------------------------------------------


def _is_security_report(event: Mapping[str, Any]) -> bool:
    """Whether an event holds a security report interface (Sentry normalizes those alike)."""
    get = event.get
    return (
        get("csp") is not None
        or get("expectct") is not None
        or get("expectstaple") is not None
        or get("hpkp") is not None
    )


#: The CSP directives Sentry knows; a report naming another one is no report it accepts.
_CSP_DIRECTIVES: Final = frozenset(
    {
        "base-uri", "child-src", "connect-src", "default-src", "fenced-frame-src", "font-src",
        "form-action", "frame-ancestors", "frame-src", "img-src", "manifest-src", "media-src",
        "object-src", "plugin-types", "prefetch-src", "referrer", "script-src",
        "script-src-attr", "script-src-elem", "style-src", "style-src-elem", "style-src-attr",
        "upgrade-insecure-requests", "worker-src", "sandbox", "navigate-to", "report-uri",
        "report-to", "block-all-mixed-content", "require-sri-for",
        "require-trusted-types-for", "trusted-types",
    }
)  # fmt: skip
#: Sentry's message of a CSP report blocking the page itself, by directive.
_CSP_INLINE: Final = {
    "child-src": "Blocked inline 'child'",
    "connect-src": "Blocked inline 'connect'",
    "font-src": "Blocked inline 'font'",
    "img-src": "Blocked inline 'image'",
    "manifest-src": "Blocked inline 'manifest'",
    "media-src": "Blocked inline 'media'",
    "object-src": "Blocked inline 'object'",
    "script-src-attr": "Blocked unsafe 'script' element",
    "script-src-elem": "Blocked inline script attribute",
    "style-src": "Blocked inline 'style'",
    "style-src-elem": "Blocked 'style' or 'link' element",
    "style-src-attr": "Blocked style attribute",
    "script-src": "Blocked unsafe (eval() or inline) 'script'",
}
#: ... and blocking a resource (`{}` is the resource's origin).
_CSP_BLOCKED: Final = {
    "child-src": "Blocked 'child' from '{}'",
    "connect-src": "Blocked 'connect' from '{}'",
    "font-src": "Blocked 'font' from '{}'",
    "form-action": "Blocked 'form' action to '{}'",
    "img-src": "Blocked 'image' from '{}'",
    "manifest-src": "Blocked 'manifest' from '{}'",
    "media-src": "Blocked 'media' from '{}'",
    "object-src": "Blocked 'object' from '{}'",
    "script-src": "Blocked 'script' from '{}'",
    "script-src-attr": "Blocked inline script attribute from '{}'",
    "script-src-elem": "Blocked 'script' from '{}'",
    "style-src": "Blocked 'style' from '{}'",
    "style-src-elem": "Blocked 'style' from '{}'",
    "style-src-attr": "Blocked style attribute from '{}'",
}
_LOCAL_URIS: Final = frozenset({"", "self", "'self'"})
#: Schemes whose URLs have a host (Python's `urlunsplit` list, which Sentry follows).
_NETLOC_SCHEMES: Final = frozenset(
    {
        "ftp", "http", "gopher", "nntp", "telnet", "imap", "wais", "file", "mms", "https",
        "shttp", "snews", "prospero", "rtsp", "rtspu", "rsync", "svn", "svn+ssh", "sftp",
        "nfs", "git", "git+ssh", "ws", "wss",
    }
)  # fmt: skip
#: The WHATWG URL standard's special schemes and their default ports.
_SPECIAL_SCHEMES: Final[dict[str, int | None]] = {
    "http": 80,
    "https": 443,
    "ws": 80,
    "wss": 443,
    "ftp": 21,
    "file": None,
}
_URL_SCHEME: Final = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*):(.*)", re.DOTALL)
_AUTHORITY_END: Final = re.compile(r"[/?#\\]")
_OPAQUE_AUTHORITY_END: Final = re.compile(r"[/?#]")
_CSP_DOCUMENT_URI: Final = ("document_uri", "documentURL", "document-uri")
_CSP_EFFECTIVE: Final = ("effective_directive", "effective-directive", "effectiveDirective")
_CSP_VIOLATED: Final = ("violated_directive", "violatedDirective", "violated-directive")


def _unsplit(scheme: str, host: str) -> str:
    if host or scheme in _NETLOC_SCHEMES:
        return f"{scheme}://{host}"
    return f"{scheme}:{host}" if scheme else ""


def _csp_origin(uri: str) -> str:
    """A blocked URI as Sentry's CSP messages name it: `'self'` for the page, the host
    (and a port other than the default) of an http(s) URL, else `scheme://host` or
    `scheme:`; a bare word is a scheme; what is no URL stays as it is."""
    if uri in _LOCAL_URIS:
        return "'self'"
    if ":" not in uri:
        return _unsplit(uri, "")
    m = _URL_SCHEME.fullmatch(uri)
    if m is None:
        return uri
    scheme, rest = m.group(1).lower(), m.group(2)
    special = scheme in _SPECIAL_SCHEMES
    if special:
        rest = rest.lstrip("/\\")
    elif rest.startswith("//"):
        rest = rest[2:]
    else:
        return _unsplit(scheme, "")
    end = (_AUTHORITY_END if special else _OPAQUE_AUTHORITY_END).search(rest)
    authority = rest if end is None else rest[: end.start()]
    authority = authority.rpartition("@")[2]
    if authority.startswith("["):
        close = authority.find("]")
        if close < 0:
            return uri
        host, port_text = authority[: close + 1], authority[close + 1 :]
        if port_text and not port_text.startswith(":"):
            return uri
        port_text = port_text[1:]
    else:
        host, _, port_text = authority.partition(":")
    port: int | None = None
    if port_text:
        if not port_text.isascii() or not port_text.isdigit() or int(port_text) > 65535:
            return uri
        port = int(port_text)
    if special:
        host = host.lower()
        if not host and scheme != "file":
            return uri
        if port == _SPECIAL_SCHEMES[scheme]:
            port = None
    origin = host if scheme in ("http", "https") else _unsplit(scheme, host)
    return origin if port is None else f"{origin}:{port}"


def _csp_directive(report: Mapping[str, Any]) -> str | None:
    """The directive a CSP report names, as Sentry reads it: the effective directive's
    first word, else the violated directive's; None when neither is one Sentry knows."""
    for names in (_CSP_EFFECTIVE, _CSP_VIOLATED):
        text = _first_str(report, names)
        if text is not None:
            word = text.split(" ", 1)[0]
            if word in _CSP_DIRECTIVES:
                return word
    return None


def _csp_message(directive: str, blocked: str) -> str:
    if directive == "script-src":
        if blocked == "inline":
            return "Blocked unsafe inline 'script'"
        if blocked == "eval":
            return "Blocked unsafe eval() 'script'"
    if blocked in _LOCAL_URIS:
        return _CSP_INLINE.get(directive) or f"Blocked inline '{directive}'"
    template = _CSP_BLOCKED.get(directive) or f"Blocked '{directive}' from '{{}}'"
    return template.format(_csp_origin(blocked))


def _host_report(report: object, message: str) -> tuple[dict[str, Any], str | None]:
    """(logentry, request URL) of an Expect-CT, Expect-Staple or HPKP report: Sentry's
    message names its `hostname`, which is also the event's URL."""
    hostname = report.get("hostname") if isinstance(report, Mapping) else None
    if not isinstance(hostname, str):
        return {}, None
    return {"formatted": message.format(hostname)}, hostname


def security_event(
    report: Mapping[str, Any], headers: Mapping[str, Any], ctx: RequestContext
) -> dict[str, Any] | None:
    """The event Sentry makes of a security report as the browser sent it (a `raw_security`
    item), as far as its inbound filters read it; None when the item is no report Sentry
    converts (a report type it does not take, a CSP report that is not an object).

    The type is `csp` (`csp-report`, or a Reporting API `csp-violation` report),
    `hpkp` (`known-pins`), `expectstaple` or `expectct`. A CSP report gives its `csp`
    interface (a report without a blocked URI blocked the page: `self`), the message
    Sentry writes for its directive and blocked URI, and the page (`document-uri`) as
    `request.url` with the referrer; the others give the `hostname` as message and URL.
    The item headers `sentry_release` and `sentry_environment` (the security endpoint's
    query) are its release and environment; the client's address is its user's and the
    request's User-Agent its own, as Sentry's normalization sets them. A report Sentry
    would refuse as invalid (an unknown directive, no hostname) is converted as far as it
    reads: no message then."""
    request: dict[str, Any] = {}
    logentry: dict[str, Any] = {}
    event: dict[str, Any]
    csp = report.get("csp-report")
    if csp is None and report.get("type") == "csp-violation":
        csp = report.get("body")
    if csp is not None:
        if not isinstance(csp, Mapping):
            return None
        blocked = _first_str(csp, _RAW_CSP_BLOCKED)
        blocked = "self" if blocked is None else blocked
        interface = {"blocked_uri": blocked, "source_file": _first_str(csp, _RAW_CSP_SOURCE)}
        directive = _csp_directive(csp)
        if directive is not None:
            logentry["formatted"] = _csp_message(directive, blocked)
        request["url"] = _first_str(csp, _CSP_DOCUMENT_URI)
        referrer = csp.get("referrer")
        if isinstance(referrer, str) and referrer:
            request["headers"] = [["Referer", referrer]]
        event = {"type": "csp", "csp": interface}
    elif "known-pins" in report:
        logentry, request["url"] = _host_report(
            report, "Public key pinning validation failed for '{}'"
        )
        event = {"type": "hpkp", "hpkp": {"hostname": request["url"]}}
    elif "expect-staple-report" in report:
        inner = report["expect-staple-report"]
        logentry, request["url"] = _host_report(inner, "Expect-Staple failed for '{}'")
        event = {"type": "expectstaple", "expectstaple": {"hostname": request["url"]}}
    elif "expect-ct-report" in report:
        inner = report["expect-ct-report"]
        logentry, request["url"] = _host_report(inner, "Expect-CT failed for '{}'")
        event = {"type": "expectct", "expectct": {"hostname": request["url"]}}
    else:
        return None
    if logentry:
        event["logentry"] = logentry
    if ctx.user_agent:
        request.setdefault("headers", []).append(["User-Agent", ctx.user_agent])
    event["request"] = request
    if ctx.client_ip:
        event["user"] = {"ip_address": ctx.client_ip}
    for header, key in (("sentry_release", "release"), ("sentry_environment", "environment")):
        value = headers.get(header)
        if isinstance(value, str):
            event[key] = value
    return event


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


def _typed(value: object) -> dict[str, Any] | None:
    """A JSON value as a record attribute (`{"type", "value"}`); nested values as JSON text."""
    if isinstance(value, str):
        return {"type": "string", "value": value}
    if isinstance(value, bool):
        return {"type": "boolean", "value": value}
    if isinstance(value, int):
        return {"type": "integer", "value": value}
    if isinstance(value, float):
        return {"type": "double", "value": value}
    if isinstance(value, list | dict):
        return {"type": "string", "value": orjson.dumps(value).decode()}
    return None


#: OTel attribute values Sentry keeps, by their OTLP/JSON key: (attribute type, converter).
_OTEL_VALUES: Final[dict[str, tuple[str, type]]] = {
    "stringValue": ("string", str),
    "boolValue": ("boolean", bool),
    "intValue": ("integer", int),
    "doubleValue": ("double", float),
}


def _otel_value(value: object) -> dict[str, Any] | None:
    if not isinstance(value, Mapping):
        return None
    for key, (kind, convert) in _OTEL_VALUES.items():
        raw = value.get(key)
        if raw is None:
            continue
        if kind == "string" and not isinstance(raw, str):
            return None
        if kind == "integer" and isinstance(raw, str):
            raw = raw.strip()
            if not raw.lstrip("-").isdigit():
                return None
        if isinstance(raw, list | dict) or (kind != "boolean" and isinstance(raw, bool)):
            return None
        try:
            return {"type": kind, "value": convert(raw)}
        except (TypeError, ValueError):
            return None
    return None


def otel_log_record(log: Mapping[str, Any]) -> dict[str, Any]:
    """An OTel log record (an `otel_log` item: OTLP/JSON `body` and `attributes`) as the
    Sentry log Sentry converts it to, as far as filters and `log_byte` read it: the body's
    string, and each attribute of a string, boolean, integer or double value under its key
    (later keys win; arrays, maps and bytes are left out, as Sentry leaves them)."""
    body = log.get("body")
    text = body.get("stringValue") if isinstance(body, Mapping) else None
    attributes: dict[str, Any] = {}
    entries = log.get("attributes")
    if isinstance(entries, list):
        for entry in entries:
            if not isinstance(entry, Mapping) or not isinstance(entry.get("key"), str):
                continue
            attribute = _otel_value(entry.get("value"))
            if attribute is not None:
                attributes[entry["key"]] = attribute
    return {"body": text if isinstance(text, str) else "", "attributes": attributes}


#: Old names of `data` fields of a v1 span that Sentry reads under their new name.
_SPAN_DATA_ALIASES: Final = {
    "release": "sentry.release",
    "transaction": "sentry.segment.name",
    "environment": "sentry.environment",
}
#: `data` fields Sentry reads as text only (another type is no value).
_SPAN_TEXT_FIELDS: Final = frozenset(
    {"sentry.segment.name", "sentry.environment", "browser.name", "user_agent.original"}
)


def span_v1_record(span: Mapping[str, Any]) -> dict[str, Any]:
    """A standalone v1 span (`{"data": {...}, "tags": ..., "sentry_tags": ...}`) as the v2
    span Sentry converts it to, as far as filters read it: its attributes. `data` gives
    them first (`release`, `transaction` and `environment` under their names
    `sentry.release`, `sentry.segment.name`, `sentry.environment` when those are absent; a
    release that is a number as text), then `tags`, then `sentry_tags` as `sentry.<key>`,
    each only where no attribute of that name is yet."""
    attributes: dict[str, Any] = {}
    data = span.get("data")
    if isinstance(data, Mapping):
        for key, value in data.items():
            name: str = _SPAN_DATA_ALIASES.get(key) or key
            if name != key and name in data:
                continue  # the field's own name wins over its old one
            if name == "sentry.release" and isinstance(value, int) and not isinstance(value, bool):
                value = str(value)
            elif name in _SPAN_TEXT_FIELDS and not isinstance(value, str):
                continue
            attribute = _typed(value)
            if attribute is not None:
                attributes[name] = attribute
    tags = span.get("tags")
    if isinstance(tags, Mapping):
        for key, value in tags.items():
            if key not in attributes and value is not None:
                text = value if isinstance(value, str) else orjson.dumps(value).decode()
                attributes[key] = {"type": "string", "value": text}
    sentry_tags = span.get("sentry_tags")
    if isinstance(sentry_tags, Mapping):
        for key, value in sentry_tags.items():
            name = "sentry.normalized_description" if key == "description" else f"sentry.{key}"
            if name not in attributes and value not in (None, "", [], {}):
                attribute = _typed(value)
                if attribute is not None:
                    attributes[name] = attribute
    return {"attributes": attributes}


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

    __slots__ = ("_checks", "_record_checks", "_trusted")

    def __init__(self, checks: Sequence[_Check], trusted_proxies: Sequence[IpNetwork]) -> None:
        self._checks = tuple(checks)
        # A raw security report is no event yet: only the CSP filter reads it.
        # Log and span records: the filters Sentry applies to them (`_reads_records`); an
        # OTel log is a log to them.
        self._record_checks = {
            item_type: tuple(c for c in self._checks if _reads_records(c, item_type))
            for item_type in RECORD_CONTAINERS
        }
        self._record_checks["otel_log"] = self._record_checks["log"]
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
        for check in self._checks:
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
        """Whether any filter reads the records of a log or span item (a container, an OTel
        log, a standalone span)."""
        return bool(self._record_checks.get(item_type))

    def check_item(
        self, payload: Mapping[str, Any], item_type: str, ctx: RequestContext
    ) -> FilterHit | None:
        """The hit of an `otel_log` item or a standalone `span` item (one v1 span), as
        `check_records` decides for one record: the payload converted as Sentry converts
        it (`otel_log_record`, `span_v1_record`), the request's User-Agent standing in for
        a record that names no browser."""
        checks = self._record_checks.get(item_type)
        if not checks:
            return None
        if item_type == "otel_log":
            view = _RecordView(otel_log_record(payload), "log", ctx.user_agent)
        else:
            view = _RecordView(span_v1_record(payload), "span", ctx.user_agent)
        return _check_view(view, checks, ctx)

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
            hit: FilterHit | None = None
            if isinstance(record, Mapping) and checks:
                hit = _check_view(_RecordView(record, item_type, request_ua), checks, ctx)
            hits.append(hit)
        return hits

    def client_ip(self, peer: str | None, x_forwarded_for: str | None) -> str | None:
        """The client address of a request (see `resolve_client_ip`)."""
        return resolve_client_ip(peer, x_forwarded_for, self._trusted)


def _check_view(view: EventView, checks: Sequence[_Check], ctx: RequestContext) -> FilterHit | None:
    """The first enforcing hit of `checks` on `view`; else the first dry-run hit."""
    dry_hit: FilterHit | None = None
    for check in checks:
        if check.dry_run and dry_hit is not None:
            continue
        rule = check(view, ctx)
        if rule is None:
            continue
        if not check.dry_run:
            return FilterHit(check.reason, rule, False)
        dry_hit = FilterHit(check.reason, rule, True)
    return dry_hit


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
