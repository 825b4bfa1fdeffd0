"""Build configs and running relays for tests, through the same factory as production."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp.test_utils import TestClient

from relay.config import Config, parse_config

#: The `relay_factory` fixture: builds a relay client from config overrides.
RelayFactory = Callable[..., Awaitable[TestClient]]

KEY = "abc123def4567890abc123def4567890"
OTHER_KEY = "fedcba0987654321fedcba0987654321"

#: 2027-01-01T00:00:00Z: a minute, hour, day and month all start here.
WINDOW_START = 1_798_761_600


def window_clock() -> Callable[[], float]:
    """A clock that runs at real speed from one second into a fresh quota window.

    On the wall clock a test's requests can straddle a window boundary (three events
    counted before 12:00:00, the fourth after it, in a new window); on this clock a
    test has the whole window to itself.
    """
    offset = WINDOW_START + 1 - time.time()
    return lambda: time.time() + offset


def make_config(upstream_url: str, **overrides: Any) -> Config:
    data: dict[str, Any] = {
        "upstream": {
            "url": upstream_url,
            "retry_base_s": 0.01,
            "retry_max_s": 0.05,
            "timeout_s": 5,
        },
        "projects": [{"id": 42, "keys": [KEY]}, {"id": 43, "keys": [OTHER_KEY]}],
        "shutdown_timeout": 5,
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return parse_config(data, env={})


def auth_header(key: str = KEY) -> dict[str, str]:
    return {"X-Sentry-Auth": f"Sentry sentry_key={key}, sentry_version=7, sentry_client=test/1.0"}
