"""Spend control through the HTTP path: quotas, partial drops, headers, usage, Redis outages."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
import sentry_sdk
from aiohttp.test_utils import TestClient

from tests.support.corpus import CORPUS
from tests.support.redis_server import RedisServer
from tests.support.relay import KEY, auth_header
from tests.support.upstream import RecordingUpstream


def event(n: int) -> bytes:
    return (
        orjson.dumps({"event_id": f"{n:032x}"})
        + b'\n{"type":"event"}\n'
        + orjson.dumps({"message": f"boom {n}"})
        + b"\n"
    )


@pytest.fixture(params=["memory", "redis", "redis-cached", "redis-reserved"])
def backend(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Where quotas are counted: `redis` without the quota cache, `redis-cached` with it
    in `share` mode, `redis-reserved` as configured by default (the quota cache in
    `reserve` mode). One relay alone must answer exactly as without it."""
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


@pytest.mark.parametrize(("mode", "hits"), [("share", 4), ("reserve", 3)])
async def test_quota_cache_hits_are_counted(
    relay_factory: Any, redis_server: RedisServer, mode: str, hits: int
) -> None:
    """`share` accepts from the cache after the first check; `reserve` asks Redis for an
    allowance with the second."""
    relay: TestClient = await relay_factory(
        policy=quota_policy(limit=100),
        redis={
            "url": redis_server.url,
            "prefix": f"t{uuid.uuid4().hex}",
            "quota_cache_ratio": 0.5,
            "quota_cache_mode": mode,
        },
    )
    for n in range(5):
        resp = await relay.post("/api/42/envelope/", data=event(n), headers=auth_header())
        assert resp.status == 200
    metrics = await (await relay.get("/metrics")).text()
    assert f"relay_quota_cache_hits_total {hits}.0" in metrics


def quota_policy(**quota: Any) -> dict[str, Any]:
    base = {
        "id": "errors-per-minute",
        "categories": ["error"],
        "scope": "project",
        "limit": 3,
        "window": 60,
        "reason": "too_many_errors",
    }
    return {"quotas": [{**base, **quota}]}


async def test_project_quota_rejects_past_the_limit(
    relay_factory: Any, recorder: RecordingUpstream, backend: dict[str, Any]
) -> None:
    relay: TestClient = await relay_factory(policy=quota_policy(), **backend)
    statuses = [
        (await relay.post("/api/42/envelope/", data=event(n), headers=auth_header())).status
        for n in range(3)
    ]
    assert statuses == [200, 200, 200]
    resp = await relay.post("/api/42/envelope/", data=event(9), headers=auth_header())
    assert resp.status == 429
    seconds, categories, scope, reason = resp.headers["X-Sentry-Rate-Limits"].split(":")
    assert (categories, scope, reason) == ("error", "project", "too_many_errors")
    assert 1 <= int(seconds) <= 60
    assert int(resp.headers["Retry-After"]) >= 1
    # Other categories are not limited.
    tx = await relay.post(
        "/api/42/envelope/",
        data=(CORPUS / "transaction-checkout.envelope").read_bytes(),
        headers=auth_header(),
    )
    assert tx.status == 200
    await recorder.wait_for(4)
    metrics = await (await relay.get("/metrics")).text()
    assert (
        'relay_items_total{category="error",outcome="rate_limited",reason="too_many_errors"} 1.0'
        in metrics
    )


async def test_partial_drop_forwards_the_rest(
    relay_factory: Any, recorder: RecordingUpstream, backend: dict[str, Any]
) -> None:
    policy = {
        "quotas": [
            {
                "id": "attachment-bytes",
                "categories": ["attachment"],
                "scope": "project",
                "limit": 10,
                "window": 3600,
            }
        ]
    }
    relay: TestClient = await relay_factory(policy=policy, **backend)
    resp = await relay.post(
        "/api/42/envelope/",
        data=(CORPUS / "error-with-attachment.envelope").read_bytes(),
        headers=auth_header(),
    )
    assert resp.status == 200
    assert resp.headers["X-Sentry-Rate-Limits"].split(":")[1:3] == ["attachment", "project"]
    await recorder.wait_for(1)
    assert [i.type for i in recorder.envelopes[0].items] == ["event"]


async def test_limit_zero_rejects_everything(relay_factory: Any, backend: dict[str, Any]) -> None:
    """And says so: no categories in the rate limit, which SDKs read as "all of them"."""
    relay: TestClient = await relay_factory(policy=quota_policy(limit=0, categories=[]), **backend)
    resp = await relay.post("/api/42/envelope/", data=event(1), headers=auth_header())
    assert resp.status == 429
    (limit,) = resp.headers["X-Sentry-Rate-Limits"].split(",")
    assert limit.split(":")[1] == ""


async def test_key_scope_counts_per_key(relay_factory: Any, recorder: RecordingUpstream) -> None:
    other = "33333333333333333333333333333333"
    relay: TestClient = await relay_factory(
        policy=quota_policy(scope="key", limit=1), projects=[{"id": 42, "keys": [KEY, other]}]
    )
    assert (
        await relay.post("/api/42/envelope/", data=event(1), headers=auth_header(KEY))
    ).status == 200
    assert (
        await relay.post("/api/42/envelope/", data=event(2), headers=auth_header(KEY))
    ).status == 429
    assert (
        await relay.post("/api/42/envelope/", data=event(3), headers=auth_header(other))
    ).status == 200


async def test_sdk_honours_the_rate_limit_header(
    relay_factory: Any, recorder: RecordingUpstream
) -> None:
    relay: TestClient = await relay_factory(policy=quota_policy(limit=1))
    sentry_sdk.init(
        dsn=f"http://{KEY}@127.0.0.1:{relay.port}/42",
        default_integrations=False,
        auto_enabling_integrations=False,
        traces_sample_rate=1.0,
    )
    try:
        for n in range(3):
            sentry_sdk.capture_message(f"first burst {n}")
            await asyncio.to_thread(sentry_sdk.flush, 5)
        rejected_before = _requests(await (await relay.get("/metrics")).text(), "429")
        assert rejected_before == 1  # one accepted, one answered 429, the third never sent
        for n in range(5):
            sentry_sdk.capture_message(f"after the limit {n}")
        with sentry_sdk.start_transaction(name="/still-allowed"):
            pass
        await asyncio.to_thread(sentry_sdk.flush, 5)
        await recorder.wait_for(2)
        # The SDK stopped sending errors: no further 429, and the transaction still went through.
        assert _requests(await (await relay.get("/metrics")).text(), "429") == 1
    finally:
        await asyncio.to_thread(sentry_sdk.get_client().close, 2)
    messages = [
        orjson.loads(i.payload).get("message")
        for e in recorder.envelopes
        for i in e.items
        if i.type == "event"
    ]
    assert messages == ["first burst 0"]
    assert [i.type for e in recorder.envelopes for i in e.items].count("transaction") == 1


def _requests(metrics: str, status: str) -> int:
    total = 0
    for line in metrics.splitlines():
        if line.startswith(f'relay_requests_total{{endpoint="envelope",status="{status}"}}'):
            total += int(float(line.rsplit(" ", 1)[1]))
    return total


async def test_usage_endpoint_needs_the_admin_token(
    relay_factory: Any, backend: dict[str, Any]
) -> None:
    relay: TestClient = await relay_factory(
        policy=quota_policy(), admin={"token": "s3cret-token"}, **backend
    )
    await relay.post("/api/42/envelope/", data=event(1), headers=auth_header())
    assert (await relay.get("/api/relay/usage/")).status == 401
    assert (
        await relay.get("/api/relay/usage/", headers={"Authorization": "Bearer wrong"})
    ).status == 401
    resp = await relay.get("/api/relay/usage/", headers={"Authorization": "Bearer s3cret-token"})
    assert resp.status == 200
    rows = (await resp.json())["usage"]
    row = next(r for r in rows if r["id"] == "errors-per-minute" and r["scope_id"] == "42")
    assert (row["used"], row["limit"]) == (1, 3)
    metrics = await (await relay.get("/metrics")).text()
    assert 'relay_quota_used{quota="errors-per-minute",scope_id="42"} 1.0' in metrics
    assert "s3cret-token" not in metrics


@pytest.mark.parametrize("on_error", ["allow", "reject"])
async def test_redis_down_then_back(
    relay_factory: Any, fresh_redis: RedisServer, recorder: RecordingUpstream, on_error: str
) -> None:
    relay: TestClient = await relay_factory(
        policy=quota_policy(limit=100), redis={"url": fresh_redis.url, "on_error": on_error}
    )
    assert (
        await relay.post("/api/42/envelope/", data=event(1), headers=auth_header())
    ).status == 200
    fresh_redis.stop()
    down = (await relay.post("/api/42/envelope/", data=event(2), headers=auth_header())).status
    assert down == (200 if on_error == "allow" else 429)
    metrics = await (await relay.get("/metrics")).text()
    assert "relay_redis_errors_total" in metrics
    fresh_redis.start()
    for n in range(100):
        status = (
            await relay.post("/api/42/envelope/", data=event(100 + n), headers=auth_header())
        ).status
        if status == 200:
            break
        await asyncio.sleep(0.1)
    assert status == 200


async def test_redis_down_with_reject_is_a_rate_limit_the_sdk_does_not_count_again(
    relay_factory: Any, fresh_redis: RedisServer, recorder: RecordingUpstream
) -> None:
    """With `on_error: reject` the dropped event has the relay's outcome; the answer is a
    429 naming the category for a second, so the SDK neither counts it lost a second
    time (its client reports count a 5xx as `network_error`) nor sends errors meanwhile."""
    relay: TestClient = await relay_factory(
        policy=quota_policy(limit=100), redis={"url": fresh_redis.url, "on_error": "reject"}
    )
    fresh_redis.stop()
    down = await relay.post("/api/42/envelope/", data=event(1), headers=auth_header())
    assert down.status == 429
    assert down.headers["X-Sentry-Rate-Limits"] == "1:error:organization:redis_unavailable"
    assert down.headers["Retry-After"] == "1"
    assert (await down.json())["detail"] == "quotas cannot be checked right now"
    sentry_sdk.init(
        dsn=f"http://{KEY}@127.0.0.1:{relay.port}/42",
        default_integrations=False,
        auto_enabling_integrations=False,
    )
    try:
        sentry_sdk.capture_message("while redis is down")
        await asyncio.to_thread(sentry_sdk.flush, 5)
        sentry_sdk.capture_message("within the second")  # not sent: the SDK waits
        await asyncio.to_thread(sentry_sdk.flush, 5)  # and sends its client report
        await recorder.wait_for(1)
    finally:
        await asyncio.to_thread(sentry_sdk.get_client().close, 2)
    reports = [
        orjson.loads(i.payload)
        for e in recorder.envelopes
        for i in e.items
        if i.type == "client_report"
    ]
    discarded = [d for r in reports for d in r.get("discarded_events", [])]
    assert {d["reason"] for d in discarded} == {"ratelimit_backoff"}
    metrics = await (await relay.get("/metrics")).text()
    rejected = (
        'relay_items_total{category="error",outcome="rate_limited",reason="redis_unavailable"}'
    )
    assert f"{rejected} 2.0" in metrics  # the first post and the SDK's first event


@pytest.mark.parametrize("outbox_kind", ["memory", "spool"])
async def test_envelope_refused_for_a_full_outbox_is_not_charged(
    relay_factory: Any,
    recorder: RecordingUpstream,
    backend: dict[str, Any],
    outbox_kind: str,
    tmp_path: Path,
) -> None:
    """The outbox fills while an envelope's quota is checked (the early room check passed):
    the 503 makes the SDK send it again, so what the check counted is taken back. The
    memory outbox finds it out when the room is reserved, the spool when it writes."""
    from relay.keys import INGEST
    from relay.services.outbox import OutboxEntry, OutboxFull

    spool = {"spool": {"path": str(tmp_path / "spool")}} if outbox_kind == "spool" else {}
    relay: TestClient = await relay_factory(policy=quota_policy(), **backend, **spool)
    outbox = relay.app[INGEST].outbox

    async def full(entry: OutboxEntry) -> None:
        raise OutboxFull

    if outbox_kind == "memory":
        outbox.reserve = lambda size: False
    else:
        outbox.put = full
    for n in range(5):
        resp = await relay.post("/api/42/envelope/", data=event(n), headers=auth_header())
        assert resp.status == 503 and "outbox is full" in (await resp.json())["detail"]
    if outbox_kind == "memory":  # room again
        del outbox.reserve
    else:
        del outbox.put
    # The quota (3 per minute) is untouched.
    statuses = [
        (await relay.post("/api/42/envelope/", data=event(n), headers=auth_header())).status
        for n in range(4)
    ]
    assert statuses == [200, 200, 200, 429]
    await recorder.wait_for(3)
    metrics = await (await relay.get("/metrics")).text()
    assert (
        'relay_items_total{category="error",outcome="internal",reason="outbox_full"} 5.0' in metrics
    )


def spy_refunds(relay: TestClient) -> list[object]:
    """What the relay's limiter gives back, call by call (it still gives it back)."""
    from relay.keys import INGEST

    limiter: Any = relay.app[INGEST].limiter
    refunds: list[object] = []
    give_back = limiter._give_back

    async def counted(amounts: Any) -> None:
        refunds.append(amounts)
        await give_back(amounts)

    limiter._give_back = counted
    return refunds


#: The corpus's log envelope: one log item of 1,161 bytes.
LOG_BYTES = 1161


async def logs_against_byte_quota(
    relay_factory: Any, backend: dict[str, Any], byte_limit: int, sends: int
) -> tuple[list[int], list[object], dict[str, int]]:
    """`sends` log envelopes (1 log item, 1,161 log bytes each) against a generous
    log item quota and a log byte quota of `byte_limit`: the statuses, the refunds, and
    the usage of both quotas afterwards."""
    policy = {
        "quotas": [
            {"id": "items", "categories": ["log_item"], "scope": "project", "limit": 100,
             "window": 60},
            {"id": "bytes", "categories": ["log_byte"], "scope": "project", "limit": byte_limit,
             "window": 60},
        ]
    }  # fmt: skip
    relay: TestClient = await relay_factory(
        policy=policy, admin={"token": "s3cret-token"}, **backend
    )
    refunds = spy_refunds(relay)
    body = (CORPUS / "log.envelope").read_bytes()
    statuses = [
        (await relay.post("/api/42/envelope/", data=body, headers=auth_header())).status
        for _ in range(sends)
    ]
    resp = await relay.get("/api/relay/usage/", headers={"Authorization": "Bearer s3cret-token"})
    used = {r["id"]: r["used"] for r in (await resp.json())["usage"] if r["scope_id"] == "42"}
    return statuses, refunds, used


async def test_item_dropped_for_another_category_is_not_charged(
    relay_factory: Any, recorder: RecordingUpstream, backend: dict[str, Any]
) -> None:
    """A log item counts as log items and as log bytes: when its bytes hit their quota
    it is dropped, and its item count is taken back. The byte counter is then short of
    its limit, not full: later logs are rejected from the limiter's cache of its room,
    so there is nothing to take back for them."""
    statuses, refunds, used = await logs_against_byte_quota(
        relay_factory, backend, byte_limit=LOG_BYTES * 3 // 2, sends=4
    )
    assert statuses == [200, 429, 429, 429]
    if "redis" in backend and backend["redis"].get("quota_cache_ratio", 1):
        # The second request's items were counted from the quota cache (`share`: not yet
        # in Redis; `reserve`: they go back to the process's allowance): they are taken
        # back there, and Redis is never asked to.
        assert refunds == []
    else:
        assert len(refunds) == 1  # the second request's items; none for the later ones
    assert used == {"items": 1, "bytes": LOG_BYTES}
    await recorder.wait_for(1)


async def test_item_going_with_a_category_known_full_is_not_counted_at_all(
    relay_factory: Any, recorder: RecordingUpstream, backend: dict[str, Any]
) -> None:
    """Once the byte counter is known to be full, a log is rejected without its item
    count being taken and given back: no refund, no extra round trip."""
    statuses, refunds, used = await logs_against_byte_quota(
        relay_factory, backend, byte_limit=LOG_BYTES * 2, sends=5
    )
    assert statuses == [200, 200, 429, 429, 429]
    assert refunds == []
    assert used == {"items": 2, "bytes": LOG_BYTES * 2}
    await recorder.wait_for(2)


async def test_a_span_quota_never_drops_transactions(
    relay_factory: Any, recorder: RecordingUpstream, backend: dict[str, Any]
) -> None:
    """As in Sentry: a transaction's spans count against a span quota, but when it is
    full only standalone spans are dropped; the transaction is forwarded, and the answer
    names `span` so that SDKs hold back their standalone spans."""
    policy = {
        "quotas": [
            {"id": "spans", "categories": ["span"], "scope": "project", "limit": 3, "window": 60}
        ]
    }
    relay: TestClient = await relay_factory(policy=policy, **backend)
    body = (CORPUS / "transaction-checkout.envelope").read_bytes()  # 1 transaction, 2 spans
    answers = []
    for _ in range(3):
        resp = await relay.post("/api/42/envelope/", data=body, headers=auth_header())
        answers.append((resp.status, resp.headers.get("X-Sentry-Rate-Limits", "")))
    assert [status for status, _ in answers] == [200, 200, 200]
    assert answers[0][1] == ""
    assert ":span:project:spans" in answers[2][1]
    await recorder.wait_for(3)
    assert all(e.items[0].type == "transaction" for e in recorder.envelopes)
