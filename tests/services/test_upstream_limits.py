"""The cache of the upstream's rate limits: merged per limit, the longest kept."""

from __future__ import annotations

import pytest

from relay.protocol.ratelimit_header import RateLimit, parse_rate_limits
from relay.services.upstream_limits import UpstreamLimits


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_limit_repeated_on_every_answer_is_kept_once() -> None:
    clock = _Clock()
    limits = UpstreamLimits(clock)
    header = "60:transaction:organization:quota_exceeded, 30::key"
    for _ in range(10_000):  # one answer each: an upstream repeating its limits
        limits.add("k", parse_rate_limits(header))
        clock.now += 0.001
    assert len(limits) == 2
    found = limits.check("k", "transaction")
    assert found is not None and found.reason == "quota_exceeded"
    assert found.retry_after == pytest.approx(59.999)  # the latest answer's: it runs longest


def test_the_longest_of_a_limit_and_others_side_by_side() -> None:
    clock = _Clock()
    limits = UpstreamLimits(clock)
    limits.add("k", [RateLimit(100, ("error",), reason="a")])
    limits.add("k", [RateLimit(10, ("error",), reason="a")])  # shorter: changes nothing
    limits.add("k", [RateLimit(50, ("error",), reason="b"), RateLimit(0, ())])
    assert len(limits) == 2  # `a`, `b`; a limit of 0 seconds limits nothing
    clock.now += 60
    found = limits.check("k", "error")
    assert found is not None and (found.reason, found.retry_after) == ("a", 40)
    assert limits.check("k", "span") is None
    clock.now += 40
    assert limits.check("k", "error") is None and len(limits) == 0 and not limits.has("k")
