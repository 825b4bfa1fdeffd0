from __future__ import annotations

import copy
from typing import Any

import orjson
import pytest

from relay.config import parse_config
from relay.config.noise import (
    DEFAULT_HEALTH_CHECK_GLOBS,
    DROP_REASONS,
    ClientIpsFilter,
    ErrorTypesFilter,
    FiltersConfig,
    GlobFilter,
    HealthChecksFilter,
    LegacyBrowsersFilter,
    ShadowConfig,
    SwitchFilter,
    validate_shadow,
)
from relay.processing.context import RequestContext
from relay.processing.filters import (
    FilterHit,
    FilterReason,
    browser_version,
    compile_filters,
    parse_networks,
    resolve_client_ip,
    tag_for_shadow,
    validate_filters,
    validate_trusted_proxies,
)
from relay.protocol.envelope import parse_envelope
from tests.support.corpus import CORPUS

CTX = RequestContext(project_id=42, public_key="abc123def4567890abc123def4567890")


def corpus_item(name: str) -> tuple[str, dict[str, Any]]:
    envelope = parse_envelope((CORPUS / f"{name}.envelope").read_bytes())
    for item in envelope.items:
        if item.type in ("event", "transaction"):
            return item.type, orjson.loads(item.payload)
    raise AssertionError(f"{name} has no event")


def check(
    cfg: FiltersConfig | None,
    event: dict[str, Any],
    item_type: str = "event",
    ctx: RequestContext = CTX,
    project: FiltersConfig | None = None,
) -> FilterHit | None:
    return compile_filters(cfg, project, []).check(event, item_type, ctx)


def exc_event(*chain: tuple[str, str], **extra: Any) -> dict[str, Any]:
    return {"exception": {"values": [{"type": t, "value": v} for t, v in chain]}, **extra}


def ua_event(user_agent: str) -> dict[str, Any]:
    return {"request": {"headers": {"User-Agent": user_agent}}}


# --- real SDK events --------------------------------------------------------------------------


def test_corpus_healthz_transaction_is_dropped_by_default() -> None:
    item_type, event = corpus_item("transaction-healthz")
    assert item_type == "transaction"
    assert check(None, event, item_type) == FilterHit("health-check", "*/healthz", False)


def test_corpus_other_events_pass_the_default_filters() -> None:
    for name in (
        "transaction-checkout",
        "error-payment",
        "error-with-attachment",
        "error-connection-reset",
    ):
        item_type, event = corpus_item(name)
        assert check(None, event, item_type) is None, name


def test_corpus_error_named_after_healthz_is_not_a_health_check() -> None:
    # The ConnectionResetError event carries transaction "/healthz", but only
    # transaction events are health checks.
    item_type, event = corpus_item("error-connection-reset")
    assert event["transaction"] == "/healthz"
    assert check(FiltersConfig(health_checks=True), event, item_type) is None


def test_corpus_connection_reset_dropped_by_error_types() -> None:
    item_type, event = corpus_item("error-connection-reset")
    cfg = FiltersConfig(error_types=["BrokenPipeError", "ConnectionResetError"])
    assert check(cfg, event, item_type) == FilterHit("error-type", "ConnectionResetError", False)
    outermost = FiltersConfig(
        error_types=ErrorTypesFilter(types=["Connection*Error"], match="outermost")
    )
    assert check(outermost, event, item_type) == FilterHit("error-type", "Connection*Error", False)


def test_corpus_connection_reset_dropped_by_error_messages() -> None:
    item_type, event = corpus_item("error-connection-reset")
    cfg = FiltersConfig(error_messages=["connectionreseterror: *reset by peer"])
    assert check(cfg, event, item_type) == FilterHit(
        "error-message", "connectionreseterror: *reset by peer", False
    )


def test_corpus_release_environment_and_client_ip() -> None:
    item_type, event = corpus_item("transaction-checkout")
    assert check(FiltersConfig(releases=["shop@1.4.*"]), event, item_type) == FilterHit(
        "release-version", "shop@1.4.*", False
    )
    assert check(FiltersConfig(environments=["prod*"]), event, item_type) == FilterHit(
        "environment", "prod*", False
    )
    assert check(FiltersConfig(environments=["staging"]), event, item_type) is None
    ctx = RequestContext(project_id=42, public_key="k", client_ip="203.0.113.77")
    assert check(FiltersConfig(client_ips=["203.0.113.0/24"]), event, item_type, ctx) == FilterHit(
        "ip-address", "203.0.113.0/24", False
    )


# --- health checks and transactions ---------------------------------------------------------


@pytest.mark.parametrize("glob", DEFAULT_HEALTH_CHECK_GLOBS)
def test_default_health_check_globs(glob: str) -> None:
    name = "GET " + glob.replace("*", "/api").upper()
    event = {"type": "transaction", "transaction": name}
    hit = check(None, event, "transaction")
    assert hit is not None and hit.reason == FilterReason.HEALTH_CHECK


@pytest.mark.parametrize(
    "name", ["/healthcheck-dashboard", "/health/db", "healthz", "/pingpong", "/api/orders"]
)
def test_health_checks_leave_other_transactions(name: str) -> None:
    assert check(None, {"type": "transaction", "transaction": name}, "transaction") is None


def test_health_checks_configuration() -> None:
    event = {"type": "transaction", "transaction": "/status"}
    assert (
        check(FiltersConfig(health_checks=False), {"transaction": "/healthz"}, "transaction")
        is None
    )
    custom = FiltersConfig(health_checks=HealthChecksFilter(globs=["*/status"]))
    assert check(custom, event, "transaction") == FilterHit("health-check", "*/status", False)
    # Custom globs replace the defaults.
    assert check(custom, {"transaction": "/healthz"}, "transaction") is None
    disabled = FiltersConfig(health_checks=HealthChecksFilter(enabled=False))
    assert check(disabled, {"transaction": "/healthz"}, "transaction") is None


def test_project_cannot_turn_off_org_health_checks_but_can_add() -> None:
    healthz = {"type": "transaction", "transaction": "/healthz"}
    status = {"type": "transaction", "transaction": "/status"}
    project_off = FiltersConfig(health_checks=False)
    assert check(None, healthz, "transaction", project=project_off) is not None
    project_more = FiltersConfig(health_checks=HealthChecksFilter(globs=["*/status"]))
    assert check(None, status, "transaction", project=project_more) == FilterHit(
        "health-check", "*/status", False
    )
    assert check(None, healthz, "transaction", project=project_more) == FilterHit(
        "health-check", "*/healthz", False
    )
    # An org that switched them off gets them from a project that asks.
    org_off = FiltersConfig(health_checks=False)
    assert check(org_off, healthz, "transaction") is None
    assert (
        check(org_off, healthz, "transaction", project=FiltersConfig(health_checks=True))
        is not None
    )
    assert check(org_off, healthz, "transaction", project=FiltersConfig()) is None


def test_transactions_filter() -> None:
    cfg = FiltersConfig(transactions=["*/internal/*", "celery.tasks.cleanup*"])
    assert check(cfg, {"transaction": "GET /internal/x"}, "transaction") == FilterHit(
        "filtered-transaction", "*/internal/*", False
    )
    assert check(
        cfg, {"type": "transaction", "transaction": "celery.tasks.cleanup_old"}, "event"
    ) == FilterHit("filtered-transaction", "celery.tasks.cleanup*", False)
    assert check(cfg, {"transaction": "GET /internal/x"}, "event") is None


# --- errors ---------------------------------------------------------------------------------------


def test_error_types_any_versus_outermost() -> None:
    # `raise RuntimeError from CancelledError`: values are oldest first.
    event = exc_event(("CancelledError", ""), ("RuntimeError", "task failed"))
    assert check(FiltersConfig(error_types=["CancelledError"]), event) == FilterHit(
        "error-type", "CancelledError", False
    )
    outermost = FiltersConfig(
        error_types=ErrorTypesFilter(types=["CancelledError"], match="outermost")
    )
    assert check(outermost, event) is None
    outermost_runtime = FiltersConfig(
        error_types=ErrorTypesFilter(types=["RuntimeError"], match="outermost")
    )
    assert check(outermost_runtime, event) == FilterHit("error-type", "RuntimeError", False)


def test_error_types_globs_case_and_module() -> None:
    event = {
        "exception": {
            "values": [{"type": "CancelledError", "module": "asyncio.exceptions", "value": "x"}]
        }
    }
    assert (
        check(FiltersConfig(error_types=["asyncio.exceptions.CancelledError"]), event) is not None
    )
    assert check(FiltersConfig(error_types=["asyncio.*"]), event) is not None
    assert check(FiltersConfig(error_types=["cancellederror"]), event) is not None
    assert check(FiltersConfig(error_types=["Cancelled"]), event) is None
    assert check(FiltersConfig(error_types=["*Error"]), {"message": "no exception"}) is None
    # Legacy shape: `exception` as a bare list.
    assert (
        check(FiltersConfig(error_types=["ValueError"]), {"exception": [{"type": "ValueError"}]})
        is not None
    )


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        (exc_event(("HTTPError", "429 Too Many Requests")), "*too many requests*"),
        (exc_event(("RateLimitError", "")), "ratelimiterror"),
        (exc_event(("", "Rate limit exceeded")), "*rate limit*"),
        ({"logentry": {"formatted": "Upstream said: Rate Limit hit"}}, "*rate limit*"),
        ({"logentry": {"message": "rate limit for %s", "params": ["x"]}}, "*rate limit*"),
        ({"message": "too many requests from client"}, "*too many requests*"),
        (exc_event(("ValueError", "bad input")), None),
        ({"message": "all good"}, None),
    ],
)
def test_error_messages(event: dict[str, Any], expected: str | None) -> None:
    cfg = FiltersConfig(error_messages=["*rate limit*", "*too many requests*", "ratelimiterror"])
    hit = check(cfg, event)
    assert (hit.rule if hit else None) == expected


def test_error_messages_match_the_template_only_without_formatted_text() -> None:
    cfg = FiltersConfig(error_messages=["*%(user)s*"])
    template = {"message": "Login failed for %(user)s", "params": {"user": "alice"}}
    assert check(cfg, {"logentry": {**template, "formatted": "Login failed for alice"}}) is None
    assert check(cfg, {"logentry": template}) is not None
    formatted = FiltersConfig(error_messages=["*for alice"])
    assert check(formatted, {"logentry": {**template, "formatted": "Login failed for alice"}})


def test_error_messages_match_type_colon_value() -> None:
    event = exc_event(("OperationalError", "could not connect to server"))
    cfg = FiltersConfig(error_messages=["OperationalError: could not connect*"])
    assert check(cfg, event) is not None
    assert check(FiltersConfig(error_messages=["could not connect*"]), event) is None


# --- client IPs and proxies ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ip", "entries", "expected"),
    [
        ("1.2.3.4", [], None),
        ("122.33.230.14", ["112.133.110.33", "122.33.230.14"], "122.33.230.14"),
        ("aaaa:bbbb::cccc", ["121.121.12.121", "aaaa:bbbb::cccc"], "aaaa:bbbb::cccc"),
        ("aaaa:bbbb::ccce", ["aaaa:bbbb::cccc"], None),
        ("122.33.230.2", ["122.33.230.0/30"], "122.33.230.0/30"),
        ("122.33.230.4", ["122.33.230.0/30"], None),
        ("122.33.230.5", ["122.33.230.4/30"], "122.33.230.4/30"),
        ("a:b:c::2", ["a:b:c::0/126"], "a:b:c::0/126"),
        ("a:b:c::4", ["a:b:c::0/126"], None),
        ("127.0.0.1", ["0.0.0.0", "127.0.0.0/8", "192.168.1.0/8"], "127.0.0.0/8"),
        ("127.0.0.1", ["lol/bar"], None),
        ("::ffff:10.1.2.3", ["10.0.0.0/8"], "10.0.0.0/8"),
        ("10.1.2.3", ["::ffff:10.0.0.0/104"], "::ffff:10.0.0.0/104"),
        ("not an ip", ["0.0.0.0/0"], None),
        (None, ["0.0.0.0/0"], None),
    ],
)
def test_client_ips(ip: str | None, entries: list[str], expected: str | None) -> None:
    ctx = RequestContext(project_id=1, public_key="k", client_ip=ip)
    hit = check(FiltersConfig(client_ips=entries), {}, "event", ctx)
    assert (hit.rule if hit else None) == expected
    if hit:
        assert hit.reason == "ip-address"


TRUSTED = parse_networks(["10.0.0.0/8", "fd00::/8"])


@pytest.mark.parametrize(
    ("peer", "xff", "expected"),
    [
        ("203.0.113.9", None, "203.0.113.9"),
        ("203.0.113.9", "198.51.100.1", "203.0.113.9"),  # untrusted peer: XFF ignored
        ("10.0.0.2", "198.51.100.1", "198.51.100.1"),
        ("10.0.0.2", "198.51.100.1, 10.0.0.7", "198.51.100.1"),
        ("10.0.0.2", "6.6.6.6, 198.51.100.1, 10.0.0.7", "198.51.100.1"),  # spoofed left hop
        ("10.0.0.2", "10.1.1.1, 10.0.0.7", "10.1.1.1"),  # all trusted: leftmost
        ("10.0.0.2", "garbage, 10.0.0.7", "10.0.0.7"),
        ("10.0.0.2", "198.51.100.1:5555", "198.51.100.1"),
        ("10.0.0.2", "[2001:db8::1]:443", "2001:db8::1"),
        ("fd00::5", "2001:db8::7", "2001:db8::7"),
        ("[fd00::5]:1234", "2001:db8::7", "2001:db8::7"),
        ("::ffff:10.0.0.2", "198.51.100.1", "198.51.100.1"),
        ("10.0.0.2", "", "10.0.0.2"),
        (None, "198.51.100.1", None),
        ("unix-socket", None, None),
    ],
)
def test_resolve_client_ip(peer: str | None, xff: str | None, expected: str | None) -> None:
    assert resolve_client_ip(peer, xff, TRUSTED) == expected


def test_filters_client_ip_uses_trusted_proxies() -> None:
    filters = compile_filters(None, None, ["127.0.0.1", "10.0.0.0/8"])
    assert filters.client_ip("127.0.0.1", "203.0.113.5, 10.2.3.4") == "203.0.113.5"
    assert filters.client_ip("192.0.2.1", "203.0.113.5") == "192.0.2.1"
    assert compile_filters(None, None, []).client_ip("127.0.0.1", "203.0.113.5") == "127.0.0.1"


def test_validate_trusted_proxies() -> None:
    assert validate_trusted_proxies(["10.0.0.0/8", "::1"]) == []
    problems = validate_trusted_proxies(["10.0.0.0/8", "nope"])
    assert [p.path for p in problems] == ["[1]"]


# --- localhost, browser extensions, crawlers, legacy browsers ----------------------------------------


@pytest.mark.parametrize(
    ("event", "rule"),
    [
        ({"user": {"ip_address": "127.0.0.1"}}, "user.ip_address"),
        ({"user": {"ip_address": "::1"}}, "user.ip_address"),
        ({"request": {"url": "http://localhost:8080/"}}, "request.url"),
        ({"request": {"url": "http://127.0.0.1:8080/"}}, "request.url"),
        ({"request": {"url": "http://[::1]:8080/"}}, "request.url"),
        ({"request": {"url": "http://foo.bar.localhost/x"}}, "request.url"),
        ({"request": {"url": "file:///Users/me/index.html"}}, "request.url"),
        (
            {"request": {"headers": {"X-Forwarded-For": "127.0.0.1"}}},
            "request.headers.X-Forwarded-For",
        ),
        ({"request": {"headers": [["host", "localhost:3000"]]}}, "request.headers.Host"),
        (
            {"request": {"headers": {"X-Forwarded-Host": "127.0.0.1:3000"}}},
            "request.headers.X-Forwarded-Host",
        ),
        ({"user": {"ip_address": "133.12.12.1"}}, None),
        ({"request": {"url": "http://localhost.com/"}}, None),
        ({"request": {"url": "http://foolocalhost/"}}, None),
        ({"request": {"url": "http://my.dom.com/"}}, None),
        ({"request": {"headers": {"Host": "localhost.sentry.io:3000"}}}, None),
        ({"request": {"url": "https://shop.example.com/", "headers": {"Host": "localhost"}}}, None),
        # A relative URL names no host: the Host headers do.
        (
            {"request": {"url": "/checkout", "headers": {"Host": "localhost:3000"}}},
            "request.headers.Host",
        ),
        (
            {"request": {"url": "/a?b=1", "headers": {"X-Forwarded-Host": "127.0.0.1:8080"}}},
            "request.headers.X-Forwarded-Host",
        ),
        ({"request": {"url": "/checkout", "headers": {"Host": "shop.example.com"}}}, None),
        ({}, None),
    ],
)
def test_localhost(event: dict[str, Any], rule: str | None) -> None:
    hit = check(FiltersConfig(localhost=True), event)
    assert (hit.rule if hit else None) == rule
    assert check(FiltersConfig(localhost=False), event) is None


def test_localhost_auto_ip_uses_the_client_address() -> None:
    event = {"user": {"ip_address": "{{auto}}"}}
    local = RequestContext(project_id=1, public_key="k", client_ip="127.0.0.1")
    remote = RequestContext(project_id=1, public_key="k", client_ip="203.0.113.1")
    assert check(FiltersConfig(localhost=True), event, ctx=local) is not None
    assert check(FiltersConfig(localhost=True), event, ctx=remote) is None


LOCAL_CLIENT = RequestContext(project_id=1, public_key="k", client_ip="127.0.0.1")
REMOTE_CLIENT = RequestContext(project_id=1, public_key="k", client_ip="203.0.113.1")


@pytest.mark.parametrize(
    ("event", "ctx", "dropped"),
    [
        # Without user.ip_address, Sentry gives the event request.env.REMOTE_ADDR ...
        ({"request": {"env": {"REMOTE_ADDR": "127.0.0.1"}}}, REMOTE_CLIENT, True),
        ({"request": {"env": {"REMOTE_ADDR": "{{auto}}"}}}, LOCAL_CLIENT, True),
        ({"user": {"id": "1"}, "request": {"env": {"REMOTE_ADDR": "::1"}}}, REMOTE_CLIENT, True),
        ({"request": {"env": {"REMOTE_ADDR": "203.0.113.1"}}}, LOCAL_CLIENT, False),
        # ... but a user address of its own wins.
        (
            {"user": {"ip_address": "203.0.113.7"}, "request": {"env": {"REMOTE_ADDR": "::1"}}},
            REMOTE_CLIENT,
            False,
        ),
        # Browser and Apple events get the client's address; other platforms do not.
        ({"platform": "javascript"}, LOCAL_CLIENT, True),
        ({"platform": "cocoa", "user": {"id": "1"}}, LOCAL_CLIENT, True),
        ({"platform": "objc"}, REMOTE_CLIENT, False),
        ({"platform": "python"}, LOCAL_CLIENT, False),
        ({"platform": "javascript", "user": {"ip_address": "203.0.113.7"}}, LOCAL_CLIENT, False),
        (
            {"platform": "javascript", "request": {"env": {"REMOTE_ADDR": "10.0.0.1"}}},
            LOCAL_CLIENT,
            False,
        ),
    ],
)
def test_localhost_reads_the_user_ip_sentry_infers(
    event: dict[str, Any], ctx: RequestContext, dropped: bool
) -> None:
    hit = check(FiltersConfig(localhost=True), event, ctx=ctx)
    assert hit == (FilterHit("localhost", "user.ip_address", False) if dropped else None)


@pytest.mark.parametrize(
    "source",
    [
        "https://graph.facebook.com/",
        "https://connect.facebook.net/en_US/sdk.js",
        "https://eatdifferent.com.woopra-ns.com/main.js",
        "https://static.woopra.com/js/woopra.js",
        "chrome-extension://my-extension/or/something",
        "chrome://my-extension/or/something",
        "moz-extension://my-extension/or/something",
        "safari-extension://my-extension/or/something",
        "safari-web-extension://my-extension/or/something",
        "127.0.0.1:4001/isrunning",
        "webappstoolbarba.texthelp.com/",
        "http://metrics.itunes.apple.com.edgesuite.net/itunespreview/itunes/browser:firefo",
        "https://fscr.kaspersky-labs.com/B-9B72-7B7/main.js",
        "webkit-masked-url:",
    ],
)
def test_browser_extension_sources(source: str) -> None:
    frames = [{"abs_path": source}, {"abs_path": "<anonymous>"}, {"abs_path": "[native code]"}]
    event = {
        "exception": {
            "values": [
                {"type": "Error", "value": "x", "stacktrace": {"frames": frames}},
                {"type": "Other"},
            ]
        }
    }
    hit = check(FiltersConfig(browser_extensions=True), event)
    assert hit is not None and hit.reason == "browser-extensions"


@pytest.mark.parametrize(
    "value",
    [
        "what does conduitPage even do",
        "null is not an object (evaluating 'elt.parentNode')",
        "some error on top.GLOBALS",
        "biiig problem on originalCreateNotification",
        "canvas.contentDocument",
        "MyApp_RemoveAllHighlights",
        "http://tt.epicplay.com/not/very/good",
        "Can't find variable: ZiteReader, I wonder why?",
        "jigsaw is not defined and I'm not happy about it",
        "ComboSearch is not defined",
        "http://loading.retry.widdit.com/some/obscure/error",
        "atomicFindClose has messed up",
        "bad news, we have a fb_xd_fragment",
        "oh no! we have a case of: bmi_SafeAddOnload, again !",
        "watch out ! EBCallBackMessageReceived",
        "error _gCrWeb",
        "plugin.setSuspendState is not a function",
        "Extension context invalidated",
        "useless error webkit-masked-url: please filter",
        "TypeError: can't access dead object because dead stuff smells bad",
        "Cannot redefine property: ethereum",
        "TypeError: Cannot redefine property: solana",
        "cannot redefine property: googletag",
    ],
)
def test_browser_extension_values(value: str) -> None:
    hit = check(FiltersConfig(browser_extensions=True), exc_event(("Error", value)))
    assert hit is not None and hit.reason == "browser-extensions"


def test_browser_extensions_leave_reasonable_events() -> None:
    cfg = FiltersConfig(browser_extensions=True)
    frames = [{"abs_path": "https://some/reasonable/source.js"}]
    event = {
        "exception": {"values": [{"type": "Error", "value": "x", "stacktrace": {"frames": frames}}]}
    }
    assert check(cfg, event) is None
    assert check(cfg, exc_event(("Error", "some perfectly reasonable value"))) is None
    _, corpus = corpus_item("error-with-attachment")
    assert check(cfg, corpus) is None


@pytest.mark.parametrize(
    "ua",
    [
        "Mediapartners-Google",
        "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
        "Mozilla/5.0 (X11; Linux x86_64; Storebot-Google/1.0) AppleWebKit/537.36",
        "BingPreview",
        "facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)",
        "meta-externalagent/1.1 (+https://developers.facebook.com/docs/sharing/webmasters/crawler)",
        "bots;",
        "spider)",
        "Twitterbot/1.0",
        "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)",
        "Mozilla/5.0 (compatible; HubSpot Crawler; web-crawlers@hubspot.com)",
        "Better Uptime Bot Mozilla/5.0 (Windows NT 10.0; Win64; x64)",
        "ELB-HealthChecker/2.0",
        "Mozilla/5.0; ClaudeBot",
        "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko); compatible; GPTBot/1.1; +https://openai.com/gptbot",
        "DuckDuckBot/1.1; (+http://duckduckgo.com/duckduckbot.html)",
    ],
)
def test_web_crawlers(ua: str) -> None:
    hit = check(FiltersConfig(web_crawlers=True), ua_event(ua))
    assert hit is not None and hit.reason == "web-crawlers" and hit.rule


@pytest.mark.parametrize(
    "ua",
    [
        "some user agent",
        "opera",
        "APIs-Google (+https://developers.google.com/webmasters/APIs-Google.html)",
        "Mozilla/5.0 (Windows NT 6.1) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/41.0.2228.0 Safari/537.36",
        "Slackbot 1.0(+https://api.slack.com/robots)",
        "SentryUptimeBot/1.0 (+http://docs.sentry.io/product/alerts/uptime-monitoring/)",
        "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko); compatible; ChatGPT-User/1.0; +https://openai.com/bot",
        "sentry.python/2.75.0",
    ],
)
def test_web_crawlers_leave_browsers(ua: str) -> None:
    assert check(FiltersConfig(web_crawlers=True), ua_event(ua)) is None


def test_web_crawlers_fall_back_to_the_request_user_agent() -> None:
    ctx = RequestContext(project_id=1, public_key="k", user_agent="Googlebot/2.1")
    hit = check(FiltersConfig(web_crawlers=True), {}, ctx=ctx)
    assert hit == FilterHit("web-crawlers", "Googlebot", False)
    # The event's own user agent wins over the HTTP request's.
    assert (
        check(FiltersConfig(web_crawlers=True), ua_event("Mozilla/5.0 Firefox/120.0"), ctx=ctx)
        is None
    )


IE8 = "Mozilla/4.0 (compatible; MSIE 8.0; Windows NT 6.0; Trident/4.0)"
IE_MOBILE9 = "Mozilla/5.0 (compatible; MSIE 9.0; Windows Phone OS 7.5; Trident/5.0; IEMobile/9.0; NOKIA; Lumia 710)"
IE9 = "Mozilla/5.0 (compatible; MSIE 9.0; Windows NT 7.1; Trident/5.0)"
IE10 = "Mozilla/5.0 (compatible; MSIE 10.0; Windows NT 6.1; Trident/6.0)"
IE11 = "Mozilla/5.0 (Windows NT 6.3; Trident/7.0; rv:11.0) like Gecko"
OPERA_MINI7 = (
    "Opera/9.80 (J2ME/MIDP; Opera Mini/7.0.32796/59.323; U; fr) Presto/2.12.423 Version/12.16"
)
OPERA_MINI8 = (
    "Opera/9.80 (J2ME/MIDP; Opera Mini/8.0.35158/36.2534; U; en) Presto/2.12.423 Version/12.16"
)
OPERA14 = "Mozilla/5.0 (Windows NT 6.1; WOW64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/27.0.1453.12 Safari/537.36 OPR/14.0.1116.4"
OPERA15 = "Mozilla/5.0 (Windows NT 6.1) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/28.0.1500.45 Safari/537.36 OPR/15.0.1147.61 (Edition Next)"
OPERA11 = "Opera/9.80 (Windows NT 5.1; U; it) Presto/2.7.62 Version/11.00"
ANDROID3 = "Mozilla/5.0 (Linux; U; Android 3.2; nl-nl; GT-P6800 Build/HTJ85B) AppleWebKit/534.13 (KHTML, like Gecko) Version/4.0 Safari/534.13"
ANDROID4 = "Mozilla/5.0 (Linux; U; Android 4.1.1; en-gb; Build/KLP) AppleWebKit/534.30 (KHTML, like Gecko) Version/4.0 Safari/534.30"
ANDROID4_CHROME = "Mozilla/5.0 (Linux; Android 4.0.4; Galaxy Nexus Build/IMM76B) AppleWebKit/535.19 (KHTML, like Gecko) Chrome/18.0.1025.133 Mobile Safari/535.19"
SAFARI5 = "Mozilla/5.0 (Windows; U; Windows NT 6.1; zh-HK) AppleWebKit/533.18.1 (KHTML, like Gecko) Version/5.0.2 Safari/533.18.5"
SAFARI6 = "Mozilla/5.0 (Macintosh; U; Intel Mac OS X 10.17.4; en-GB) AppleWebKit/605.1.5 (KHTML, like Gecko) Version/6.0 Safari/605.1.5"
EDGE12 = "Mozilla/5.0 (Windows NT 10.0) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/42.0.2311.135 Safari/537.36 Edge/12.10136"
EDGE120 = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36 Edg/120.0.0.0"
CHROME = "Mozilla/5.0 (Windows NT 6.1) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/41.0.2228.0 Safari/537.36"
FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0"
# IE 11 and IE 10 in Compatibility View say `MSIE 7.0`; the Trident token tells the version.
IE11_COMPAT = "Mozilla/4.0 (compatible; MSIE 7.0; Windows NT 10.0; WOW64; Trident/7.0; .NET4.0C)"
IE10_COMPAT = "Mozilla/4.0 (compatible; MSIE 7.0; Windows NT 6.1; Trident/6.0)"
IE7 = "Mozilla/4.0 (compatible; MSIE 7.0; Windows NT 6.0)"
OPERA_MOBILE = "Opera/9.80 (Android 2.3.3; Linux; Opera Mobi/ADR-1111101157; U; es-ES) Presto/2.9.201 Version/11.50"
OPERA_MOBILE_SYMBIAN = "Mozilla/5.0 (S60; SymbOS; Opera Mobi/SYB-1107071606; U; en)"
OPERA_MOBILE_OPR = "Mozilla/5.0 (Linux; Android 4.4.2; SM-T230 Build/KOT49H) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/40.0.2214.89 Mobile Safari/537.36 OPR/14.0.1764.90386"
UC_ANDROID2 = "Mozilla/5.0 (Linux; U; Android 2.3.5; en-US; GT-S5360 Build/GINGERBREAD) AppleWebKit/534.31 (KHTML, like Gecko) UCBrowser/9.0.2.299 U3/0.8.0 Mobile Safari/534.31"
SILK_ANDROID2 = "Mozilla/5.0 (Linux; U; Android 2.3.4; en-us; Kindle Fire Build/GINGERBREAD) AppleWebKit/533.1 (KHTML, like Gecko) Version/4.0 Mobile Safari/533.1 Silk/1.0.141.16-Gen4_11004310 Silk-Accelerated=true"
EDGE_ANDROID = "Mozilla/5.0 (Linux; Android 9; SM-G960F) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/77.0.3865.116 Mobile Safari/537.36 EdgA/45.09.4.5083"
EDGE_IOS = "Mozilla/5.0 (iPhone; CPU iPhone OS 14_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/14.0 EdgiOS/46.3.13 Mobile/15E148 Safari/605.1.15"
EDGE_WINPHONE = "Mozilla/5.0 (Windows Phone 10.0; Android 6.0.1; Microsoft; Lumia 950) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/52.0.2743.116 Mobile Safari/537.36 Edge/15.15063"


@pytest.mark.parametrize(
    ("ua", "family", "major"),
    [
        (IE8, "IE", 8),
        (IE_MOBILE9, "IE", 9),
        (IE11, "IE", 11),
        (OPERA_MINI7, "Opera Mini", 7),
        (OPERA14, "Opera", 14),
        (OPERA11, "Opera", 11),
        (ANDROID3, "Android", 3),
        (ANDROID4_CHROME, "Chrome", 18),
        (SAFARI5, "Safari", 5),
        (EDGE12, "Edge", 12),
        (EDGE120, "Edge", 120),
        (CHROME, "Chrome", 41),
        (FIREFOX, "Firefox", 120),
        # uap-core's families and versions, as Relay parses them
        (IE11_COMPAT, "IE", 11),
        (IE10_COMPAT, "IE", 10),
        (IE7, "IE", 7),
        (OPERA_MOBILE, "Opera Mobile", 11),
        (OPERA_MOBILE_SYMBIAN, "Opera Mobile", None),
        (OPERA_MOBILE_OPR, "Opera Mobile", 14),
        (UC_ANDROID2, "UC Browser", 9),
        (SILK_ANDROID2, "Amazon Silk", 1),
        (EDGE_ANDROID, "Edge Mobile", 45),
        (EDGE_IOS, "Edge Mobile", 46),
        (EDGE_WINPHONE, "Edge Mobile", 15),
    ],
)
def test_browser_version(ua: str, family: str, major: int | None) -> None:
    assert browser_version(ua) == (family, major)
    # Long user agents are parsed the same, only not remembered.
    assert browser_version(ua + " " + "x" * 600) == (family, major)


@pytest.mark.parametrize(
    ("ua", "browsers", "expected"),
    [
        (IE9, ["default"], "default"),
        (IE_MOBILE9, ["default"], "default"),
        (SAFARI5, ["default"], "default"),
        (OPERA14, ["default"], "default"),
        (OPERA11, ["default"], "default"),
        (ANDROID3, ["default"], "default"),
        (OPERA_MINI7, ["default"], "default"),
        (IE10, ["default"], None),
        (SAFARI6, ["default"], None),
        (OPERA15, ["default"], None),
        (ANDROID4, ["default"], None),
        (ANDROID4_CHROME, ["default"], None),
        (OPERA_MINI8, ["default"], None),
        (CHROME, ["default"], None),
        (EDGE12, ["default"], None),
        (IE10, ["android_pre_4", "ie10"], "ie10"),
        (IE11, ["ie11"], "ie11"),
        (IE9, ["ie9"], "ie9"),
        (IE_MOBILE9, ["ie9"], "ie9"),
        (IE8, ["ie_pre_9"], "ie_pre_9"),
        (OPERA14, ["opera_pre_15"], "opera_pre_15"),
        (OPERA_MINI7, ["opera_mini_pre_8"], "opera_mini_pre_8"),
        (ANDROID3, ["android_pre_4"], "android_pre_4"),
        (SAFARI5, ["safari_pre_6"], "safari_pre_6"),
        (EDGE12, ["edge_pre_79"], "edge_pre_79"),
        (EDGE120, ["edge_pre_79"], None),
        (IE11, ["ie10"], None),
        (IE10, ["ie9", "ie11"], None),
        (IE9, ["ie_pre_9"], None),
        (OPERA15, ["opera_pre_15"], None),
        (OPERA_MINI8, ["opera_mini_pre_8"], None),
        (ANDROID4, ["android_pre_4"], None),
        (SAFARI6, ["safari_pre_6"], None),
        # IE 11 / IE 10 in Compatibility View are not IE 7.
        (IE11_COMPAT, ["default"], None),
        (IE11_COMPAT, ["ie_pre_9"], None),
        (IE11_COMPAT, ["ie11"], "ie11"),
        (IE10_COMPAT, ["default"], None),
        (IE10_COMPAT, ["ie10"], "ie10"),
        (IE7, ["default"], "default"),
        # Browsers no class names are not old versions of another.
        (OPERA_MOBILE, ["default"], None),
        (OPERA_MOBILE, ["opera_pre_15"], None),
        (OPERA_MOBILE_SYMBIAN, ["default", "opera_pre_15"], None),
        (OPERA_MOBILE_OPR, ["opera_pre_15"], None),
        (UC_ANDROID2, ["default"], None),
        (UC_ANDROID2, ["android_pre_4"], None),
        (SILK_ANDROID2, ["android_pre_4"], None),
        (EDGE_ANDROID, ["edge_pre_79"], None),
        (EDGE_IOS, ["edge_pre_79"], None),
        (EDGE_WINPHONE, ["edge_pre_79"], None),
    ],
)
def test_legacy_browsers(ua: str, browsers: list[str], expected: str | None) -> None:
    hit = check(FiltersConfig(legacy_browsers=browsers), ua_event(ua))
    assert (hit.rule if hit else None) == expected
    if hit:
        assert hit.reason == "legacy-browsers"


def test_legacy_browsers_forms() -> None:
    assert check(FiltersConfig(legacy_browsers=True), ua_event(IE9)) == FilterHit(
        "legacy-browsers", "default", False
    )
    full = FiltersConfig(legacy_browsers=LegacyBrowsersFilter(browsers=["ie9"], mode="dry_run"))
    assert check(full, ua_event(IE9)) == FilterHit("legacy-browsers", "ie9", True)
    assert check(FiltersConfig(legacy_browsers=False), ua_event(IE9)) is None
    assert check(FiltersConfig(legacy_browsers=True), {}) is None


# --- order, dry run, org + project ---------------------------------------------------------------


def test_dry_run_reports_without_masking_enforced_filters() -> None:
    event = exc_event(("ConnectionResetError", "reset"), release="1.0")
    dry_types = FiltersConfig(
        error_types=ErrorTypesFilter(types=["ConnectionResetError"], mode="dry_run")
    )
    assert check(dry_types, event) == FilterHit("error-type", "ConnectionResetError", True)
    # A later enforcing filter wins over an earlier dry run.
    both = FiltersConfig(
        error_types=ErrorTypesFilter(types=["ConnectionResetError"], mode="dry_run"),
        error_messages=["*reset*"],
    )
    assert check(both, event) == FilterHit("error-message", "*reset*", False)
    # The first dry run is reported when nothing enforces.
    two_dry = FiltersConfig(
        releases=GlobFilter(globs=["1.*"], mode="dry_run"),
        error_types=ErrorTypesFilter(types=["*"], mode="dry_run"),
    )
    assert check(two_dry, event) == FilterHit("release-version", "1.*", True)
    switch = FiltersConfig(localhost=SwitchFilter(mode="dry_run"))
    assert check(switch, {"user": {"ip_address": "127.0.0.1"}}) == FilterHit(
        "localhost", "user.ip_address", True
    )
    ips = FiltersConfig(client_ips=ClientIpsFilter(ips=["0.0.0.0/0"], mode="dry_run"))
    ctx = RequestContext(project_id=1, public_key="k", client_ip="1.2.3.4")
    assert check(ips, {}, ctx=ctx) == FilterHit("ip-address", "0.0.0.0/0", True)


def test_org_filters_come_before_project_filters() -> None:
    event = exc_event(("ValueError", "boom"), release="2.0")
    org = FiltersConfig(error_types=["ValueError"])
    project = FiltersConfig(releases=["2.*"])
    assert check(org, event, project=project) == FilterHit("error-type", "ValueError", False)
    assert check(None, event, project=project) == FilterHit("release-version", "2.*", False)
    assert check(FiltersConfig(), event, project=FiltersConfig()) is None


def test_filter_order_within_a_policy() -> None:
    cfg = FiltersConfig(
        transactions=["*"],
        releases=["*"],
        client_ips=["0.0.0.0/0"],
    )
    filters = compile_filters(cfg, None, [])
    assert [r for r, _ in filters.reasons] == [
        "ip-address",
        "release-version",
        "health-check",
        "filtered-transaction",
    ]


def test_check_does_not_change_the_event() -> None:
    _, event = corpus_item("error-connection-reset")
    before = copy.deepcopy(event)
    cfg = FiltersConfig(
        error_types=["X"],
        error_messages=["x"],
        localhost=True,
        browser_extensions=True,
        web_crawlers=True,
        legacy_browsers=True,
        releases=["x"],
        environments=["x"],
    )
    assert check(cfg, event) is None
    assert event == before


def test_hostile_shapes_do_not_crash() -> None:
    cfg = FiltersConfig(
        error_types=["X"],
        error_messages=["x"],
        localhost=True,
        browser_extensions=True,
        web_crawlers=True,
        legacy_browsers=True,
        releases=["x"],
        environments=["x"],
        transactions=["x"],
    )
    for event in [
        {"exception": "nope", "request": "x", "user": [], "tags": 5},
        {
            "exception": {
                "values": [
                    None,
                    3,
                    {"type": 5, "value": ["a"], "stacktrace": {"frames": [None, {"abs_path": 1}]}},
                ]
            }
        },
        {"request": {"headers": [["User-Agent"], [1, 2], "x"], "url": "http://[::1"}},
        {"logentry": {"formatted": None, "message": 3}, "message": {"formatted": "x"}},
        {"release": 1.5, "environment": None, "transaction": ["x"]},
    ]:
        check(cfg, event)
        check(cfg, event, "transaction")


# --- config ------------------------------------------------------------------------------------------


def test_short_and_full_forms_from_yaml_shaped_config() -> None:
    config = parse_config(
        {
            "policy": {
                "filters": {
                    "error_types": ["ConnectionResetError"],
                    "error_messages": {"globs": ["*rate limit*"], "mode": "dry_run"},
                    "client_ips": {"ips": ["10.0.0.0/8"]},
                    "localhost": True,
                    "legacy_browsers": ["ie9"],
                    "health_checks": {"globs": ["*/status"]},
                }
            }
        }
    )
    cfg = config.policy.filters
    assert cfg is not None
    assert validate_filters(cfg) == []
    _, event = corpus_item("error-connection-reset")
    assert check(cfg, event) == FilterHit("error-type", "ConnectionResetError", False)


def test_validate_filters_reports_paths() -> None:
    cfg = FiltersConfig(
        releases=["ok", "a{b"],
        environments=GlobFilter(globs=["[x"], mode="sometimes"),
        error_types=ErrorTypesFilter(types=["X"], match="innermost"),
        client_ips=["10.0.0.0/8", "10.0.0.300"],
        legacy_browsers=["ie9", "netscape"],
        health_checks=HealthChecksFilter(globs=[""], mode="drop"),
        web_crawlers=SwitchFilter(mode="x"),
        transactions=[],
    )
    problems = {p.path: p.message for p in validate_filters(cfg)}
    assert set(problems) == {
        "releases[1]",
        "environments.mode",
        "environments.globs[0]",
        "error_types.match",
        "client_ips[1]",
        "legacy_browsers[1]",
        "health_checks.mode",
        "health_checks.globs[0]",
        "web_crawlers.mode",
    }
    assert "never closed" in problems["releases[1]"]
    assert validate_filters(FiltersConfig()) == []
    ips = FiltersConfig(client_ips=ClientIpsFilter(ips=["x"]))
    assert [p.path for p in validate_filters(ips)] == ["client_ips.ips[0]"]
    legacy = FiltersConfig(legacy_browsers=LegacyBrowsersFilter(browsers=["x"]))
    assert [p.path for p in validate_filters(legacy)] == ["legacy_browsers.browsers[0]"]
    # `[^...]` negates in other glob dialects but not in Sentry's: refused, not misread.
    caret = validate_filters(FiltersConfig(releases=["1.18.[^0-4].*"]))
    assert [p.path for p in caret] == ["releases[0]"]
    assert "write '[!...]' to negate" in caret[0].message


# --- shadow tags ----------------------------------------------------------------------------------------


def test_tag_for_shadow_with_tag_mapping() -> None:
    _, event = corpus_item("error-connection-reset")
    tag_for_shadow(event, "error-type", "ConnectionResetError")
    assert event["tags"] == {
        "tenant": "acme",
        "relay.dropped_reason": "error-type",
        "relay.rule": "ConnectionResetError",
    }
    tag_for_shadow(event, "sampled", None, dry_run=True)
    assert event["tags"] == {
        "tenant": "acme",
        "relay.dropped_reason": "sampled",
        "relay.dry_run": "true",
    }


def test_tag_for_shadow_with_tag_pairs_and_without_tags() -> None:
    event: dict[str, Any] = {"tags": [["tenant", "acme"], ["relay.rule", "old"]]}
    tag_for_shadow(event, "health-check", "*/healthz")
    assert event["tags"] == [
        ["tenant", "acme"],
        ["relay.dropped_reason", "health-check"],
        ["relay.rule", "*/healthz"],
    ]
    bare: dict[str, Any] = {}
    tag_for_shadow(bare, "quota", "q" * 300)
    assert bare["tags"] == {"relay.dropped_reason": "quota", "relay.rule": "q" * 200}
    broken: dict[str, Any] = {"tags": "x"}
    tag_for_shadow(broken, "filtered", None)
    assert broken["tags"] == {"relay.dropped_reason": "filtered"}


@pytest.mark.parametrize(
    ("tags", "kept"),
    [
        ([[["a"], "b"]], [[["a"], "b"]]),
        ([[{"k": 1}, "v"], ["relay.rule", "old"]], [[{"k": 1}, "v"]]),
        ([[1, 2, 3], [], ["solo"], "x", 7, None, {"a": "b"}], None),
        ([[None, "v"], [1.5, "w"], [True, "z"]], None),
        ([("tenant", "acme"), ("relay.dry_run", "true")], [("tenant", "acme")]),
    ],
)
def test_tag_for_shadow_with_odd_tag_lists(tags: list[Any], kept: list[Any] | None) -> None:
    """Items that are not `[str, value]` pairs are kept as they came; it never raises."""
    event: dict[str, Any] = {"tags": copy.deepcopy(tags)}
    tag_for_shadow(event, "filtered", "rule", dry_run=True)
    assert event["tags"] == [
        *(tags if kept is None else kept),
        ["relay.dropped_reason", "filtered"],
        ["relay.rule", "rule"],
        ["relay.dry_run", "true"],
    ]


@pytest.mark.parametrize(
    "tags",
    [None, "x", "", 0, 1.5, True, [], {}, {"relay.rule": ["x"], "n": None}],
)
def test_tag_for_shadow_with_odd_tag_values(tags: Any) -> None:
    event: dict[str, Any] = {"tags": copy.deepcopy(tags)}
    tag_for_shadow(event, "filtered", None)
    got = event["tags"]
    pairs = dict(got) if isinstance(got, list) else got
    assert pairs["relay.dropped_reason"] == "filtered"
    assert "relay.rule" not in pairs
    if isinstance(tags, dict) and "n" in tags:
        assert pairs["n"] is None


def test_validate_shadow() -> None:
    assert validate_shadow(ShadowConfig(dsn="https://key@sentry.example.com/43")) == []
    bad = ShadowConfig(
        dsn="nope", reasons=["filtered", "bored"], sample_rate=2.0, max_per_minute=-1
    )
    assert [p.path for p in validate_shadow(bad)] == [
        "dsn",
        "reasons[1]",
        "sample_rate",
        "max_per_minute",
    ]
    assert ShadowConfig(dsn="https://k@h/1").reasons == list(DROP_REASONS)
