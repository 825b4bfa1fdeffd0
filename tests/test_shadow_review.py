"""Shadow mode: ids of dry-run copies, a full shadow queue, limits kept apart per upstream."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from relay.app import create_app
from relay.outcomes import Outcome
from relay.policy.compile import compile_policy
from relay.processing.context import RequestContext
from relay.protocol.envelope import Envelope, Item, parse_envelope
from relay.services.offload import MIN_BYTES, Offload
from relay.services.outbox import MemoryOutbox, OutboxEntry
from relay.services.shadow import Shadow, copy_event_id
from tests.support.corpus import CORPUS
from tests.support.relay import KEY, auth_header, make_config
from tests.support.upstream import RecordingUpstream, Reply

RESET = (CORPUS / "error-connection-reset.envelope").read_bytes()
CHECKOUT = (CORPUS / "transaction-checkout.envelope").read_bytes()


def _policy(shadow_url: str, **policy: Any) -> dict[str, Any]:
    host = shadow_url.split("//", 1)[1]
    return {"shadow": {"dsn": f"http://{'e' * 32}@{host}/7"}, **policy}


def _event(envelope: Envelope) -> dict[str, Any]:
    return orjson.loads(envelope.items[0].payload)  # type: ignore[no-any-return]


def _tags(event: dict[str, Any]) -> dict[str, Any]:
    tags = event["tags"]
    return dict(tags) if isinstance(tags, list) else tags  # type: ignore[no-any-return]


@pytest.fixture
async def shadow(aiohttp_server: Any) -> tuple[RecordingUpstream, str]:
    recorder = RecordingUpstream()
    server = await aiohttp_server(recorder.app)
    return recorder, str(server.make_url("")).rstrip("/")


@pytest.mark.parametrize("mode", ["dry_run", "enforce"])
async def test_a_dry_run_copy_never_shares_the_forwarded_original_s_event_id(
    shadow: tuple[RecordingUpstream, str],
    upstream_url: str,
    recorder: RecordingUpstream,
    aiohttp_client: Any,
    mode: str,
) -> None:
    """An upstream that keys events by id alone (GlitchTip) would keep one of the two."""
    shadow_rec, shadow_url = shadow
    filters = {"error_types": {"types": ["ConnectionResetError"], "mode": mode}}
    config = make_config(upstream_url, policy=_policy(shadow_url, filters=filters))
    relay = await aiohttp_client(create_app(config))
    sent = parse_envelope(RESET)
    original = _event(sent)["event_id"]
    assert sent.event_id == original
    for _ in range(2):  # the same envelope again: its copy gets the same id again
        assert (
            await relay.post("/api/42/envelope/", data=RESET, headers=auth_header())
        ).status == 200
    await shadow_rec.wait_for(2)
    copies = shadow_rec.envelopes
    if mode == "enforce":
        # Dropped: the original goes nowhere else, the copy keeps its id.
        assert [c.event_id for c in copies] == [original, original]
        assert [_event(c)["event_id"] for c in copies] == [original, original]
        assert all("relay.original_event_id" not in _tags(_event(c)) for c in copies)
        return
    await recorder.wait_for(2)
    forwarded = recorder.envelopes[0]
    assert forwarded.event_id == original and _event(forwarded)["event_id"] == original
    ids = {c.event_id for c in copies} | {_event(c)["event_id"] for c in copies}
    assert len(ids) == 1 and original not in ids
    assert ids == {copy_event_id(original)}
    assert _tags(_event(copies[0]))["relay.original_event_id"] == original
    assert _tags(_event(copies[0]))["relay.dry_run"] == "true"


async def test_a_full_shadow_queue_skips_the_copy_before_building_it(
    upstream_url: str, shadow: tuple[RecordingUpstream, str]
) -> None:
    """While the shadow upstream is down its queue stays full: no copy is scrubbed (here:
    handed to the offload thread) only to be thrown away."""
    _, shadow_url = shadow
    config = make_config(
        upstream_url,
        policy=_policy(shadow_url, filters={"error_types": ["ConnectionResetError"]}),
    )
    policy = compile_policy(config, config.projects[0])
    assert policy.shadow_target is not None
    outbox = MemoryOutbox(1, 64 * 1024 * 1024)
    outbox.put_nowait(OutboxEntry(policy.shadow_target, b"x", 7, [("error", 1)]))
    shadowed: list[Outcome] = []
    skipped: list[str] = []

    class Sink:
        def emit(self, outcome: Outcome) -> None:
            shadowed.append(outcome)

    offload = Offload()
    try:
        mirror = Shadow(outbox, Sink(), skipped.append, offload)
        reset = parse_envelope(RESET)
        log = Item({"type": "attachment", "filename": "app.log"}, b"x" * MIN_BYTES)
        envelope = Envelope(reset.headers, [*reset.items, log])
        prepared = policy.prepare(envelope, RequestContext(42, KEY))
        assert [d.work.type for d in prepared.dropped] == ["event", "attachment"]
        mirror.mirror(envelope.headers, prepared.dropped, policy)
        assert skipped == ["queue_full"]
        assert len(offload) == 0
        assert mirror.dropped_copies == 1 and not shadowed
    finally:
        await offload.drain(1.0)
        offload.close()


async def test_limits_learned_from_each_upstream_stay_with_it(
    shadow: tuple[RecordingUpstream, str],
    upstream_url: str,
    recorder: RecordingUpstream,
    aiohttp_client: Any,
) -> None:
    """A shadow answering 429 for every category limits neither ingest nor the main
    forwarder, and a main upstream's 429 does not stop the shadow copies."""
    shadow_rec, shadow_url = shadow
    shadow_rec.answer(Reply(429, {"Retry-After": "60", "X-Sentry-Rate-Limits": "60::org"}))
    filters = {"error_types": {"types": ["ConnectionResetError"], "mode": "dry_run"}}
    config = make_config(upstream_url, policy=_policy(shadow_url, filters=filters))
    relay = await aiohttp_client(create_app(config))
    assert (await relay.post("/api/42/envelope/", data=RESET, headers=auth_header())).status == 200
    await recorder.wait_for(1)
    await asyncio.sleep(0.2)
    assert shadow_rec.attempts == 1 and not shadow_rec.received
    reply = await relay.post("/api/42/envelope/", data=RESET, headers=auth_header())
    assert reply.status == 200 and "X-Sentry-Rate-Limits" not in reply.headers
    await recorder.wait_for(2)
    assert shadow_rec.attempts == 1  # the shadow's own limit holds its copies back
    metrics = await (await relay.get("/metrics")).text()
    assert 'relay_shadow_deliveries_total{result="rate_limited"} 2.0' in metrics

    # The other way round: the main upstream limits everything, the shadow still gets copies.
    primary = RecordingUpstream()
    other_shadow = RecordingUpstream()
    primary.answer(Reply(429, {"Retry-After": "60", "X-Sentry-Rate-Limits": "60::org"}))
    filters = {"error_types": ["ConnectionResetError"]}
    main_server = await _serve(aiohttp_client, primary)
    shadow_server = await _serve(aiohttp_client, other_shadow)
    config = make_config(main_server, policy=_policy(shadow_server, filters=filters))
    relay = await aiohttp_client(create_app(config))
    assert (
        await relay.post("/api/42/envelope/", data=CHECKOUT, headers=auth_header())
    ).status == 200
    await asyncio.sleep(0.2)
    assert primary.attempts == 1
    assert (
        await relay.post("/api/42/envelope/", data=CHECKOUT, headers=auth_header())
    ).status == 429
    for _ in range(2):
        assert (
            await relay.post("/api/42/envelope/", data=RESET, headers=auth_header())
        ).status == 200
    await other_shadow.wait_for(2)


async def _serve(aiohttp_client: Any, upstream: RecordingUpstream) -> str:
    client = await aiohttp_client(upstream.app)
    return str(client.make_url("")).rstrip("/")


async def test_a_down_shadow_upstream_is_counted_apart_from_the_upstream(
    aiohttp_server: Any, upstream_url: str, recorder: RecordingUpstream, aiohttp_client: Any
) -> None:
    """The shadow's requests go to `relay_shadow_requests_total`, not to the upstream's
    counter, whose errors fire `RelayUpstreamErrors`: a down shadow project must not page
    anyone about the upstream."""
    shadow_rec = RecordingUpstream()
    shadow_rec.answer(*[Reply(503)] * 50)
    server = await aiohttp_server(shadow_rec.app)
    host = str(server.make_url("")).rstrip("/").split("//", 1)[1]
    policy = {
        "shadow": {"dsn": f"http://{'e' * 32}@{host}/7"},
        "filters": {"error_messages": ["*drop me*"]},
    }
    relay = await aiohttp_client(create_app(make_config(upstream_url, policy=policy)))
    for message in ("drop me please", "keep me"):
        body = b'{}\n{"type":"event"}\n' + orjson.dumps({"message": message}) + b"\n"
        resp = await relay.post("/api/42/envelope/", data=body, headers=auth_header())
        assert resp.status == 200
    await recorder.wait_for(1)
    async with asyncio.timeout(5):
        while shadow_rec.attempts < 1:
            await asyncio.sleep(0.01)
    metrics = await (await relay.get("/metrics")).text()
    assert 'relay_shadow_requests_total{status="503"}' in metrics
    assert 'relay_upstream_requests_total{status="200"} 1.0' in metrics
    assert 'relay_upstream_requests_total{status="503"}' not in metrics


def test_a_cap_of_zero_copies_per_minute_lets_none_through() -> None:
    from relay.services.shadow import _Bucket

    assert not _Bucket(0).take()
    two = _Bucket(2)
    assert two.take() and two.take() and not two.take()
