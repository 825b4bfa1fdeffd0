"""Cron check-ins as Sentry reads them: the real sentry-sdk's `check_in` items, the same
check-ins over the Crons HTTP API, and what a `monitor` quota does to them."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
import sentry_sdk
from aiohttp.test_utils import TestClient
from sentry_sdk import crons

from tests.support.relay import KEY, auth_header
from tests.support.upstream import RecordingUpstream

JSON = {"Content-Type": "application/json"}
CRONTAB = {"type": "crontab", "value": "0 * * * *"}
#: Every `monitor_config` field the SDK documents.
FULL_CONFIG = {
    "schedule": {"type": "interval", "value": 2, "unit": "hour"},
    "timezone": "Europe/Vienna",
    "checkin_margin": 5,
    "max_runtime": 30,
    "failure_issue_threshold": 2,
    "recovery_threshold": 3,
}


async def _sdk_check_ins(dsn: str, recorder: RecordingUpstream) -> list[dict[str, Any]]:
    """A `monitor`-decorated job run once by the real SDK: its two check-ins as the
    upstream received them."""
    sentry_sdk.init(
        dsn=dsn,
        default_integrations=False,
        auto_enabling_integrations=False,
        release="shop@1.4.2",
        environment="staging",
    )

    @crons.monitor(monitor_slug="nightly-backup", monitor_config=FULL_CONFIG)
    def job() -> None:
        pass

    job()
    await asyncio.to_thread(sentry_sdk.flush, 5)
    async with asyncio.timeout(10):
        while len(recorder.items("check_in")) < 2:
            await asyncio.sleep(0.02)
    return [orjson.loads(item.payload) for item in recorder.items("check_in")]


async def test_the_sdk_monitor_check_ins_are_forwarded_as_sent(
    sdk_dsn: str, recorder: RecordingUpstream
) -> None:
    opened, closed = await _sdk_check_ins(sdk_dsn, recorder)
    assert (opened["status"], closed["status"]) == ("in_progress", "ok")
    assert opened["check_in_id"] == closed["check_in_id"]
    assert opened["monitor_slug"] == "nightly-backup"
    assert opened["environment"] == "staging"
    assert opened["monitor_config"] == closed["monitor_config"] == FULL_CONFIG
    assert isinstance(closed["duration"], float) and closed["duration"] >= 0
    assert len(opened["contexts"]["trace"]["trace_id"]) == 32


async def test_an_sdk_check_in_posted_to_the_http_api_is_taken(
    sdk_dsn: str, relay: TestClient, recorder: RecordingUpstream
) -> None:
    # What the SDK sends (trace context, sdk, release, timestamp...) is a check-in the
    # HTTP API takes too, every field read as Sentry reads it.
    _, closed = await _sdk_check_ins(sdk_dsn, recorder)
    resp = await relay.post(
        f"/api/42/cron/other-job/{KEY}/", data=orjson.dumps(closed), headers=JSON
    )
    assert resp.status == 202, await resp.text()
    await recorder.wait_for(3)
    (item,) = recorder.received[2].envelope.items
    assert orjson.loads(item.payload) == {**closed, "monitor_slug": "other-job"}


@pytest.mark.parametrize(
    ("fields", "detail"),
    [
        ({"monitor_config": "0 * * * *"}, "monitor_config: not an object"),
        ({"monitor_config": {"timezone": "UTC"}}, "needs a `schedule`"),
        ({"monitor_config": {"schedule": "0 * * * *"}}, "`schedule` must be an object"),
        ({"monitor_config": {"schedule": {"type": "weekly"}}}, "crontab or interval"),
        ({"monitor_config": {"schedule": {"type": "crontab", "value": 5}}}, "crontab `value`"),
        (
            {"monitor_config": {"schedule": {"type": "interval", "value": 2, "unit": "second"}}},
            "`unit` must be one of",
        ),
        (
            {"monitor_config": {"schedule": {"type": "interval", "value": -1, "unit": "day"}}},
            "schedule.value",
        ),
        (
            {"monitor_config": {"schedule": {"type": "interval", "value": 1.5, "unit": "day"}}},
            "schedule.value",
        ),
        ({"monitor_config": {"schedule": CRONTAB, "checkin_margin": "5"}}, "checkin_margin"),
        ({"monitor_config": {"schedule": CRONTAB, "max_runtime": True}}, "max_runtime"),
        (
            {"monitor_config": {"schedule": CRONTAB, "failure_issue_threshold": -2}},
            "failure_issue_threshold",
        ),
        ({"monitor_config": {"schedule": CRONTAB, "recovery_threshold": 2.0}}, "recovery"),
        ({"monitor_config": {"schedule": CRONTAB, "timezone": 1}}, "timezone"),
        ({"monitor_config": {"schedule": CRONTAB, "owner": ["team:6"]}}, "owner"),
        ({"contexts": []}, "contexts: not an object"),
        ({"contexts": {"trace": "abc"}}, "contexts.trace: not an object"),
        ({"contexts": {"trace": {"span_id": "a273dec379ec8ec2"}}}, "trace_id"),
        ({"contexts": {"trace": {"trace_id": "nope"}}}, "trace_id"),
        ({"monitor_slug": 5}, "monitor_slug"),
    ],
)
async def test_a_json_check_in_sentry_would_refuse_is_refused(
    relay: TestClient, recorder: RecordingUpstream, fields: dict[str, Any], detail: str
) -> None:
    # Answered 202, it would be dropped further on and the job's author never told.
    body = {"status": "in_progress", **fields}
    resp = await relay.post(f"/api/42/cron/job/{KEY}/", data=orjson.dumps(body), headers=JSON)
    assert resp.status == 400, await resp.text()
    assert detail in (await resp.json())["detail"]
    await asyncio.sleep(0.1)
    assert recorder.received == []


async def test_a_json_check_in_with_the_optional_fields_null_is_taken(
    relay: TestClient, recorder: RecordingUpstream
) -> None:
    config = {"schedule": CRONTAB, **dict.fromkeys(("timezone", "owner", "max_runtime"))}
    body = {
        "status": "ok",
        "duration": None,
        "environment": None,
        "monitor_config": config,
        "contexts": {"trace": None},
    }
    resp = await relay.post(f"/api/42/cron/job/{KEY}/", data=orjson.dumps(body), headers=JSON)
    assert resp.status == 202, await resp.text()
    await recorder.wait_for(1)


async def test_sdk_check_ins_past_a_monitor_quota_are_limited_with_outcomes(
    relay_factory: Any, recorder: RecordingUpstream
) -> None:
    quota = {"id": "crons", "categories": ["monitor"], "scope": "project", "limit": 1}
    relay = await relay_factory(policy={"quotas": [{**quota, "window": 60}]})
    item = orjson.dumps({"check_in_id": "a460c25ff2554577b920fcfacae4e5eb", "status": "ok"})
    envelope = b'{}\n{"type":"check_in"}\n' + item + b"\n"
    first = await relay.post("/api/42/envelope/", data=envelope, headers=auth_header())
    assert first.status == 200, await first.text()
    second = await relay.post("/api/42/envelope/", data=envelope, headers=auth_header())
    assert second.status == 429
    limits = second.headers["X-Sentry-Rate-Limits"]
    assert "monitor" in limits.split(":")[1].split(";") and limits.endswith(":project:crons")
    await recorder.wait_for(1)
    await asyncio.sleep(0.1)
    assert len(recorder.items("check_in")) == 1
    metrics = await (await relay.get("/metrics")).text()
    line = 'relay_items_total{category="monitor",outcome="rate_limited",reason="crons"} 1.0'
    assert line in metrics
