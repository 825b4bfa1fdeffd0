"""Config reload (SIGHUP, `relay reload`): validate first, keep the old policy when invalid.

Policy, projects, limits, `admin`, `accept_unknown`, `listen.trusted_proxies` and
`upstream.url` apply to the next request, all at once (one reference to the compiled
registry is swapped). `listen` (but its `trusted_proxies`), `workers`,
`spool`, `redis`, `log`, `shutdown_timeout` and the other `upstream` keys need a
restart; a reload that changes them says which in the log.
"""

from __future__ import annotations

import logging
from pathlib import Path

from aiohttp import web

from relay.config import (
    Config,
    ConfigError,
    ListenConfig,
    UpstreamConfig,
    default_config,
    load_config,
)
from relay.keys import CONFIG, METRICS, REGISTRY
from relay.logs import log_unexpected
from relay.policy.compile import validate_policies
from relay.policy.registry import PolicyRegistry
from relay.services.metrics import Metrics

log = logging.getLogger("relay.reload")

RESTART_ONLY = ("workers", "spool", "redis", "log", "shutdown_timeout")
#: Of `listen`, only `trusted_proxies` applies on a reload (the registry reads it): the
#: listener, its timeouts and the metrics listener are made with the others at the start.
LISTEN_RESTART_ONLY = tuple(
    name for name in ListenConfig.__struct_fields__ if name != "trusted_proxies"
)
#: Of `upstream`, only `url` applies on a reload (with the projects' `upstream_dsn`): the
#: forwarder, the outbox and the upstream client are made with the others at the start.
UPSTREAM_RESTART_ONLY = tuple(name for name in UpstreamConfig.__struct_fields__ if name != "url")
#: Problems named in the log line of a refused reload.
SHOWN_PROBLEMS = 20


def reload_config(app: web.Application, path: str | Path | None) -> bool:
    """Re-read the config into `app`; return whether the new one is now in force."""
    metrics = app[METRICS]
    try:
        config = load_config(path) if path else default_config()
        problems = validate_policies(config)
        if problems:
            raise ConfigError(problems, str(path))
        registry = PolicyRegistry(config)
    except ConfigError as err:
        return _refused(metrics, [str(p) for p in err.problems])
    except Exception:
        # A config that validates and still does not compile is a bug; it must neither
        # escape the signal handler nor pass unreported. Its message may quote the config.
        log_unexpected(log, "config reload refused; the previous policy stays in force")
        metrics.config_reloads.labels("invalid").inc()
        return False
    old = app[REGISTRY].current
    pending = restart_only_changes(app[CONFIG], config)
    for key in pending:
        log.warning("config reload: a change of %r takes effect only after a restart", key)
    app[REGISTRY].current = registry
    metrics.config_reloads.labels("ok").inc()
    metrics.set_revision(registry.revision)
    log.info(
        "config reloaded: revision %s (was %s)%s",
        registry.revision,
        old.revision,
        f"; not applied until a restart: {', '.join(pending)}" if pending else "",
        extra={"revision": registry.revision, "previous": old.revision},
    )
    return True


def restart_only_changes(started: Config, new: Config) -> list[str]:
    """The keys whose new values a reload does not apply, and that `new` changes."""
    changed = [s for s in RESTART_ONLY if getattr(new, s) != getattr(started, s)]
    changed += [
        f"listen.{key}"
        for key in LISTEN_RESTART_ONLY
        if getattr(new.listen, key) != getattr(started.listen, key)
    ]
    changed += [
        f"upstream.{key}"
        for key in UPSTREAM_RESTART_ONLY
        if getattr(new.upstream, key) != getattr(started.upstream, key)
    ]
    return changed


def _refused(metrics: Metrics, problems: list[str]) -> bool:
    metrics.config_reloads.labels("invalid").inc()
    shown = problems[:SHOWN_PROBLEMS]
    more = len(problems) - len(shown)
    log.error(
        "config reload refused; the previous policy stays in force: %s%s",
        "; ".join(shown),
        f" (and {more} more)" if more else "",
        extra={"problems": shown},
    )
    return False
