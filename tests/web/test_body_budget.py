"""All requests together hold at most `limits.max_inflight_body_bytes` of decoded body."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator

import pytest
from aiohttp.test_utils import TestClient

from relay.config import parse_config
from relay.keys import BODY_BUDGET
from tests.support.relay import RelayFactory, auth_header

MIB = 1024 * 1024
LIMITS = {"max_decompressed_bytes": "1MiB", "max_inflight_body_bytes": "1MiB"}


def _envelope(size: int) -> bytes:
    head = b'{"event_id":"9d3b62a420d34c9ea6173cc867f4e1a3"}\n{"type":"attachment","length":'
    return head + str(size).encode() + b"}\n" + b"x" * size + b"\n"


@pytest.mark.parametrize("encoding", [None, "gzip"])
async def test_a_body_over_what_is_left_gets_503_until_the_holder_is_done(
    relay_factory: RelayFactory, encoding: str | None
) -> None:
    """The bodies sent whole are charged their decoded size, plain or gzip."""
    relay: TestClient = await relay_factory(limits=LIMITS)
    budget = relay.app[BODY_BUDGET]
    release = asyncio.Event()
    big = _envelope(700 * 1024)

    async def slow_body() -> AsyncIterator[bytes]:
        yield big[: 600 * 1024]
        await release.wait()  # holds 600 KiB of the budget meanwhile
        yield big[600 * 1024 :]

    holder = asyncio.create_task(
        relay.post("/api/42/envelope/", data=slow_body(), headers=auth_header())
    )
    for _ in range(200):
        if budget.used >= 500 * 1024:
            break
        await asyncio.sleep(0.01)
    assert budget.used >= 500 * 1024

    headers = auth_header()
    if encoding == "gzip":
        headers["Content-Encoding"] = "gzip"

    def encoded(body: bytes) -> bytes:
        return gzip.compress(body) if encoding == "gzip" else body

    refused = await relay.post("/api/42/envelope/", data=encoded(big), headers=headers)
    assert refused.status == 503
    assert refused.headers["Retry-After"] == "1"
    assert "too many request bodies" in (await refused.json())["detail"]

    small = await relay.post("/api/42/envelope/", data=encoded(_envelope(10)), headers=headers)
    assert small.status == 200  # what is left still serves small bodies

    release.set()
    assert (await holder).status == 200
    assert budget.used == 0
    again = await relay.post("/api/42/envelope/", data=encoded(big), headers=headers)
    assert again.status == 200
    assert budget.used == 0


def test_budget_below_one_body_is_a_config_error() -> None:
    from relay.config import ConfigError

    with pytest.raises(ConfigError) as err:
        parse_config(
            {"limits": {"max_decompressed_bytes": "2MiB", "max_inflight_body_bytes": MIB}},
            env={},
        )
    assert "limits.max_inflight_body_bytes" in str(err.value)
