from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from relay.app import create_app
from tests.support.lean import LeanTestServer
from tests.support.process import RelayProcess
from tests.support.redis_server import RedisServer
from tests.support.relay import RelayFactory, make_config, window_clock
from tests.support.upstream import RecordingUpstream


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One real redis-server for the session; tests use distinct key prefixes or flush."""
    server = RedisServer().start()
    yield server
    server.cleanup()


@pytest.fixture
def fresh_redis() -> Iterator[RedisServer]:
    """A redis-server of the test's own (for tests that kill or restart it)."""
    server = RedisServer().start()
    yield server
    server.cleanup()


@pytest.fixture
async def upstream(aiohttp_server: Any) -> tuple[RecordingUpstream, TestServer]:
    """A recording upstream on loopback (set up before the relay, so torn down after it)."""
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
    """Relays built through the production factory, config overrides as keyword arguments."""

    async def make(**overrides: Any) -> TestClient:
        config = make_config(overrides.pop("upstream_url", upstream_url), **overrides)
        return await aiohttp_client(  # type: ignore[no-any-return]
            LeanTestServer(create_app(config, clock=window_clock()))
        )

    return make


@pytest.fixture
async def relay(relay_factory: RelayFactory) -> TestClient:
    return await relay_factory()


@pytest.fixture
def sdk_dsn(relay: TestClient) -> Iterator[str]:
    """A DSN for the real sentry-sdk that points at `relay`; the SDK is closed after."""
    import sentry_sdk

    from tests.support.relay import KEY

    yield f"http://{KEY}@127.0.0.1:{relay.port}/42"
    client = sentry_sdk.get_client()
    if client.is_active():
        client.close(timeout=2)


@pytest.fixture
def processes() -> Iterator[list[RelayProcess]]:
    """Relay processes started by a test, killed after it whatever happened."""
    started: list[RelayProcess] = []
    yield started
    for proc in started:
        proc.kill()
