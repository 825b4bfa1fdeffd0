"""The client reports the relay sends upstream, read as Sentry reads them.

Sentry turns each line of a `client_report` item into an outcome, and some things make
it lose a line or the whole report without a word:

- `discarded_events` is a required field: a report without it is not read at all (the
  other three fields may be left out);
- a line's `quantity` is read as an unsigned 32-bit number: a larger one fails the whole
  report;
- a line whose `reason` is longer than 200 bytes (UTF-8) is skipped;
- a category Sentry does not count in (`unknown`) is stored without one, and `default`
  is a reserved one: both show in the usage stats as errors.

`sentry_counts` applies these rules; each test checks a report the relay really sends.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from relay.keys import INGEST
from relay.outcomes import Outcome, OutcomeKind
from relay.policy.targets import resolve_target
from relay.processing import pipeline
from relay.services.client_reports import ClientReports
from relay.services.outbox import MemoryOutbox
from tests.support.relay import KEY, RelayFactory, auth_header
from tests.support.upstream import RecordingUpstream

U32_MAX = 2**32 - 1
FIELDS = ("discarded_events", "rate_limited_events", "filtered_events")
#: Categories Sentry counts as errors in its stats when a report names them.
COUNTED_AS_ERRORS = frozenset({"unknown", "default"})

EVENT = orjson.dumps({"event_id": "ab" * 16}) + b'\n{"type":"event"}\n{"message":"m"}\n'


def sentry_counts(report: dict[str, Any]) -> dict[tuple[str, str, str], int]:
    """(field, reason, category) -> quantity, as Sentry counts a report's lines; fails
    the test where Sentry would drop the whole report."""
    assert isinstance(report.get("discarded_events"), list), "Sentry requires the field"
    assert isinstance(report.get("timestamp"), int | float)
    counts: dict[tuple[str, str, str], int] = {}
    for field in FIELDS:
        for line in report.get(field, []):
            quantity = line["quantity"]
            assert isinstance(quantity, int) and 0 <= quantity <= U32_MAX, line
            if len(line["reason"].encode()) > 200:
                continue
            category = "error" if line["category"] in COUNTED_AS_ERRORS else line["category"]
            key = (field, line["reason"], category)
            counts[key] = counts.get(key, 0) + quantity
    return counts


async def _sent_report(relay: Any, recorder: RecordingUpstream) -> dict[str, Any]:
    """Flush the relay's client reports and return the one the upstream received."""
    await relay.app[INGEST].client_reports.flush()
    async with asyncio.timeout(10):
        while not recorder.items("client_report"):
            await asyncio.sleep(0.02)
    (item,) = recorder.items("client_report")
    report: dict[str, Any] = orjson.loads(item.payload)
    return report


def _item(headers: dict[str, Any], payload: bytes) -> bytes:
    return orjson.dumps({**headers, "length": len(payload)}) + b"\n" + payload + b"\n"


async def test_a_report_of_quota_drops_alone_is_read_by_sentry(
    relay_factory: RelayFactory, recorder: RecordingUpstream
) -> None:
    """No SDK-like discards to report: the report still has its `discarded_events`."""
    relay = await relay_factory(
        upstream={"client_reports_interval": 100},
        policy={"quotas": [{"id": "e", "categories": ["error"], "limit": 0, "reason": "no_e"}]},
    )
    assert (await relay.post("/api/42/envelope/", data=EVENT, headers=auth_header())).status == 429
    report = await _sent_report(relay, recorder)
    assert sentry_counts(report) == {("rate_limited_events", "no_e", "error"): 1}


async def test_a_line_never_counts_past_what_sentry_reads(
    relay_factory: RelayFactory, recorder: RecordingUpstream
) -> None:
    """Two log items of the most an item counts for: their sum in one line would fail
    the whole report upstream; the line stops at Sentry's largest quantity instead."""
    relay = await relay_factory(
        upstream={"client_reports_interval": 100},
        policy={
            "quotas": [{"id": "l", "categories": ["log_item"], "limit": 0, "reason": "no_logs"}]
        },
    )
    logs = orjson.dumps({"items": [{"timestamp": 1.0, "level": "info", "body": "x"}]})
    head = {
        "type": "log",
        "item_count": U32_MAX,
        "content_type": "application/vnd.sentry.items.log+json",
    }
    body = b"{}\n" + _item(head, logs) * 2
    assert (await relay.post("/api/42/envelope/", data=body, headers=auth_header())).status == 429
    report = await _sent_report(relay, recorder)
    assert sentry_counts(report) == {("rate_limited_events", "no_logs", "log_item"): U32_MAX}


@pytest.mark.parametrize(
    ("item_type", "category"), [("client_report", "default"), ("something_new", "unknown")]
)
async def test_items_lost_in_no_category_are_not_reported_as_errors(
    relay_factory: RelayFactory,
    recorder: RecordingUpstream,
    monkeypatch: pytest.MonkeyPatch,
    item_type: str,
    category: str,
) -> None:
    """An SDK's own client report, or an item type Sentry does not know, counts in no
    category Sentry bills: when it is lost, the relay's metrics count it, and the report
    leaves it out (Sentry would count it as an error)."""
    relay = await relay_factory(upstream={"client_reports_interval": 100})

    def broken(*_: Any, **__: Any) -> Any:
        raise RuntimeError("a bug in scrubbing")

    monkeypatch.setattr(pipeline, "finish", broken)
    payload = orjson.dumps({"timestamp": 1, "discarded_events": []})
    body = EVENT + _item({"type": item_type}, payload)
    await relay.post("/api/42/envelope/", data=body, headers=auth_header())
    monkeypatch.undo()
    metrics = await (await relay.get("/metrics")).text()
    assert f'relay_items_total{{category="{category}",outcome="internal"' in metrics
    report = await _sent_report(relay, recorder)
    assert sentry_counts(report) == {("discarded_events", "queue_overflow", "error"): 1}


async def test_a_long_reason_is_clipped_to_what_sentry_reads_in_bytes() -> None:
    """Sentry skips a line whose reason passes 200 bytes; a reason the relay was handed
    (an upstream's rate limit reason) is clipped in bytes, never mid-character."""
    target = resolve_target("https://sentry.example.com", None, 42, KEY)
    outbox = MemoryOutbox(100, 10**6)
    reports = ClientReports(outbox, interval=3600)
    reason = "überschritten-" * 20
    reports.record(target, Outcome(OutcomeKind.RATE_LIMITED, reason, "error", 1, 42))
    await reports.flush()
    entry = await asyncio.wait_for(outbox.get(), 1)
    report = orjson.loads(entry.body.split(b"\n")[2])
    ((_, sent, _),) = sentry_counts(report)
    assert reason.startswith(sent)
    assert 198 <= len(sent.encode()) <= 200


async def test_a_reason_with_bytes_a_header_did_not_decode_fails_no_report() -> None:
    """A header's undecodable bytes reach the relay as lone surrogates, which JSON cannot
    carry: the reason keeps a `?` in their place, and the report goes out."""
    target = resolve_target("https://sentry.example.com", None, 42, KEY)
    outbox = MemoryOutbox(100, 10**6)
    reports = ClientReports(outbox, interval=3600)
    reason = b"quota-\xff".decode("utf-8", "surrogateescape")
    reports.record(target, Outcome(OutcomeKind.RATE_LIMITED, reason, "error", 1, 42))
    await reports.flush()
    entry = await asyncio.wait_for(outbox.get(), 1)
    report = orjson.loads(entry.body.split(b"\n")[2])
    assert report["rate_limited_events"] == [
        {"reason": "quota-?", "category": "error", "quantity": 1}
    ]
