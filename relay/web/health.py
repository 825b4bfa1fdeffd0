"""Health, readiness and metrics routes."""

from __future__ import annotations

import asyncio

import orjson
from aiohttp import web

from relay.keys import (
    FORWARDER,
    LIMITER,
    METRICS,
    METRICS_SOURCE,
    OUTBOX,
    PEERS,
    REGISTRY,
    STATE,
    UPSTREAM_LIMITS,
)
from relay.services.limiter import LimiterUnavailable
from relay.services.metrics import CONTENT_TYPE
from relay.services.spool import DiskSpool
from relay.web.admin import usage_scopes


def _json(data: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


async def live(request: web.Request) -> web.Response:
    return _json({"is_healthy": True})


async def ready(request: web.Request) -> web.Response:
    """Ready while serving. An upstream outage does not make the relay unready (it keeps
    accepting into its outbox or spool); the body says so, and `?upstream=required` makes
    it count."""
    app = request.app
    state = app[STATE]
    healthy = state.started.is_set() and not state.draining
    forwarder = app.get(FORWARDER)
    upstream_up = forwarder.upstream_up if forwarder is not None else True
    if not upstream_up and request.query.get("upstream") == "required":
        healthy = False
    outbox = app[OUTBOX]
    body = {
        "is_healthy": healthy,
        "draining": state.draining,
        "upstream": "up" if upstream_up else "down",
        "outbox": {"envelopes": len(outbox), "bytes": outbox.queued_bytes},
    }
    return _json(body, status=200 if healthy else 503)


async def metrics(request: web.Request) -> web.Response:
    return await _metrics_response(request.app)


async def metrics_of_parent(request: web.Request) -> web.Response:
    return await _metrics_response(request.app[METRICS_SOURCE])


async def _metrics_response(app: web.Application) -> web.Response:
    """This process's metrics; under `workers: N`, every worker's (`WorkerPeers`)."""
    body = await render_metrics(app)
    peers = app.get(PEERS)
    if peers is not None:
        body = await peers.gather(body)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


async def render_metrics(app: web.Application) -> bytes:
    """This process's metrics, gauges read now, as Prometheus text."""
    m = app[METRICS]
    outbox = app[OUTBOX]
    m.outbox_size.set(len(outbox))
    m.outbox_bytes.set(outbox.queued_bytes)
    m.upstream_limits_active.set(len(app[UPSTREAM_LIMITS]))
    if isinstance(outbox, DiskSpool):
        m.spool_bytes.set(outbox.queued_bytes)
        m.spool_oldest_seconds.set(outbox.oldest_age())
    limiter = app.get(LIMITER)
    if limiter is not None:
        try:
            async with asyncio.timeout(1):
                rows = await limiter.usage(usage_scopes(app[REGISTRY].current))
        except (LimiterUnavailable, TimeoutError):
            rows = None
        if rows is not None:
            m.set_usage(rows)
    return m.render()


def add_routes(app: web.Application, *, with_metrics: bool = True) -> None:
    for path, handler in (
        ("/healthz", live),
        ("/readyz", ready),
        ("/api/relay/healthcheck/live/", live),
        ("/api/relay/healthcheck/ready/", ready),
    ):
        app.router.add_get(path, handler)
    if with_metrics:
        app.router.add_get("/metrics", metrics)
