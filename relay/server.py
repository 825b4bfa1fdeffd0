"""Serving: the event loop, the listener, signals, and the start-up banner."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from relay.app import create_app
from relay.config import Config
from relay.logs import setup_logging

log = logging.getLogger("relay")

EXAMPLE_KEY = "abc123def4567890abc123def4567890"


def _install_uvloop() -> None:
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def banner(config: Config) -> str:
    host = config.listen.host
    shown = f"[{host}]" if ":" in host else host
    if host in ("0.0.0.0", "::"):
        shown = "127.0.0.1"
    project = config.projects[0] if config.projects else None
    project_id = project.id if project else 42
    key = project.keys[0] if project and project.keys else EXAMPLE_KEY
    lines = [
        f"relay listening on http://{shown}:{config.listen.port}",
        f"upstream: {config.upstream.url if config.upstream.url.startswith('file://') else config.upstream.url.split('@')[-1]}",
        f"example DSN: http://{key}@{shown}:{config.listen.port}/{project_id}",
    ]
    return "\n".join(lines)


def serve(config: Config, *, config_path: str | None = None) -> int:
    setup_logging(config.log.level, config.log.format)
    _install_uvloop()
    app = create_app(config)
    print(banner(config), flush=True)
    web.run_app(
        app,
        host=config.listen.host,
        port=config.listen.port,
        shutdown_timeout=config.shutdown_timeout,
        print=None,
        access_log=None,
        handle_signals=True,
    )
    return 0
