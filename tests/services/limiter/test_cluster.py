"""Redis Cluster with three masters on loopback: quotas stay exact across slots."""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator

import pytest
from redis.crc import key_slot

from relay.processing.quotas import CompiledQuotas, Scoping
from relay.services.limiter import LimitResult, create_limiter
from tests.services.limiter.conftest import Clock, quotas, redis_config
from tests.support.redis_server import RedisServer, free_port


def _cluster_ok(port: int) -> bool:
    out = subprocess.run(
        ["redis-cli", "-p", str(port), "cluster", "info"],
        capture_output=True,
        text=True,
        timeout=5,
        check=False,
    ).stdout
    return "cluster_state:ok" in out


@pytest.fixture(scope="module")
def cluster() -> Iterator[list[RedisServer]]:
    assert shutil.which("redis-cli"), "redis-cli is needed to create the cluster"
    nodes = [
        RedisServer(
            extra_args=[
                "--cluster-enabled",
                "yes",
                "--cluster-node-timeout",
                "2000",
                # The bus port defaults to port + 10000, too high for ephemeral ports.
                "--cluster-port",
                str(free_port()),
            ]
        )
        for _ in range(3)
    ]
    try:
        for node in nodes:
            node.start()
        subprocess.run(
            [
                "redis-cli",
                "--cluster",
                "create",
                *(f"127.0.0.1:{n.port}" for n in nodes),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            capture_output=True,
            timeout=30,
            check=True,
        )
        deadline = time.monotonic() + 15
        while not all(_cluster_ok(n.port) for n in nodes):
            assert time.monotonic() < deadline, "the cluster did not come up"
            time.sleep(0.1)
        yield nodes
    finally:
        for node in nodes:
            node.cleanup()


def accepted(results: list[LimitResult]) -> int:
    return sum(1 for r in results if not r.is_rejected("error"))


async def test_quotas_exact_across_slots(cluster: list[RedisServer], clock: Clock) -> None:
    """Each check touches three slots (org, project, key); one quota decides per phase.

    When two quotas in different slots are both near their limit at once, a check can
    be turned away by a reservation that is given back a moment later (documented in
    `relay.services.limiter.redis`): never more than a limit, but possibly fewer. So
    each phase here has one deciding quota, and every other counter must still end
    exact, refunds included.
    """
    cfg = redis_config(cluster[0].url.removesuffix("/0"), mode="cluster")
    one = create_limiter(cfg, clock=clock)
    two = create_limiter(cfg, clock=clock)

    def compiled(org: int, project: int) -> CompiledQuotas:
        return quotas(
            {"id": "org", "categories": ["error"], "limit": org, "window": 60},
            {
                "id": "proj",
                "categories": ["error"],
                "scope": "project",
                "limit": project,
                "window": 60,
            },
            {"id": "key", "categories": ["error"], "scope": "key", "limit": 10**6, "window": 60},
        )

    projects = [Scoping(p, f"key{p}") for p in range(1, 7)]
    slots = {
        key_slot(f"{{{cfg.prefix}:q:{tag}}}".encode())
        for tag in ["org:default", *(f"proj:{s.project_id}" for s in projects), "key:key1"]
    }
    assert len(slots) == 8  # every counter owner in a slot of its own
    try:
        # Phase 1: each project's own quota decides; two processes, interleaved.
        phase1 = compiled(org=10**6, project=10)
        results = await asyncio.gather(
            *(
                (one if i % 2 else two).check(projects[i % 6], [("error", 1)], phase1)
                for i in range(240)
            )
        )
        for p in range(6):
            assert accepted(results[p::6]) == 10, p
        # The org and key counters gave back what the rejected checks had reserved.
        rows = {
            (r.id, r.scope_id): r.used for r in await one.usage([(s, phase1) for s in projects])
        }
        assert rows[("org", "default")] == 60
        assert all(rows[("proj", str(s.project_id))] == 10 for s in projects)
        assert all(rows[("key", s.public_key)] == 10 for s in projects)
        # Phase 2: the org quota (same counter, now limit 75) decides: exactly 15 left.
        phase2 = compiled(org=75, project=10**6)
        fresh = [Scoping(p, f"key{p}") for p in range(7, 10)]
        results = await asyncio.gather(
            *(
                (one if i % 2 else two).check(fresh[i % 3], [("error", 1)], phase2)
                for i in range(90)
            )
        )
        assert accepted(results) == 15
        assert {r.rejected["error"].quota_id for r in results if r.limited} == {"org"}
        rows = {(r.id, r.scope_id): r.used for r in await two.usage([(s, phase2) for s in fresh])}
        assert rows[("org", "default")] == 75
        assert sum(rows[("proj", str(s.project_id))] for s in fresh) == 15
        assert sum(rows[("key", s.public_key)] for s in fresh) == 15
    finally:
        await one.close()
        await two.close()


async def test_cluster_spike_and_budget(cluster: list[RedisServer], clock: Clock) -> None:
    cfg = redis_config(cluster[1].url.removesuffix("/0"), mode="cluster")
    limiter = create_limiter(cfg, clock=clock)
    compiled = quotas(
        budgets=[{"id": "money", "amount": 0.01, "prices": {"error": 0.001}}],
        spike={"enabled": True, "floor_per_hour": 7, "multiplier": 2},
    )
    try:
        results = await asyncio.gather(
            *(limiter.check(Scoping(1, "k"), [("error", 1)], compiled) for _ in range(20))
        )
        assert accepted(results) == 7
        # Checks 8-10 fit the budget but not the spike threshold (the budget takes them
        # back); later ones fit neither, and the budget's longer window decides.
        reasons = [r.rejected["error"].reason for r in results if r.limited]
        assert reasons == ["spike_protection"] * 3 + ["money"] * 10
        clock.advance(1)  # the budget looked full for a moment (see above)
        results = await asyncio.gather(
            *(limiter.check(Scoping(2, "k"), [("error", 1)], compiled) for _ in range(20))
        )
        assert accepted(results) == 3  # the budget: 10 errors in all
        rows = await limiter.usage([(Scoping(1, "k"), compiled), (Scoping(2, "k"), compiled)])
        budget = next(r for r in rows if r.kind == "budget")
        assert budget.spend == pytest.approx(0.01) and budget.used == budget.limit
        spikes = sorted((r.scope_id, r.used, r.limit) for r in rows if r.kind == "spike")
        assert spikes == [("1", 7, 7), ("2", 3, 7)]
    finally:
        await limiter.close()


async def test_cluster_refund_across_slots(cluster: list[RedisServer], clock: Clock) -> None:
    """A refund of counters in three slots (org, project, key): one call per slot."""
    cfg = redis_config(cluster[2].url.removesuffix("/0"), mode="cluster")
    limiter = create_limiter(cfg, clock=clock)
    compiled = quotas(
        {"id": "org", "categories": ["error"], "limit": 100, "window": 60},
        {"id": "proj", "categories": ["error"], "scope": "project", "limit": 100, "window": 60},
        {"id": "key", "categories": ["error"], "scope": "key", "limit": 100, "window": 60},
    )
    scope = Scoping(5, "key5")
    try:
        kept = [await limiter.check(scope, [("error", 2)], compiled) for _ in range(3)]
        (counted,) = kept[0].consumed.values()
        assert len({key_slot(c.key(cfg.prefix).encode()) for c in counted}) == 3
        await limiter.refund(counted)
        rows = {r.id: r.used for r in await limiter.usage([(scope, compiled)])}
        assert rows == {"org": 4, "proj": 4, "key": 4}
        assert limiter.redis_errors == 0
    finally:
        await limiter.close()


@pytest.mark.parametrize("mode", ["reserve", "share"])
async def test_quota_cache_across_slots(
    cluster: list[RedisServer], clock: Clock, mode: str
) -> None:
    """With the quota cache, a check's counters in three slots are taken from allowances,
    reserved (`reserve`) or added (`share`) in Redis per slot: one process stays exact, and
    Redis ends with every count."""
    cfg = redis_config(
        cluster[0].url.removesuffix("/0"),
        mode="cluster",
        quota_cache_ratio=0.5,
        quota_cache_mode=mode,
    )
    limiter = create_limiter(cfg, clock=clock)
    compiled = quotas(
        {"id": "org", "categories": ["error"], "limit": 10**6, "window": 60},
        {"id": "proj", "categories": ["error"], "scope": "project", "limit": 40, "window": 60},
        {"id": "key", "categories": ["error"], "scope": "key", "limit": 10**6, "window": 60},
    )
    scope = Scoping(11, "key11")
    try:
        results = [await limiter.check(scope, [("error", 1)], compiled) for _ in range(60)]
        assert accepted(results) == 40
        assert limiter.share is not None and limiter.share.hits > 20
        rows = {(r.id, r.scope_id): r.used for r in await limiter.usage([(scope, compiled)])}
        assert rows[("org", "default")] == rows[("proj", "11")] == rows[("key", "key11")] == 40
    finally:
        await limiter.close()


async def test_a_check_on_a_stalled_node_counts_nothing(
    cluster: list[RedisServer], clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node that stalls past the timeout runs the queued script when it wakes, past the
    deadline given in its own clock: the check that failed counted nothing there, and the
    other slots gave back what it took."""
    monkeypatch.setattr("relay.services.limiter.redis.SOCKET_TIMEOUT_S", 0.3)
    cfg = redis_config(cluster[0].url.removesuffix("/0"), mode="cluster")
    limiter = create_limiter(cfg, clock=clock)
    compiled = quotas(
        {"id": "org", "categories": ["error"], "limit": 10**6, "window": 60},
        {"id": "proj", "categories": ["error"], "scope": "project", "limit": 10**6, "window": 60},
    )
    scope = Scoping(3, "key3")
    try:
        assert not (await limiter.check(scope, [("error", 1)], compiled)).limited
        owner = next(n for n in cluster if _owns(n.port, f"{{{cfg.prefix}:q:proj:3}}"))
        assert sum(_owns(n.port, f"{{{cfg.prefix}:q:proj:3}}") for n in cluster) == 1
        assert owner.proc is not None
        owner.proc.send_signal(signal.SIGSTOP)
        try:
            failed = await limiter.check(scope, [("error", 1)], compiled)
        finally:
            await asyncio.sleep(0.5)  # well within the cluster's node timeout
            owner.proc.send_signal(signal.SIGCONT)
        assert failed.store_error
        await asyncio.sleep(1.2)  # past the pause after a failure
        assert not (await limiter.check(scope, [("error", 1)], compiled)).limited
        rows = {(r.id, r.scope_id): r.used for r in await limiter.usage([(scope, compiled)])}
        assert rows == {("org", "default"): 2, ("proj", "3"): 2}
    finally:
        await limiter.close()


def _owns(port: int, key: str) -> bool:
    """Whether the node on `port` holds `key`'s slot (others answer MOVED)."""
    done = subprocess.run(
        ["redis-cli", "-p", str(port), "exists", key],
        capture_output=True,
        text=True,
        timeout=5,
        check=False,
    )
    return "MOVED" not in done.stdout + done.stderr
