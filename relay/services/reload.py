"""Config reload (SIGHUP, `relay reload`): validate first, keep the old policy when invalid.

Policy, projects, limits and `upstream.url` apply to the next request; `listen`,
`workers`, `spool`, `redis` and the other `upstream` keys need a restart (a reload says
so in the log).
"""

from __future__ import annotations

import logging
from pathlib import Path

from aiohttp import web

from relay.config import ConfigError, UpstreamConfig, default_config, load_config
from relay.keys import CONFIG, METRICS, REGISTRY
from relay.policy.compile import validate_policies
from relay.policy.registry import PolicyRegistry

log = logging.getLogger("relay.reload")

RESTART_ONLY = ("listen", "workers", "spool", "redis")
#: Of `upstream`, only `url` applies on a reload (with the projects' `upstream_dsn`): the
#: forwarder, the outbox and the upstream client are made with the others at the start.
UPSTREAM_RESTART_ONLY = tuple(name for name in UpstreamConfig.__struct_fields__ if name != "url")


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
        metrics.config_reloads.labels("invalid").inc()
        log.error(
            "config reload refused; the previous policy stays in force",
            extra={"problems": [str(p) for p in err.problems][:20]},
        )
        return False
    old = app[REGISTRY].current
    started = app[CONFIG]
    for section in RESTART_ONLY:
        if getattr(config, section) != getattr(started, section):
            log.warning("config reload: a change of %r takes effect only after a restart", section)
    for key in UPSTREAM_RESTART_ONLY:
        if getattr(config.upstream, key) != getattr(started.upstream, key):
            log.warning(
                "config reload: a change of %r takes effect only after a restart", f"upstream.{key}"
            )
    app[REGISTRY].current = registry
    metrics.config_reloads.labels("ok").inc()
    metrics.set_revision(registry.revision)
    log.info("config reloaded", extra={"revision": registry.revision, "previous": old.revision})
    return True
