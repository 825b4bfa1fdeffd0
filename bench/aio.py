"""The event loop of the benchmark's child processes: uvloop when installed, as the relay uses."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable, Coroutine
from typing import Any

from aiohttp import web


def run(main: Coroutine[Any, Any, None]) -> None:
    """Run `main` to completion; Ctrl-C and SIGTERM end it quietly."""
    factory: Callable[[], asyncio.AbstractEventLoop] | None
    try:
        import uvloop

        factory = uvloop.new_event_loop
    except ImportError:
        factory = None
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with contextlib.suppress(KeyboardInterrupt), asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main)


LOOPBACK = "127.0.0.1"


async def serve_app(app: web.Application, port: int) -> None:
    """Serve `app` on loopback until cancelled; print the bound port for the harness."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, LOOPBACK, port, backlog=1024)
    await site.start()
    print(f"listening {runner.addresses[0][1]}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
