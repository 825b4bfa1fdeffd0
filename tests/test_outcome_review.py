"""What the relay reports upstream for the items it drops, counted as Sentry counts them.

Sentry counts a dropped attachment twice over: its bytes in `attachment` and the item
itself in `attachment_item`, whatever dropped it (a filter, sampling, a quota). The real
sentry-sdk sends an error with an attachment through the relay, which drops both.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import sentry_sdk
from aiohttp.test_utils import TestClient

from tests.support.relay import KEY, RelayFactory
from tests.support.upstream import RecordingUpstream
from tests.test_client_report_format import _sent_report

NOTES = b"debug notes\n"
#: A filter and sampling drop an event or a transaction with all it holds.
DROPS = pytest.mark.parametrize(
    ("policy", "field", "reason"),
    [
        ({"filters": {"releases": ["shop@0.*"]}}, "filtered_events", "release-version"),
        ({"sampling": [{"id": "all", "rate": 0.0}]}, "discarded_events", "sample_rate"),
    ],
    ids=["filtered", "sampled"],
)


@pytest.fixture
def sdk_close() -> Iterator[None]:
    yield
    client = sentry_sdk.get_client()
    if client.is_active():
        client.close(timeout=2)


async def _send_error_with_attachment(relay: TestClient) -> None:
    sentry_sdk.init(
        dsn=f"http://{KEY}@127.0.0.1:{relay.port}/42",
        default_integrations=False,
        auto_enabling_integrations=False,
        release="shop@0.9.1",
        send_client_reports=False,
    )
    with sentry_sdk.isolation_scope() as scope:
        scope.add_attachment(bytes=NOTES, filename="notes.txt")
        sentry_sdk.capture_message("checkout failed")
    # The SDK's transport thread talks to the relay on this loop: never block the loop.
    await asyncio.to_thread(sentry_sdk.flush, 5)


def _lines(report: dict[str, Any], field: str) -> dict[tuple[str, str], int]:
    return {(line["reason"], line["category"]): line["quantity"] for line in report[field]}


@DROPS
async def test_a_dropped_attachment_is_reported_in_bytes_and_as_an_item(
    relay_factory: RelayFactory,
    recorder: RecordingUpstream,
    sdk_close: None,
    policy: dict[str, Any],
    field: str,
    reason: str,
) -> None:
    relay = await relay_factory(upstream={"client_reports_interval": 100}, policy=policy)
    await _send_error_with_attachment(relay)
    assert not recorder.items("event")
    report = await _sent_report(relay, recorder)
    assert _lines(report, field) == {
        (reason, "error"): 1,
        (reason, "attachment"): len(NOTES),
        (reason, "attachment_item"): 1,
    }
    metrics = await (await relay.get("/metrics")).text()
    kind = "filtered" if field == "filtered_events" else "sampled"
    # One item each in the relay's own counters, as in the report's `error` line.
    assert f'relay_items_total{{category="attachment",outcome="{kind}",reason=' in metrics
    assert (
        f'relay_item_quantity_total{{category="attachment",outcome="{kind}"}} {len(NOTES)}.0'
        in (metrics)
    )


@DROPS
async def test_a_dropped_transaction_is_reported_with_its_spans(
    relay_factory: RelayFactory,
    recorder: RecordingUpstream,
    sdk_close: None,
    policy: dict[str, Any],
    field: str,
    reason: str,
) -> None:
    """A transaction counts `1 + len(spans)` in `span`; dropped, it is reported there too,
    as Sentry's Relay and the SDKs report it."""
    relay = await relay_factory(upstream={"client_reports_interval": 100}, policy=policy)
    sentry_sdk.init(
        dsn=f"http://{KEY}@127.0.0.1:{relay.port}/42",
        default_integrations=False,
        auto_enabling_integrations=False,
        release="shop@0.9.1",
        traces_sample_rate=1.0,
        send_client_reports=False,
    )
    with sentry_sdk.start_transaction(name="/checkout"):
        for step in ("cart", "payment"):
            with sentry_sdk.start_span(op="step", name=step):
                pass
    await asyncio.to_thread(sentry_sdk.flush, 5)
    assert not recorder.items("transaction")
    report = await _sent_report(relay, recorder)
    assert _lines(report, field) == {(reason, "transaction"): 1, (reason, "span"): 3}


async def test_an_envelope_answered_413_is_left_to_the_sdk_to_report(
    relay_factory: RelayFactory, recorder: RecordingUpstream
) -> None:
    """Answered 413, the SDK reports the loss itself (sentry-python: `send_error`): the
    relay counts it in its metrics, not in its client reports, or Sentry would count it
    twice. A drop answered 200 is still reported."""
    relay = await relay_factory(
        upstream={"client_reports_interval": 100},
        limits={"max_event_bytes": 1024},
        policy={"filters": {"releases": ["old@*"]}},
    )
    big = orjson.dumps({"message": "x" * 4096})
    envelope = b'{}\n{"type":"event","length":%d}\n%s\n' % (len(big), big)
    headers = {"X-Sentry-Auth": f"Sentry sentry_key={KEY}, sentry_version=7"}
    assert (await relay.post("/api/42/envelope/", data=envelope, headers=headers)).status == 413
    old = orjson.dumps({"message": "filtered", "release": "old@1"})
    envelope = b'{}\n{"type":"event"}\n%s\n' % old
    assert (await relay.post("/api/42/envelope/", data=envelope, headers=headers)).status == 200
    report = await _sent_report(relay, recorder)
    assert _lines(report, "filtered_events") == {("release-version", "error"): 1}
    assert report.get("discarded_events", []) == []
    metrics = await (await relay.get("/metrics")).text()
    assert 'relay_items_total{category="error",outcome="invalid",reason="too_large"} 1.0' in (
        metrics
    )
