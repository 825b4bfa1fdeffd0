"""`attachments: drop` and quota counts: attachments the PII policy drops are dropped
before quotas (never charged), and never mirrored; a category only partly dropped by a
rejection keeps the count of what is kept, not of what was sent."""

from __future__ import annotations

import asyncio
import uuid
from decimal import Decimal
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient

from relay.processing.quotas import CompiledQuota, Counter
from relay.services.ingest import _uncount
from tests.support.corpus import CORPUS
from tests.support.redis_server import RedisServer
from tests.support.relay import auth_header
from tests.support.upstream import RecordingUpstream

WITH_ATTACHMENT = (CORPUS / "error-with-attachment.envelope").read_bytes()
CHECKOUT = (CORPUS / "transaction-checkout.envelope").read_bytes()
TOKEN = {"Authorization": "Bearer s3cret-token"}


@pytest.fixture(params=["memory", "redis", "redis-cached", "redis-reserved"])
def backend(request: pytest.FixtureRequest) -> dict[str, Any]:
    """`redis` without the quota cache, `redis-cached` with it in `share` mode,
    `redis-reserved` with the default one (`reserve` mode)."""
    if request.param == "memory":
        return {}
    server: RedisServer = request.getfixturevalue("redis_server")
    redis: dict[str, Any] = {"url": server.url, "prefix": f"t{uuid.uuid4().hex}"}
    if request.param == "redis":
        redis["quota_cache_ratio"] = 0
    elif request.param == "redis-cached":
        redis["quota_cache_ratio"] = 0.5
        redis["quota_cache_mode"] = "share"
    return {"redis": redis}


async def _usage(relay: TestClient) -> dict[str, int]:
    resp = await relay.get("/api/relay/usage/", headers=TOKEN)
    return {r["id"]: r["used"] for r in (await resp.json())["usage"] if r["scope_id"] == "42"}


async def test_attachments_the_policy_drops_are_never_charged(
    relay_factory: Any, recorder: RecordingUpstream, backend: dict[str, Any]
) -> None:
    policy = {
        "scrubbing": {"attachments": "drop"},
        "quotas": [
            {"id": "bytes", "categories": ["attachment"], "scope": "project", "limit": 100,
             "window": 60},
            {"id": "files", "categories": ["attachment_item"], "scope": "project", "limit": 1,
             "window": 60},
            {"id": "errors", "categories": ["error"], "scope": "project", "limit": 100,
             "window": 60},
        ],
    }  # fmt: skip
    relay = await relay_factory(policy=policy, admin={"token": "s3cret-token"}, **backend)
    for _ in range(3):
        resp = await relay.post("/api/42/envelope/", data=WITH_ATTACHMENT, headers=auth_header())
        # A 9 KB attachment against a 100-byte quota: had it been counted, the answer
        # would name the quota.
        assert resp.status == 200
        assert "X-Sentry-Rate-Limits" not in resp.headers
    await recorder.wait_for(3)
    assert [[i.type for i in e.items] for e in recorder.envelopes] == [["event"]] * 3
    assert await _usage(relay) == {"bytes": 0, "files": 0, "errors": 3}
    metrics = await (await relay.get("/metrics")).text()
    assert (
        'relay_items_total{category="attachment",outcome="filtered",'
        'reason="attachments_policy"} 3.0' in metrics
    )


async def test_attachments_the_policy_drops_never_reach_the_shadow(
    aiohttp_server: Any, upstream_url: str, recorder: RecordingUpstream, relay_factory: Any
) -> None:
    shadow = RecordingUpstream()
    host = str((await aiohttp_server(shadow.app)).make_url("")).rstrip("/").split("//", 1)[1]
    relay = await relay_factory(
        policy={
            "scrubbing": {"attachments": "drop"},
            "filters": {"error_types": ["PaymentError"]},
            "shadow": {"dsn": f"http://{'e' * 32}@{host}/7", "reasons": ["filtered"]},
        }
    )
    resp = await relay.post("/api/42/envelope/", data=WITH_ATTACHMENT, headers=auth_header())
    assert resp.status == 200
    await shadow.wait_for(1)
    await asyncio.sleep(0.1)
    # The filtered event is mirrored (scrubbed); the attachment goes nowhere.
    assert [[i.type for i in e.items] for e in shadow.envelopes] == [["event"]]
    assert "bob@example.org" not in shadow.envelopes[0].items[0].payload.decode()
    assert recorder.received == []


def _with_spans(count: int) -> bytes:
    """The checkout transaction (1 transaction; 2 spans: its own and 1 child) and a span
    item of `count` spans, in one envelope."""
    span = orjson.dumps({"type": "span", "item_count": count}) + b"\n" + b'{"spans":[]}\n'
    return CHECKOUT.rstrip(b"\n") + b"\n" + span


async def test_a_category_partly_dropped_keeps_only_the_count_of_what_is_kept(
    relay_factory: Any, recorder: RecordingUpstream, backend: dict[str, Any]
) -> None:
    """The transaction quota rejects the second and third transactions, and the spans
    they carried go with them: the span counter keeps the span items alone."""
    policy = {
        "quotas": [
            {"id": "tx", "categories": ["transaction"], "scope": "project", "limit": 1,
             "window": 60},
            {"id": "spans", "categories": ["span"], "scope": "project", "limit": 1000,
             "window": 60},
        ]
    }  # fmt: skip
    relay = await relay_factory(policy=policy, admin={"token": "s3cret-token"}, **backend)
    statuses = []
    for _ in range(3):
        resp = await relay.post("/api/42/envelope/", data=_with_spans(5), headers=auth_header())
        statuses.append(resp.status)
    assert statuses == [200, 200, 200]  # the span items are kept each time
    await recorder.wait_for(3)
    kept = [[i.type for i in e.items] for e in recorder.envelopes]
    assert kept == [["transaction", "span"], ["span"], ["span"]]
    # First: 2 + 5 spans; then 5 each (the rejected transactions' 2 were given back).
    assert await _usage(relay) == {"tx": 1, "spans": 7 + 5 + 5}


def _quota(kind: str = "quota", prices: dict[str, str] | None = None) -> CompiledQuota:
    return CompiledQuota(
        id="q",
        kind=kind,
        scope="project",
        categories=frozenset({"span"}),
        limit=10**9,
        window=None,
        reason="q",
        prices={k: Decimal(v) for k, v in (prices or {}).items()},
    )


def _counter(increment: int, quota: CompiledQuota | None) -> Counter:
    return Counter("q:q:42", "span:0", 10**9, increment, 60, 60, True, quota)


def test_uncount_gives_back_what_the_dropped_items_added() -> None:
    quota = _quota()
    budget = _quota("budget", {"span": "0.0000003"})  # 300 nano per span: rounds up
    consumed = {
        "span": [_counter(8, quota), _counter(budget.cost("span", 8), budget)],
        "transaction": [_counter(1, quota)],
        "error": [_counter(2, quota)],
    }
    gone = _uncount(consumed, {"span": 8, "transaction": 1, "error": 2}, {"span": 5, "error": 2})
    assert sorted((c.quota.kind if c.quota else "", c.increment) for c in gone) == [
        ("budget", budget.cost("span", 8) - budget.cost("span", 5)),
        ("quota", 1),  # the transaction: nothing left
        ("quota", 3),  # the spans that went with it
    ]
    # What stays counted, for a later refund of the whole envelope.
    assert [c.increment for c in consumed["span"]] == [5, budget.cost("span", 5)]
    assert "transaction" not in consumed
    assert [c.increment for c in consumed["error"]] == [2]


def test_uncount_with_nothing_dropped_gives_nothing_back() -> None:
    consumed = {"span": [_counter(8, _quota())]}
    assert _uncount(consumed, {"span": 8}, {"span": 8}) == []
    assert [c.increment for c in consumed["span"]] == [8]
