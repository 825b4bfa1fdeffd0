"""Serving: the event loop, the listener, signals, workers, and the start-up banner.

`workers: 1` serves in this process. `workers: N` makes this process a small
supervisor: it starts N worker processes that share the port (SO_REUSEPORT),
restarts a worker that dies, forwards SIGHUP (reload) and SIGTERM (drain and
stop) to all of them, and exits when they have stopped.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path

from aiohttp import web

from relay.app import create_app
from relay.config import Config
from relay.keys import PEERS, STATE, State
from relay.logs import setup_logging
from relay.protocol.proxy import Proxy
from relay.protocol.url import local_authority
from relay.rlimit import raise_open_files_limit
from relay.services.peers import WorkerPeers
from relay.services.reload import reload_config
from relay.web.health import render_metrics
from relay.web.site import StartupError, run_app

log = logging.getLogger("relay")

EXAMPLE_KEY = "abc123def4567890abc123def4567890"

#: The exit status of a relay (or a worker) that could not start serving: the port is
#: taken, the spool cannot be opened, a worker's config no longer loads. A supervisor
#: whose worker exits with it on its first start stops the relay instead of retrying.
EXIT_NOT_STARTED = 3


def _install_uvloop() -> None:
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def describe_upstream(config: Config) -> str:
    """`upstream.url` without credentials, and the proxy's address if one is set."""
    upstream = config.upstream.url
    if upstream.startswith("file://"):
        return upstream
    upstream = upstream.split("@")[-1]
    if config.upstream.proxy:
        upstream += f" (through the proxy {Proxy.parse(config.upstream.proxy.reveal()).shown})"
    return upstream


def banner(config: Config) -> str:
    address = local_authority(config.listen.host, config.listen.port)
    project = config.projects[0] if config.projects else None
    project_id = project.id if project else 42
    key = project.keys[0] if project and project.keys else EXAMPLE_KEY
    workers = f" ({config.workers} workers)" if config.workers > 1 else ""
    return "\n".join(
        [
            f"relay listening on http://{address}{workers}",
            f"upstream: {describe_upstream(config)}",
            f"example DSN: http://{key}@{address}/{project_id}",
        ]
    )


#: A SIGHUP came while the relay was starting (`defer_early_reloads`).
_early_reload = False


def defer_early_reloads() -> None:
    """Until the relay can reload, a SIGHUP is remembered, and acted on once it can,
    instead of ending the process (SIGHUP's default action): a `relay reload` sent just
    after a start, or forwarded by the supervisor to a worker still starting."""

    def remember(signum: int, frame: object) -> None:
        global _early_reload
        _early_reload = True

    signal.signal(signal.SIGHUP, remember)


def _take_early_reload() -> bool:
    global _early_reload
    taken, _early_reload = _early_reload, False
    return taken


def serve(
    config: Config,
    *,
    config_path: str | None = None,
    worker: int | None = None,
    worker_dir: str | None = None,
    pid_file: str | None = None,
) -> int:
    setup_logging(config.log.level, config.log.format)
    if worker is None:
        print(banner(config), flush=True)
        raise_open_files_limit()  # workers inherit it
        if pid_file:
            Path(pid_file).write_text(f"{os.getpid()}\n")
        if config.workers > 1:
            return Supervisor(config, config_path).run()
    return serve_worker(config, config_path=config_path, worker=worker, worker_dir=worker_dir)


def serve_worker(
    config: Config,
    *,
    config_path: str | None,
    worker: int | None,
    worker_dir: str | None = None,
) -> int:
    _install_uvloop()
    app = create_app(config, worker=worker)
    if worker is not None and worker_dir is not None:
        peers = WorkerPeers(worker_dir, worker, config.workers)
        app[PEERS] = peers
        app.cleanup_ctx.append(peers.serving(partial(render_metrics, app)))

    async def signals(app: web.Application) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, reload_config, app, config_path)
        if _take_early_reload():
            loop.call_soon(reload_config, app, config_path)
        _stop_once(loop, config.shutdown_timeout, app[STATE])
        yield
        # While draining, a reload changes nothing, and SIGHUP's default action would
        # end the process and the drain.
        loop.remove_signal_handler(signal.SIGHUP)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        # SIGINT and SIGTERM stay with `_stop_once` until the listener's runner removes
        # them, after the drain.

    app.cleanup_ctx.append(signals)
    app.on_startup.append(_tune_gc)
    try:
        run_app(
            app,
            host=config.listen.host,
            port=config.listen.port,
            reuse_port=worker is not None,
            backlog=config.listen.backlog,
            keepalive_timeout=float(config.listen.keepalive_timeout_s),
            shutdown_timeout=config.shutdown_timeout,
            max_connections=config.listen.max_connections,
        )
    except StartupError as exc:
        who = "the relay" if worker is None else f"worker {worker}"
        log.error("%s could not start: %s", who, exc)
        return EXIT_NOT_STARTED
    return 0


def _stop_once(loop: asyncio.AbstractEventLoop, shutdown_timeout: float, state: State) -> None:
    """SIGINT and SIGTERM stop the relay gracefully, once: a signal that comes while it
    drains is logged and changes nothing. Another one is usual (systemd signals every
    process of its unit, and a terminal's Ctrl-C the whole process group, so a worker
    gets the supervisor's SIGTERM as well), and aiohttp's handler would end the drain
    at once, losing the envelopes answered and not yet forwarded."""
    stopping = False

    def stop(signum: int) -> None:
        nonlocal stopping
        if stopping:
            log.warning(
                "%s while stopping: the drain goes on (at most %ss); SIGKILL stops at once",
                signal.Signals(signum).name,
                shutdown_timeout,
            )
            return
        stopping = True
        state.stop_requested = time.monotonic()  # the drain's deadline counts from here
        raise web.GracefulExit

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop, signum)


#: Allocations between young-generation collections (CPython's default is 700). A request
#: allocates thousands of short-lived objects; collecting less often lets them die
#: first instead of being scanned and promoted.
GC_GEN0_THRESHOLD = 10_000


async def _tune_gc(app: web.Application) -> None:
    """After startup: the objects that live as long as the process (modules, compiled
    policies) leave the collector's generations, and young collections run less often.
    About 5% of a busy worker's CPU went to the cyclic collector before."""
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, gen1, gen2)


#: The workers' socket directory: `relay-workers-<supervisor pid>-<random>` in `$TMPDIR`.
WORKER_DIR_PREFIX = "relay-workers-"


def _remove_orphaned_worker_dirs() -> None:
    """Removes the socket directories of supervisors that are gone without cleaning up
    (SIGKILL, a power cut): this user's, whose pid is no longer a process."""
    try:
        found = list(Path(tempfile.gettempdir()).glob(f"{WORKER_DIR_PREFIX}*-*"))
    except OSError:
        return
    for path in found:
        pid = path.name.removeprefix(WORKER_DIR_PREFIX).partition("-")[0]
        try:
            if not pid.isdigit() or path.lstat().st_uid != os.getuid() or not path.is_dir():
                continue
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except OSError:
            pass  # alive, gone meanwhile, or not ours to signal: left alone


class Supervisor:
    """Keeps `config.workers` worker processes running.

    A worker that dies, or that cannot be started (fork/exec failing: EAGAIN, ENOMEM,
    as after a worker was OOM-killed), is started again: at once for the first few
    times in a minute, then after a delay that doubles up to 30 s. But a worker that
    exits with `EXIT_NOT_STARTED` from its first start (the port is taken, its spool
    cannot be opened) stops the relay, which exits with that status: retrying would
    hide a deployment that cannot work. Whatever ends the run loop, the workers are
    stopped and their socket directory removed.

    Parameters:
        config: the validated config (for `workers` and `shutdown_timeout`).
        config_path: passed on to the workers, which load it themselves.
    """

    def __init__(self, config: Config, config_path: str | None) -> None:
        self.config = config
        self.config_path = config_path
        #: The workers started (running, or exited and not yet noticed), by index.
        self.children: dict[int, subprocess.Popen[bytes]] = {}
        #: When each worker was restarted (or a restart tried), for the backoff.
        self.restarts: dict[int, list[float]] = {}
        #: The workers not running, by index: when to (re)start them (`time.monotonic`).
        self.pending: dict[int, float] = {}
        #: Workers on their first process: one that cannot start stops the relay.
        self.first_start: set[int] = set(range(config.workers))
        self.failed = False
        self._stopping = False
        self._reload = False
        #: The workers' private sockets (their metrics, for one scrape of all of them).
        self.worker_dir: str | None = None
        _remove_orphaned_worker_dirs()
        try:
            self.worker_dir = tempfile.mkdtemp(prefix=f"{WORKER_DIR_PREFIX}{os.getpid()}-")
        except OSError as exc:
            log.warning(
                "no directory for the workers' sockets (%s): each scrape of /metrics "
                "shows one worker",
                exc,
            )

    def _spawn(self, index: int) -> None:
        """Starts worker `index`; if that fails, logs it and schedules another try."""
        args = [sys.executable, "-m", "relay", "run", "--worker", str(index)]
        if self.config_path:
            args += ["--config", self.config_path]
        if self.worker_dir is not None:
            args += ["--worker-dir", self.worker_dir]
        try:
            child = subprocess.Popen(args)
        except OSError as exc:
            delay = self._schedule(index)
            log.error(
                "worker %d could not be started (%s); retrying%s",
                index,
                exc,
                f" in {delay:.0f}s" if delay else "",
            )
            return
        self.children[index] = child
        log.info("worker %d started (pid %d)", index, child.pid)

    def _schedule(self, index: int) -> float:
        """Marks worker `index` as not running, to be started again after the delay
        this returns: none for the first 4 restarts within a minute, then 8 s, 16 s, 30 s."""
        now = time.monotonic()
        recent = [t for t in self.restarts.get(index, []) if now - t < 60]
        self.restarts[index] = recent
        delay = min(30.0, 0.5 * 2 ** len(recent)) if len(recent) > 3 else 0.0
        self.children.pop(index, None)
        self.pending[index] = now + delay
        return delay

    def _on_stop(self, signum: int, frame: object) -> None:
        self._stopping = True

    def _on_hup(self, signum: int, frame: object) -> None:
        self._reload = True

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_hup)
        _take_early_reload()  # the workers, not started yet, read the file as it is now
        try:
            for index in range(self.config.workers):
                self._spawn(index)
            self._supervise()
        finally:
            self._shutdown()
        return EXIT_NOT_STARTED if self.failed else 0

    def _supervise(self) -> None:
        """Until SIGTERM/SIGINT: forwards SIGHUP, restarts workers that exited or could
        not be started (each when its backoff allows; the loop never sleeps on one)."""
        while not self._stopping:
            time.sleep(0.1)
            if self._reload:
                self._reload = False
                for child in self.children.values():
                    child.send_signal(signal.SIGHUP)
            for index, child in list(self.children.items()):
                code = child.poll()
                if code is None or self._stopping:
                    continue
                if code == EXIT_NOT_STARTED and index in self.first_start:
                    log.error(
                        "worker %d could not start (its error is above); stopping the relay",
                        index,
                    )
                    self.failed = self._stopping = True
                    self.children.pop(index)
                    break
                self.first_start.discard(index)
                delay = self._schedule(index)
                log.error(
                    "worker %d exited with %s; restarting%s",
                    index,
                    code,
                    f" in {delay:.0f}s" if delay else "",
                )
            for index, due in sorted(self.pending.items()):
                now = time.monotonic()
                if self._stopping or due > now:
                    continue
                del self.pending[index]
                self.restarts[index].append(now)
                self._spawn(index)

    def _shutdown(self) -> int:
        try:
            for child in self.children.values():
                if child.poll() is None:
                    child.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + self.config.shutdown_timeout + 5
            for child in self.children.values():
                try:
                    child.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait()
        finally:
            if self.worker_dir is not None:
                shutil.rmtree(self.worker_dir, ignore_errors=True)
        return 0
