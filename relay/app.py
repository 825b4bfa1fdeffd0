"""`create_app(config)`: the aiohttp application, its state and its resources.

Resources are set up in order and torn down in reverse by cleanup contexts: the
HTTP client session first, then the forwarder, so on shutdown the outbox drains
to the upstream before the session closes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from functools import partial
from pathlib import Path

import msgspec
from aiohttp import web

from relay.config import Config
from relay.keys import (
    BODY_BUDGET,
    CLOCK,
    CONFIG,
    CONNECTIONS,
    FORWARDER,
    INGEST,
    LIMITER,
    METRICS,
    METRICS_SOURCE,
    OUTBOX,
    REGISTRY,
    SHADOW,
    STATE,
    UPSTREAM_HTTP,
    UPSTREAM_LIMITS,
    State,
)
from relay.policy.registry import PolicyRegistry, RegistryRef
from relay.services.backlog import Backlog
from relay.services.client_reports import ClientReports
from relay.services.forwarder import Forwarder
from relay.services.ingest import Ingest
from relay.services.limiter import create_limiter
from relay.services.metrics import LogCounter, Metrics
from relay.services.offload import Offload
from relay.services.outbox import MemoryOutbox, Outbox
from relay.services.peers import WORKERS, WORKERS_SCRAPED
from relay.services.retarget import Retarget
from relay.services.shadow import Shadow
from relay.services.spool import DiskSpool
from relay.services.upstream_http import UpstreamHttp
from relay.services.upstream_limits import UpstreamLimits
from relay.web import admin, health, ingest
from relay.web.body import BodyBudget
from relay.web.connections import ConnectionStats
from relay.web.edge import edge_middleware

log = logging.getLogger("relay.app")

#: The shadow queue is small: copies beyond it are dropped (counted), never waited for.
SHADOW_QUEUE_ITEMS = 1000
SHADOW_QUEUE_BYTES = 64 * 1024 * 1024

#: aiohttp must not inflate bodies itself: our streaming decompressor enforces the caps.
HANDLER_ARGS = {"auto_decompress": False}


async def _log_counter(app: web.Application) -> AsyncIterator[None]:
    handler = LogCounter(app[METRICS].log_messages)
    logger = logging.getLogger("relay")
    logger.addHandler(handler)
    yield
    logger.removeHandler(handler)


async def _upstream_http(app: web.Application) -> AsyncIterator[None]:
    http = UpstreamHttp.from_config(app[CONFIG].upstream)
    app[UPSTREAM_HTTP] = http
    yield
    await http.close()


async def _outbox(app: web.Application) -> AsyncIterator[None]:
    outbox = app[OUTBOX]
    if isinstance(outbox, DiskSpool):
        await outbox.open()
    yield
    if isinstance(outbox, DiskSpool):
        await outbox.close()


async def _limiter(app: web.Application) -> AsyncIterator[None]:
    limiter = create_limiter(app[CONFIG].redis, clock=app[CLOCK])
    app[LIMITER] = limiter
    app[INGEST].limiter = limiter
    app[METRICS].add_counter_callback(
        "relay_redis_errors",
        "Failed Redis calls of the limiter.",
        lambda: float(limiter.redis_errors),
    )
    share = limiter.share
    if share is not None:
        app[METRICS].add_counter_callback(
            "relay_quota_cache_hits",
            "Checks the quota cache answered without asking Redis.",
            lambda: float(share.hits),
        )
    yield
    await limiter.close()


async def _forwarder(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    outbox = app[OUTBOX]
    metrics = app[METRICS]
    durable = isinstance(outbox, DiskSpool)
    forwarder = Forwarder(
        outbox,
        app[UPSTREAM_HTTP],
        config.upstream,
        app[UPSTREAM_LIMITS],
        metrics,
        metrics,
        keeps_unsent=durable,
        retarget=Retarget(app[REGISTRY]),
    )
    if isinstance(outbox, DiskSpool):
        spool = outbox
        outbox.on_expired = forwarder.expired
        metrics.add_counter_callback(
            "relay_spool_corrupt_records",
            "Torn or corrupt spool records skipped.",
            lambda: float(spool.corrupt_records),
        )
    app[FORWARDER] = forwarder
    shadow_forwarder = Forwarder(
        app[SHADOW].outbox,
        app[UPSTREAM_HTTP],
        msgspec.structs.replace(config.upstream, max_attempts=2, outage_after=3, gzip=True),
        UpstreamLimits(),
        metrics.shadow_outcomes,
        metrics,
        concurrency=2,
        name="shadow upstream",
        count_request=metrics.count_shadow_request,
    )
    metrics.add_gauge_callback(
        "relay_upstream_up",
        "1 while the upstream answers, 0 during an outage.",
        lambda: float(forwarder.upstream_up),
    )
    forwarder.start()
    shadow_forwarder.start()
    reports = ClientReports(outbox, config.upstream.client_reports_interval)
    app[INGEST].client_reports = reports
    forwarder.reports = reports
    reports.start()
    app[STATE].started.set()
    yield
    app[STATE].draining = True
    # `shutdown_timeout` bounds the whole stop, from the signal: the requests in flight
    # (aiohttp waits for them first) and this drain together, so that a supervisor or an
    # orchestrator waiting a little longer never kills the process in the middle of it.
    deadline = (app[STATE].stop_requested or time.monotonic()) + config.shutdown_timeout
    try:
        stages = app[INGEST]
        if stages.backlog is not None:
            stages.backlog.flush()  # the envelopes answered but not yet scrubbed, into the outbox
        if stages.offload is not None:
            # Large envelopes still being scrubbed on the offload thread, likewise; those
            # not done in time get their outcomes (`internal`, `shutdown`).
            given_up = await stages.offload.drain(max(0.0, deadline - time.monotonic()))
            if given_up:
                log.warning(
                    "shutdown: %d large envelope(s) still being processed after %ss dropped",
                    given_up,
                    config.shutdown_timeout,
                )
            stages.offload.close()
        await reports.stop()  # the drops so far, queued like any envelope
        # Everything queued goes upstream while there is time, with the disk spool too
        # (what is left stays there for the next start; so it does at once while the
        # upstream is down). Then the drops made meanwhile (envelopes the upstream kept
        # failing) are reported, and those reports sent.
        settle = partial(_settle, outbox, forwarder, deadline, spooled=durable)
        await settle()
        await reports.flush()
        await settle()
    finally:
        # Whatever failed above, what was accepted is still sent (or spooled), and the
        # shadow's forwarder stops (its copies left get their outcomes).
        try:
            await forwarder.drain(max(0.0, deadline - time.monotonic()))
        finally:
            await shadow_forwarder.stop()


async def _settle(outbox: Outbox, forwarder: Forwarder, deadline: float, *, spooled: bool) -> None:
    """Until `deadline`, wait for the outbox to have nothing reserved, queued or being
    sent (the forwarder keeps delivering meanwhile); with the disk spool, only while the
    upstream is up."""
    while outbox.pending and time.monotonic() < deadline:
        if spooled and not forwarder.upstream_up:
            return
        await asyncio.sleep(0.02)


async def _metrics_listener(app: web.Application) -> AsyncIterator[None]:
    """`/metrics` on its own internal address (`listen.metrics`), off the public listener."""
    address = app[CONFIG].listen.metrics
    assert address is not None
    host, _, port = address.rpartition(":")
    side = web.Application()
    side[METRICS_SOURCE] = app
    side.router.add_get("/metrics", health.metrics_of_parent)
    runner = web.AppRunner(
        side, access_log=None, keepalive_timeout=float(app[CONFIG].listen.keepalive_timeout_s)
    )
    await runner.setup()
    site = web.TCPSite(
        runner, host.strip("[]") or "127.0.0.1", int(port), reuse_port=app[CONFIG].workers > 1
    )
    await site.start()
    yield
    await runner.cleanup()


async def _on_shutdown(app: web.Application) -> None:
    app[STATE].draining = True


def make_outbox(config: Config, *, worker: int | None = None) -> Outbox:
    """The disk spool when `spool` is configured (one directory per worker), else memory."""
    if config.spool is None:
        return MemoryOutbox(
            config.upstream.outbox_max_items,
            config.upstream.outbox_max_bytes,
            high_water=max(64, config.upstream.concurrency * 4),
        )
    path = Path(config.spool.path)
    if worker is not None:
        path = path / f"worker-{worker}"
    return DiskSpool(
        path,
        max_bytes=config.spool.max_bytes,
        max_age=config.spool.max_age,
        durable=config.spool.durable,
    )


def create_app(
    config: Config,
    *,
    registry: PolicyRegistry | None = None,
    worker: int | None = None,
    clock: Callable[[], float] = time.time,
) -> web.Application:
    """Build the relay app from a validated config.

    Parameters:
        config: the validated configuration.
        registry: compiled policies; built from `config` when omitted.
        worker: the worker index under `workers: N` (selects its own spool directory).
        clock: Unix seconds for quota windows, retry times and spike hours.
    """
    app = web.Application(
        middlewares=[edge_middleware],
        handler_args=HANDLER_ARGS,
        client_max_size=config.limits.max_request_bytes,
    )
    metrics = Metrics()
    app_registry = registry or PolicyRegistry(config)
    outbox = make_outbox(config, worker=worker)
    upstream_limits = UpstreamLimits()
    app[CONFIG] = config
    app[CLOCK] = clock
    app[REGISTRY] = RegistryRef(app_registry)
    app[METRICS] = metrics
    metrics.set_revision(app_registry.revision)
    app[OUTBOX] = outbox
    app[UPSTREAM_LIMITS] = upstream_limits
    app[STATE] = State()
    # What a scrape of this process alone shows; under `workers: N` with their sockets,
    # `WorkerPeers` answers for every worker and sets both itself.
    metrics.add_gauge_callback(*WORKERS, lambda: float(config.workers))
    metrics.add_gauge_callback(*WORKERS_SCRAPED, lambda: 1.0)
    app[BODY_BUDGET] = BodyBudget(config.limits.max_inflight_body_bytes)
    connections = app[CONNECTIONS] = ConnectionStats()
    metrics.add_gauge_callback(
        "relay_connections", "Open client connections.", lambda: float(connections.open())
    )
    metrics.add_counter_callback(
        "relay_connections_idle_closed",
        "Idle client connections closed to make room at listen.max_connections.",
        lambda: float(connections.idle_closed),
    )
    metrics.add_counter_callback(
        "relay_connections_refused",
        "Client connections refused (503) at listen.max_connections, none being idle.",
        lambda: float(connections.refused),
    )
    offload = Offload()
    shadow = Shadow(
        MemoryOutbox(SHADOW_QUEUE_ITEMS, SHADOW_QUEUE_BYTES),
        metrics,
        metrics.shadow_skipped.inc,
        offload,
    )
    app[SHADOW] = shadow
    # With the disk spool, an envelope is on disk before the SDK has its answer.
    backlog = Backlog() if isinstance(outbox, MemoryOutbox) else None
    app[INGEST] = Ingest(
        outbox,
        upstream_limits,
        metrics,
        shadow,
        backpressure_wait=config.upstream.backpressure_wait_s,
        backlog=backlog,
        gzip_level=config.upstream.gzip_level if config.upstream.gzip else None,
        offload=offload,
    )
    metrics.add_gauge_callback(
        "relay_processing_backlog",
        "Accepted envelopes waiting to be scrubbed and queued (answered already, but for large"
        " ones with the spool), and large shadow copies being built.",
        lambda: float(len(backlog) if backlog is not None else 0) + len(offload),
    )
    app.cleanup_ctx.append(_log_counter)
    app.cleanup_ctx.append(_outbox)
    app.cleanup_ctx.append(_upstream_http)
    app.cleanup_ctx.append(_limiter)
    app.cleanup_ctx.append(_forwarder)
    if config.listen.metrics:
        app.cleanup_ctx.append(_metrics_listener)
    app.on_shutdown.append(_on_shutdown)
    health.add_routes(app, with_metrics=config.listen.metrics is None)
    ingest.add_routes(app)
    admin.add_routes(app)
    return app
