"""Typed application state: every `web.AppKey` the relay uses, in one place."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aiohttp import web

from relay.config import Config
from relay.policy.registry import RegistryRef
from relay.services.forwarder import Forwarder
from relay.services.ingest import Ingest
from relay.services.limiter import Limiter
from relay.services.metrics import Metrics
from relay.services.outbox import Outbox
from relay.services.peers import WorkerPeers
from relay.services.shadow import Shadow
from relay.services.upstream_http import UpstreamHttp
from relay.services.upstream_limits import UpstreamLimits
from relay.web.body import BodyBudget
from relay.web.connections import ConnectionStats


class State:
    """Mutable runtime flags."""

    def __init__(self) -> None:
        self.draining = False
        self.started = asyncio.Event()
        #: When the stop signal came (`time.monotonic()`): `shutdown_timeout` counts from
        #: there, the requests in flight and the drain together. None: no signal (the
        #: drain's own start counts).
        self.stop_requested: float | None = None


CONFIG = web.AppKey("config", Config)
REGISTRY = web.AppKey("registry", RegistryRef)
METRICS = web.AppKey("metrics", Metrics)
OUTBOX: web.AppKey[Outbox] = web.AppKey("outbox")
UPSTREAM_LIMITS = web.AppKey("upstream_limits", UpstreamLimits)
UPSTREAM_HTTP = web.AppKey("upstream_http", UpstreamHttp)
FORWARDER = web.AppKey("forwarder", Forwarder)
INGEST = web.AppKey("ingest", Ingest)
STATE = web.AppKey("state", State)
SHADOW = web.AppKey("shadow", Shadow)
LIMITER: web.AppKey[Limiter] = web.AppKey("limiter")
BODY_BUDGET = web.AppKey("body_budget", BodyBudget)
#: The client connections' cap, and what it did (`listen.max_connections`).
CONNECTIONS = web.AppKey("connections", ConnectionStats)
#: Unix seconds for the limiter's windows (tests pass their own).
CLOCK: web.AppKey[Callable[[], float]] = web.AppKey("clock")
#: On the internal metrics app: the relay app whose metrics it serves.
METRICS_SOURCE = web.AppKey("metrics_source", web.Application)
#: Under `workers: N`: the other workers, whose metrics a scrape includes.
PEERS = web.AppKey("peers", WorkerPeers)
