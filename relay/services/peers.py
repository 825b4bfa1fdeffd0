"""One scrape of `/metrics` answers for every worker (`workers: N`).

The workers share the listening port, so a scrape reaches one of them, whichever the
kernel picks. Each worker therefore also serves its own metrics on a private Unix
socket (`worker-<i>.sock` in a directory the supervisor creates, readable by its user
only), and the worker that is scraped asks the others there and answers for all: every
series gains a `worker` label and each family is written once, so `sum by (...)` over
one scrape counts the whole relay. A worker that does not answer within
`PEER_TIMEOUT_S` (one being restarted) is left out of that scrape; the gauges
`relay_workers` and `relay_workers_scraped` tell how many there are and how many
answered (a process answering for itself alone exports them as well). Series that
describe shared state (quota usage read from Redis, the config revision) appear once
per worker, with the same value.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

log = logging.getLogger("relay")

#: How long the scraped worker waits for each of the others.
PEER_TIMEOUT_S = 2.0

#: The gauges that say how complete a scrape is. A process that answers only for itself
#: (one worker, or workers without their sockets) exports `workers` and 1.
WORKERS = ("relay_workers", "Worker processes the relay runs.")
WORKERS_SCRAPED = ("relay_workers_scraped", "Workers whose metrics this scrape includes.")


class WorkerPeers:
    """The sockets of the workers of one relay.

    Parameters:
        directory: the supervisor's private directory for the workers' sockets.
        index: this worker's index.
        count: how many workers the relay runs (`workers`).
    """

    def __init__(self, directory: str, index: int, count: int) -> None:
        self.directory = directory
        self.index = index
        self.count = count

    def socket_path(self, index: int) -> str:
        return os.path.join(self.directory, f"worker-{index}.sock")

    def serving(
        self, render: Callable[[], Awaitable[bytes]]
    ) -> Callable[[web.Application], AsyncIterator[None]]:
        """A cleanup context (for `app.cleanup_ctx`) serving this worker's own metrics
        (`render`) on its socket."""

        async def own(request: web.Request) -> web.Response:
            return web.Response(body=await render())

        async def ctx(app: web.Application) -> AsyncIterator[None]:
            side = web.Application()
            side.router.add_get("/metrics", own)
            runner = web.AppRunner(side, access_log=None)
            await runner.setup()
            path = self.socket_path(self.index)
            try:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)  # left by this worker's previous process
                await web.UnixSite(runner, path).start()
            except OSError as exc:
                # The worker serves without it: scrapes that reach another worker miss
                # this one's metrics (`relay_workers_scraped` says so).
                log.warning(
                    "worker %d cannot serve its metrics socket %s: %s", self.index, path, exc
                )
            try:
                yield
            finally:
                await runner.cleanup()

        return ctx

    async def _fetch(self, index: int) -> str | None:
        try:
            async with (
                asyncio.timeout(PEER_TIMEOUT_S),
                aiohttp.ClientSession(
                    connector=aiohttp.UnixConnector(path=self.socket_path(index))
                ) as session,
                session.get("http://worker/metrics") as resp,
            ):
                if resp.status != 200:
                    return None
                return await resp.text()
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.debug("worker %d did not answer for metrics: %s", index, type(exc).__name__)
            return None

    async def gather(self, own: bytes) -> bytes:
        """`own` metrics with those of the other workers, in one exposition."""
        others = [i for i in range(self.count) if i != self.index]
        texts = await asyncio.gather(*(self._fetch(i) for i in others))
        answered = [(self.index, own.decode("utf-8"))]
        answered += [(i, t) for i, t in zip(others, texts, strict=True) if t is not None]
        return merge_expositions(sorted(answered), self.count)


class _Merged:
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


def merge_expositions(texts: Sequence[tuple[int, str]], workers: int) -> bytes:
    """The Prometheus text expositions of several workers as one: each family once, in
    the order first seen, its samples labelled with their `worker`; then the gauges
    `relay_workers` (`workers`) and `relay_workers_scraped` (how many `texts`)."""
    merged: dict[str, Metric] = {}
    for index, text in texts:
        worker = str(index)
        for family in text_string_to_metric_families(text):
            if family.name in (WORKERS[0], WORKERS_SCRAPED[0]):
                continue  # each worker's view of itself: replaced below
            into = merged.get(family.name)
            if into is None:
                into = merged[family.name] = Metric(
                    family.name, family.documentation, family.type, family.unit
                )
            into.samples.extend(
                Sample(s.name, {"worker": worker, **s.labels}, s.value, s.timestamp, s.exemplar)
                for s in family.samples
            )
    total = GaugeMetricFamily(*WORKERS, value=workers)
    scraped = GaugeMetricFamily(*WORKERS_SCRAPED, value=len(texts))
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Merged([*merged.values(), total, scraped]))
    return generate_latest(registry)
