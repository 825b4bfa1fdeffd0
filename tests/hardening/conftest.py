"""Fixtures of the hardening suite: a relay on loopback with a recording upstream, and a
well-behaved client that measures the relay's responsiveness while an attack runs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType

import pytest
from aiohttp.test_utils import TestClient

from tests.support.relay import KEY, auth_header

#: A small, valid envelope of the well-behaved client.
GOOD_ENVELOPE = (
    b'{"event_id":"0123456789abcdef0123456789abcdef"}\n'
    b'{"type":"event"}\n'
    b'{"message":"well behaved","level":"info","platform":"python"}\n'
)


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
