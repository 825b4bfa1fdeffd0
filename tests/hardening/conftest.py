"""Fixtures of the hardening suite: a relay on loopback with a recording upstream, and a
well-behaved client that measures the relay's responsiveness while an attack runs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from relay.app import create_app
from tests.support.relay import KEY, auth_header, make_config
from tests.support.upstream import RecordingUpstream

RelayFactory = Callable[..., Awaitable[TestClient]]

#: A small, valid envelope of the well-behaved client.
GOOD_ENVELOPE = (
    b'{"event_id":"0123456789abcdef0123456789abcdef"}\n'
    b'{"type":"event"}\n'
    b'{"message":"well behaved","level":"info","platform":"python"}\n'
)


@pytest.fixture
async def upstream(aiohttp_server: Any) -> tuple[RecordingUpstream, TestServer]:
    recorder = RecordingUpstream()
    server = await aiohttp_server(recorder.app)
    return recorder, server


@pytest.fixture
def recorder(upstream: tuple[RecordingUpstream, TestServer]) -> RecordingUpstream:
    return upstream[0]


@pytest.fixture
def upstream_url(upstream: tuple[RecordingUpstream, TestServer]) -> str:
    return str(upstream[1].make_url("")).rstrip("/")


@pytest.fixture
def relay_factory(upstream_url: str, aiohttp_client: Any) -> RelayFactory:
    async def make(**overrides: Any) -> TestClient:
        config = make_config(overrides.pop("upstream_url", upstream_url), **overrides)
        return await aiohttp_client(create_app(config))  # type: ignore[no-any-return]

    return make


@pytest.fixture
async def relay(relay_factory: RelayFactory) -> TestClient:
    return await relay_factory()


@dataclass
class Responsiveness:
    """A well-behaved SDK posting small envelopes back to back while an attack runs.

    Use as `async with Responsiveness(client) as probe: <attack>`, then
    `probe.check()`: every request got 200 and the 99th percentile stayed under the bound.
    """

    client: TestClient
    interval: float = 0.02
    latencies: list[float] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    _task: asyncio.Task[None] | None = None
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def _run(self) -> None:
        while not self._stop.is_set():
            start = time.perf_counter()
            resp = await self.client.post(
                "/api/42/envelope/", data=GOOD_ENVELOPE, headers=auth_header(KEY)
            )
            await resp.read()
            self.latencies.append(time.perf_counter() - start)
            self.statuses.append(resp.status)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.interval)

    async def __aenter__(self) -> Responsiveness:
        self._task = asyncio.create_task(self._run())
        await asyncio.sleep(self.interval)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        assert self._task is not None
        await asyncio.wait_for(self._task, 10)

    def p99(self) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]

    def check(self, bound: float = 1.0, at_least: int = 1) -> None:
        assert len(self.latencies) >= at_least, f"only {len(self.latencies)} probes ran"
        assert set(self.statuses) == {200}, self.statuses
        assert self.p99() < bound, f"p99 {self.p99():.3f}s over {bound}s: {self.latencies}"


@pytest.fixture
def no_unhandled_errors(caplog: pytest.LogCaptureFixture) -> Callable[[], None]:
    """Call at the end of a test: the relay logged no unhandled error (no 500 path)."""
    caplog.set_level(logging.INFO)

    def check() -> None:
        bad = [
            r for r in caplog.records if r.name.startswith("relay") and r.levelno >= logging.ERROR
        ]
        assert bad == [], [r.getMessage() for r in bad]

    return check
