"""The listener: the fast path in front (`relay.web.lean`), aiohttp behind it.

`run_app` serves like `aiohttp.web.run_app` (SIGINT and SIGTERM stop it gracefully)
with `LeanSite` in place of aiohttp's TCP site; `RelayRunner` awaits the fast path's
requests in progress on shutdown, before the app's resources are torn down. When the
relay cannot start (the port is taken, the spool cannot be opened), `run_app` raises
`StartupError` once what had started is torn down.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Any

from aiohttp import web

from relay.web.lean import LeanServer


class StartupError(Exception):
    """The relay could not start serving: its listener or a resource it opens at startup
    (the spool, the forwarder's upstream) failed. The message says which and why."""


class RelayRunner(web.AppRunner):
    """aiohttp's app runner, which also drains the fast path's connections on shutdown."""

    __slots__ = ("lean_servers",)

    def __init__(self, app: web.Application, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.lean_servers: list[LeanServer] = []

    async def shutdown(self) -> None:
        await super().shutdown()  # on_shutdown: the app starts draining
        await asyncio.gather(*(s.shutdown(self._shutdown_timeout) for s in self.lean_servers))


class LeanSite(web.BaseSite):
    """A TCP listener (a host and port, or a bound socket) whose connections start on
    the fast path and move to aiohttp at their first request it does not take."""

    __slots__ = (
        "_host",
        "_keepalive_timeout",
        "_max_connections",
        "_port",
        "_reuse_port",
        "_sock",
        "lean",
    )

    def __init__(
        self,
        runner: RelayRunner,
        host: str | None = None,
        port: int = 0,
        *,
        sock: socket.socket | None = None,
        backlog: int = 128,
        reuse_port: bool | None = None,
        keepalive_timeout: float = 75.0,
        max_connections: int | None = None,
    ) -> None:
        super().__init__(runner, backlog=backlog)
        self._max_connections = max_connections
        self._host = host
        self._port = port
        self._sock = sock
        self._reuse_port = reuse_port
        self._keepalive_timeout = keepalive_timeout
        self.lean: LeanServer | None = None

    @property
    def name(self) -> str:
        if self._sock is not None:
            host, port = self._sock.getsockname()[:2]
        else:
            host, port = self._host or "0.0.0.0", self._port
        return f"http://{host}:{port}"

    async def start(self) -> None:
        await super().start()
        runner = self._runner
        assert isinstance(runner, RelayRunner) and runner.server is not None
        self.lean = LeanServer(
            runner.app, runner.server, self._keepalive_timeout, self._max_connections
        )
        runner.lean_servers.append(self.lean)
        loop = asyncio.get_running_loop()
        if self._sock is not None:
            self._server = await loop.create_server(
                self.lean, sock=self._sock, backlog=self._backlog
            )
        else:
            self._server = await loop.create_server(
                self.lean,
                self._host,
                self._port,
                backlog=self._backlog,
                reuse_port=self._reuse_port,
            )

    async def stop(self) -> None:
        await super().stop()  # no more connections
        if self.lean is not None:
            self.lean.pre_shutdown()


async def _serve(
    app: web.Application,
    *,
    host: str,
    port: int,
    reuse_port: bool,
    backlog: int,
    keepalive_timeout: float,
    shutdown_timeout: float,
    max_connections: int | None,
) -> None:
    runner = RelayRunner(
        app,
        handle_signals=True,
        access_log=None,
        keepalive_timeout=keepalive_timeout,
        shutdown_timeout=shutdown_timeout,
    )
    listening = False
    try:
        await runner.setup()
        site = LeanSite(
            runner,
            host,
            port,
            backlog=backlog,
            reuse_port=reuse_port,
            keepalive_timeout=keepalive_timeout,
            max_connections=max_connections,
        )
        try:
            await site.start()
        except OSError as exc:
            shown = f"[{host}]" if ":" in host else host
            raise StartupError(f"cannot listen on {shown}:{port}: {exc.strerror or exc}") from exc
        listening = True
        while True:
            await asyncio.sleep(3600)
    except Exception as exc:
        if listening or isinstance(exc, StartupError):
            raise
        raise StartupError(f"{type(exc).__name__}: {exc}") from exc
    finally:
        await runner.cleanup()


def run_app(
    app: web.Application,
    *,
    host: str,
    port: int,
    reuse_port: bool = False,
    backlog: int = 1024,
    keepalive_timeout: float = 75.0,
    shutdown_timeout: float = 60.0,
    max_connections: int | None = None,
) -> None:
    """Serve `app` until SIGINT or SIGTERM, then shut down gracefully."""
    loop = asyncio.new_event_loop()
    main = loop.create_task(
        _serve(
            app,
            host=host,
            port=port,
            reuse_port=reuse_port,
            backlog=backlog,
            keepalive_timeout=keepalive_timeout,
            shutdown_timeout=shutdown_timeout,
            max_connections=max_connections,
        )
    )
    try:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(main)
    except (web.GracefulExit, KeyboardInterrupt):
        pass
    finally:
        try:
            if not main.done():
                main.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    loop.run_until_complete(main)
        finally:
            _cancel_all(loop)
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()


def _cancel_all(loop: asyncio.AbstractEventLoop) -> None:
    tasks = asyncio.all_tasks(loop)
    for task in tasks:
        task.cancel()
    if tasks:
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
    for task in tasks:
        if not task.cancelled() and task.exception() is not None:
            loop.call_exception_handler(
                {"message": "unhandled exception during shutdown", "exception": task.exception()}
            )
