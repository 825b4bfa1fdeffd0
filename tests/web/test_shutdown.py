"""Graceful shutdown: the outbox drains to the upstream before the process exits."""

from __future__ import annotations

from aiohttp.test_utils import TestClient, TestServer

from relay.app import create_app
from relay.keys import STATE
from tests.support.corpus import CORPUS
from tests.support.relay import auth_header, make_config
from tests.support.upstream import RecordingUpstream, Reply


async def test_shutdown_drains_outbox(upstream_url: str, recorder: RecordingUpstream) -> None:
    recorder.answer(Reply(200, delay=0.2), Reply(503), Reply(503))
    client = TestClient(TestServer(create_app(make_config(upstream_url))))
    await client.start_server()
    for name in ("error-payment", "check-in", "log"):
        resp = await client.post(
            "/api/42/envelope/",
            data=(CORPUS / f"{name}.envelope").read_bytes(),
            headers=auth_header(),
        )
        assert resp.status == 200
    app = client.app
    await client.close()  # runs on_shutdown and the cleanup contexts
    assert app[STATE].draining
    # Every accepted envelope arrived: the slow one was awaited, the 503s retried.
    assert len(recorder.received) == 3
    assert recorder.attempts == 5


async def test_draining_relay_answers_503(relay: TestClient) -> None:
    relay.app[STATE].draining = True
    resp = await relay.post("/api/42/envelope/", data=b"{}\n", headers=auth_header())
    assert resp.status == 503
    assert resp.headers["Retry-After"]
    ready = await relay.get("/readyz")
    assert ready.status == 503


async def test_full_outbox_answers_503_and_loses_nothing_accepted(
    relay_factory, recorder: RecordingUpstream
) -> None:  # type: ignore[no-untyped-def]
    recorder.answer(Reply(200, delay=0.5))
    relay = await relay_factory(upstream={"outbox_max_items": 1, "concurrency": 1})
    body = (CORPUS / "check-in.envelope").read_bytes()
    statuses = []
    for _ in range(4):
        resp = await relay.post("/api/42/envelope/", data=body, headers=auth_header())
        statuses.append(resp.status)
        if resp.status == 503:
            assert resp.headers["Retry-After"]
            assert "outbox is full" in (await resp.json())["detail"]
    assert statuses[:2] == [200, 200]
    assert 503 in statuses
    await recorder.wait_for(statuses.count(200))
    metrics = await (await relay.get("/metrics")).text()
    assert (
        'relay_items_total{category="monitor",outcome="internal",reason="outbox_full"}' in metrics
    )
