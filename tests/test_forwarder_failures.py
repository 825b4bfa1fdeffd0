"""Forwarding failures: nothing accepted is lost or counted twice, whatever the upstream
answers and whenever the relay stops.

Each test runs a relay built by the production factory against the recording upstream.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson

from relay.keys import METRICS
from tests.support.relay import RelayFactory, auth_header
from tests.support.upstream import RecordingUpstream, Reply


def _event(n: int) -> bytes:
    return (
        orjson.dumps({"event_id": f"{n:032x}"})
        + b'\n{"type":"event"}\n'
        + orjson.dumps({"message": f"event {n}"})
        + b"\n"
    )


async def _metrics(relay: Any) -> list[str]:
    text = await (await relay.get("/metrics")).text()
    return [line for line in text.splitlines() if line.startswith("relay_items_total{")]


async def _wait_for_metric(relay: Any, needle: str, timeout: float = 5.0) -> list[str]:
    async with asyncio.timeout(timeout):
        while True:
            got = await _metrics(relay)
            if any(needle in line for line in got):
                return got
            await asyncio.sleep(0.02)


async def test_a_held_envelope_is_sent_when_the_probing_one_is_given_up_on(
    relay_factory: RelayFactory, recorder: RecordingUpstream
) -> None:
    # Two envelopes fail at once and the upstream is down: one worker probes with its
    # envelope, the other holds its own. The probe is answered 500 until that envelope's
    # attempts run out; the held one must then probe in its place (and be delivered once
    # the upstream answers), not wait for the upstream to come back with nobody asking.
    relay = await relay_factory(
        upstream={"concurrency": 2, "outage_after": 1, "max_attempts": 2, "gzip": False}
    )
    recorder.answer(Reply(500, delay=0.3), Reply(500, delay=0.3), Reply(500))
    for n in (1, 2):
        response = await relay.post("/api/42/envelope/", data=_event(n), headers=auth_header())
        assert response.status == 200
    await recorder.wait_for(1)
    got = await _wait_for_metric(relay, 'outcome="accepted"')
    assert 'relay_items_total{category="error",outcome="accepted",reason="forwarded"} 1.0' in got
    assert 'relay_items_total{category="error",outcome="internal",reason="send_failed"} 1.0' in got
    assert recorder.attempts == 4


def _items(relay: Any) -> list[str]:
    """The item counters of a relay, also after it stopped."""
    text = relay.server.app[METRICS].render().decode()
    return [line for line in text.splitlines() if line.startswith("relay_items_total{")]


async def test_stopping_during_an_outage_gives_every_held_envelope_its_outcome(
    relay_factory: RelayFactory, recorder: RecordingUpstream
) -> None:
    # The memory outbox: what is being sent, held by a waiting worker or still queued
    # when the relay stops gets `internal` / `shutdown`, nothing is dropped silently.
    relay = await relay_factory(
        upstream={"concurrency": 2, "outage_after": 1, "client_reports_interval": 0},
        shutdown_timeout=0.3,
    )
    recorder.answer(*[Reply(503)] * 1000)
    for n in range(4):
        response = await relay.post("/api/42/envelope/", data=_event(n), headers=auth_header())
        assert response.status == 200
    async with asyncio.timeout(5):
        while recorder.attempts < 2:
            await asyncio.sleep(0.01)
    await relay.close()
    assert _items(relay) == [
        'relay_items_total{category="error",outcome="internal",reason="shutdown"} 4.0'
    ]
    assert recorder.received == []


async def test_stopping_with_a_spool_keeps_unsent_envelopes_for_the_next_start(
    relay_factory: RelayFactory, recorder: RecordingUpstream, tmp_path: Path
) -> None:
    # The disk spool: nothing sent is given an outcome at stop (it is not lost); the next
    # relay on the same spool delivers it.
    spool = {"path": str(tmp_path / "spool")}
    relay = await relay_factory(
        upstream={"concurrency": 2, "outage_after": 1, "client_reports_interval": 0},
        spool=spool,
        shutdown_timeout=0.3,
    )
    recorder.answer(*[Reply(503)] * 1000)
    for n in range(3):
        response = await relay.post("/api/42/envelope/", data=_event(n), headers=auth_header())
        assert response.status == 200
    async with asyncio.timeout(5):
        while recorder.attempts < 2:
            await asyncio.sleep(0.01)
    await relay.close()
    assert _items(relay) == []
    recorder.replies.clear()
    again = await relay_factory(upstream={"client_reports_interval": 0}, spool=spool)
    await recorder.wait_for(3)
    await _wait_for_metric(again, 'outcome="accepted"')
    got = await _metrics(again)
    assert got == ['relay_items_total{category="error",outcome="accepted",reason="forwarded"} 3.0']
    ids = sorted(r.envelope.headers["event_id"] for r in recorder.received)
    assert ids == [f"{n:032x}" for n in range(3)]


async def test_a_timeout_after_the_body_was_sent_is_retried_not_dropped(
    relay_factory: RelayFactory, recorder: RecordingUpstream
) -> None:
    # The upstream got the envelope but answered too late: sent again (Sentry drops the
    # copy by its event id), one outcome, `accepted`.
    relay = await relay_factory(upstream={"timeout_s": 0.2, "client_reports_interval": 0})
    recorder.answer(Reply(200, delay=0.5))
    response = await relay.post("/api/42/envelope/", data=_event(7), headers=auth_header())
    assert response.status == 200
    await recorder.wait_for(1)
    got = await _wait_for_metric(relay, 'outcome="accepted"')
    assert got == ['relay_items_total{category="error",outcome="accepted",reason="forwarded"} 1.0']
    assert recorder.attempts == 2
    assert [r.envelope.headers["event_id"] for r in recorder.received] == [f"{7:032x}"]


async def test_a_429_whose_limits_are_all_expired_falls_back_to_retry_after(
    relay_factory: RelayFactory, recorder: RecordingUpstream
) -> None:
    # As Sentry's Relay reads a 429: when `X-Sentry-Rate-Limits` holds no limit still
    # running (only `0` seconds here), `Retry-After` limits everything instead.
    relay = await relay_factory(upstream={"client_reports_interval": 0})
    limits = {"X-Sentry-Rate-Limits": "0:error:key:spent", "Retry-After": "60"}
    recorder.answer(Reply(429, headers=limits))
    response = await relay.post("/api/42/envelope/", data=_event(1), headers=auth_header())
    assert response.status == 200
    await _wait_for_metric(relay, 'reason="upstream_rate_limited"')
    response = await relay.post("/api/42/envelope/", data=_event(2), headers=auth_header())
    assert response.status == 429
    assert recorder.attempts == 1
    assert sorted(await _metrics(relay)) == [
        'relay_items_total{category="error",outcome="rate_limited",reason="ratelimit_backoff"} 1.0',
        'relay_items_total{category="error",outcome="rate_limited",reason="upstream_rate_limited"} 1.0',
    ]


async def test_an_sdk_client_report_is_sent_through_a_limit_on_every_category(
    relay_factory: RelayFactory, recorder: RecordingUpstream
) -> None:
    """A 429 without categories limits every category, not what counts in none: the SDK's
    client report (its own drops, `ratelimit_backoff` among them) still goes upstream, as
    Sentry never rate limits client reports."""
    relay = await relay_factory(upstream={"client_reports_interval": 0})
    recorder.answer(Reply(429, headers={"Retry-After": "60"}))
    response = await relay.post("/api/42/envelope/", data=_event(1), headers=auth_header())
    assert response.status == 200
    await _wait_for_metric(relay, 'reason="upstream_rate_limited"')
    report = {
        "timestamp": 1_700_000_000,
        "discarded_events": [{"reason": "ratelimit_backoff", "category": "error", "quantity": 3}],
    }
    body = b'{}\n{"type":"client_report"}\n' + orjson.dumps(report) + b"\n"
    response = await relay.post("/api/42/envelope/", data=body, headers=auth_header())
    assert response.status == 200
    await recorder.wait_for(1)  # the 429'd envelope is not recorded
    [sent] = [i for e in recorder.envelopes for i in e.items if i.type == "client_report"]
    assert orjson.loads(sent.payload)["discarded_events"][0]["quantity"] == 3
