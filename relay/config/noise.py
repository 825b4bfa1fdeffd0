"""`policy.filters`, `policy.sampling`, `policy.shadow`: noise control sections.

Every filter takes a short form or a full form with a `mode`:

```yaml
filters:
  health_checks: true                  # on by default, with DEFAULT_HEALTH_CHECK_GLOBS
  error_types: [ConnectionResetError, BrokenPipeError]
  error_messages: {globs: ["*rate limit*"], mode: dry_run}
  client_ips: ["10.0.0.0/8", "203.0.113.7"]
  localhost: true
  legacy_browsers: [ie_pre_9, ie9]     # or true for Sentry's "default" set
  csp: ["*.ads.example.net"]           # Sentry's default CSP sources plus these
sampling:
  - {id: noisy-resets, match: {error.type: ConnectionResetError}, rate: 0.01}
shadow: {dsn: "https://key@sentry.example.com/43", max_per_minute: 600}
```

`mode: enforce` (default) drops; `mode: dry_run` drops nothing and only reports
what would have been dropped (the shadow project receives a tagged copy).
A project's sections add to the org's (org rules are evaluated first); a project
cannot switch off an org filter. Semantic checks live next to the code that uses
the sections: `relay.processing.filters.validate_filters`,
`relay.processing.sampling.validate_sampling`, and `validate_shadow` here.
"""

from __future__ import annotations

import msgspec

from relay.config.base import Problem, Section, join_path
from relay.protocol.dsn import Dsn, InvalidDsn

__all__ = [
    "DEFAULT_CSP_SOURCES",
    "DEFAULT_HEALTH_CHECK_GLOBS",
    "DROP_REASONS",
    "MODES",
    "ClientIpsFilter",
    "CspFilter",
    "ErrorTypesFilter",
    "FiltersConfig",
    "GlobFilter",
    "HealthChecksFilter",
    "LegacyBrowsersFilter",
    "SamplingRule",
    "ShadowConfig",
    "SwitchFilter",
    "validate_shadow",
]

#: The values of every `mode` key.
MODES = ("enforce", "dry_run")

#: Transaction names dropped by the `health_checks` filter unless configured otherwise.
DEFAULT_HEALTH_CHECK_GLOBS: tuple[str, ...] = (
    "*/health",
    "*/health/",
    "*/healthz",
    "*/healthz/",
    "*/ping",
    "*/ping/",
    "*/metrics",
    "*/metrics/",
    "*/liveness",
    "*/liveness/",
    "*/readiness",
    "*/readiness/",
)

#: Sentry's default list of CSP report sources to ignore (its project option
#: `sentry:csp_ignored_sources_defaults`, on for every new project), without its two
#: repeated entries. Matched against a report's blocked URI and source file.
DEFAULT_CSP_SOURCES: tuple[str, ...] = (
    "about",
    "ms-browser-extension",
    "chrome://*",
    "chrome-extension://*",
    "chromeinvokeimmediate://*",
    "chromenull://*",
    "data:text/html,chromewebdata",
    "safari-extension://*",
    "mxaddon-pkg://*",
    "jar://*",
    "webviewprogressproxy://*",
    "ms-browser-extension://*",
    "tmtbff://*",
    "mbinit://*",
    "symres://*",
    "resource://*",
    "moz-extension://*",
    "*.metrext.com",
    "static.image2play.com",
    "*.tlscdn.com",
    "73a5b0806e464be8bd4e694c744624f0.com",
    "020dfefc4ac745dab7594f2f771c1ded.com",
    "*.superfish.com",
    "addons.mozilla.org",
    "v.zilionfast.in",
    "widgets.amung.us",
    "xls.searchfun.in",
    "istatic.datafastguru.info",
    "localhost",
    "resultshub-a.akamaihd.net",
    "pulseadnetwork.com",
    "gateway.zscalertwo.net",
    "www.passpack.com",
    "middlerush-a.akamaihd.net",
    "www.websmartcenter.com",
    "a.linkluster.com",
    "saveyoutime.ru",
    "cdncache-a.akamaihd.net",
    "x.rafomedia.com",
    "savingsslider-a.akamaihd.net",
    "injections.adguard.com",
    "icontent.us",
    "amiok.org",
    "connectionstrenth.com",
    "siteheart.net",
    "netanalitics.space",
    "printapplink.com",
    "godlinkapp.com",
    "devappstor.com",
    "hoholikik.club",
    "smartlink.cool",
    "promfflinkdev.com",
)

#: Why an item can be dropped; `shadow.reasons` picks from these.
DROP_REASONS = ("filtered", "sampled", "rate_limited", "spike_protection", "quota")


class HealthChecksFilter(Section, frozen=True):
    """Drop transactions whose name matches one of `globs` (case-insensitive)."""

    enabled: bool = True
    globs: list[str] = msgspec.field(default_factory=lambda: list(DEFAULT_HEALTH_CHECK_GLOBS))
    mode: str = "enforce"


class ErrorTypesFilter(Section, frozen=True):
    """Drop errors by exception type (globs; `module.Type` also matches).

    `match: any` looks at every exception of a chain, `match: outermost` only at the
    one that was raised last (the last entry of `exception.values`).
    """

    types: list[str] = []
    match: str = "any"
    mode: str = "enforce"


class GlobFilter(Section, frozen=True):
    """Drop items whose field matches one of `globs` (case-insensitive)."""

    globs: list[str] = []
    mode: str = "enforce"


class ClientIpsFilter(Section, frozen=True):
    """Drop items sent from one of `ips` (addresses or CIDR networks)."""

    ips: list[str] = []
    mode: str = "enforce"


class SwitchFilter(Section, frozen=True):
    """A filter without parameters (localhost, browser_extensions, web_crawlers)."""

    enabled: bool = True
    mode: str = "enforce"


class LegacyBrowsersFilter(Section, frozen=True):
    """Drop events from old browsers; `browsers` uses Sentry's names (`default`, `ie9`, ...).

    With `default` beside other names, what any of them names is dropped (Sentry's Relay
    has applied only the default set then)."""

    enabled: bool = True
    browsers: list[str] = msgspec.field(default_factory=lambda: ["default"])
    mode: str = "enforce"


class CspFilter(Section, frozen=True):
    """Drop CSP reports whose blocked URI or source file comes from one of `sources`,
    and with `defaults` from one of Sentry's DEFAULT_CSP_SOURCES."""

    enabled: bool = True
    defaults: bool = True
    sources: list[str] = []
    mode: str = "enforce"


class FiltersConfig(Section, frozen=True):
    """Inbound filters, evaluated in order; each drops with its own reason.

    Unset filters are off, except `health_checks` (on unless set to `false` at org level).
    `csp` is `true` (Sentry's default sources), a list (those and the listed ones) or a
    CspFilter.
    """

    csp: bool | list[str] | CspFilter | None = None

    client_ips: list[str] | ClientIpsFilter | None = None
    releases: list[str] | GlobFilter | None = None
    environments: list[str] | GlobFilter | None = None
    error_types: list[str] | ErrorTypesFilter | None = None
    error_messages: list[str] | GlobFilter | None = None
    localhost: bool | SwitchFilter | None = None
    browser_extensions: bool | SwitchFilter | None = None
    legacy_browsers: bool | list[str] | LegacyBrowsersFilter | None = None
    web_crawlers: bool | SwitchFilter | None = None
    health_checks: bool | HealthChecksFilter | None = None
    transactions: list[str] | GlobFilter | None = None


class SamplingRule(Section, frozen=True):
    """One sampling rule: the first matching rule decides the keep rate.

    `match` maps matcher keys (the fingerprint-rule matchers: `error.type`, `message`,
    `tags.region`, `event.type`, ...; a leading `!` negates) to a glob or a list of
    globs (any of them). An empty `match` matches every item.
    """

    id: str | None = None
    match: dict[str, str | list[str]] = {}
    rate: float = 1.0
    mode: str = "enforce"


class ShadowConfig(Section, frozen=True):
    """Where dropped items are mirrored (scrubbed and tagged) for auditing.

    `reasons`: which drops are mirrored (see DROP_REASONS). `sample_rate`: share of
    those mirrored. `max_per_minute`: cap on copies (one per request: its mirrored
    items) per relay process, `0` for none.
    """

    dsn: str
    reasons: list[str] = msgspec.field(default_factory=lambda: list(DROP_REASONS))
    sample_rate: float = 1.0
    max_per_minute: int = 600


def validate_shadow(cfg: ShadowConfig) -> list[Problem]:
    """Semantic checks of `policy.shadow`; paths are relative to the section."""
    problems: list[Problem] = []
    try:
        Dsn.parse(cfg.dsn)
    except InvalidDsn as exc:
        problems.append(Problem("dsn", str(exc)))
    for i, reason in enumerate(cfg.reasons):
        if reason not in DROP_REASONS:
            problems.append(
                Problem(join_path("reasons", i), f"must be one of {', '.join(DROP_REASONS)}")
            )
    if not 0.0 <= cfg.sample_rate <= 1.0:
        problems.append(Problem("sample_rate", "must be between 0 and 1"))
    if cfg.max_per_minute < 0:
        problems.append(Problem("max_per_minute", "cannot be negative"))
    return problems
