from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.redis_server import RedisServer


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
