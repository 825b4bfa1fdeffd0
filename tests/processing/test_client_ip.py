"""`{{auto}}` IP addresses: the client's address where the policy keeps IPs, removed where
it strips them; never the relay's own, which Sentry would fill in from the request."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient

from relay.processing.pipeline import AUTO_IP, resolve_client_ip
from tests.support.relay import auth_header
from tests.support.upstream import RecordingUpstream

CLIENT = "198.51.100.7"


def test_auto_becomes_the_client_address() -> None:
    event: dict[str, Any] = {
        "user": {"id": "42", "ip_address": AUTO_IP},
        "request": {"env": {"REMOTE_ADDR": AUTO_IP, "SERVER_NAME": "web-1"}},
    }
    assert resolve_client_ip(event, CLIENT)
    assert event["user"] == {"id": "42", "ip_address": CLIENT}
    assert event["request"]["env"] == {"REMOTE_ADDR": CLIENT, "SERVER_NAME": "web-1"}


def test_auto_is_removed_when_there_is_no_address_to_give() -> None:
    event: dict[str, Any] = {
        "user": {"ip_address": AUTO_IP},
        "request": {"env": {"REMOTE_ADDR": AUTO_IP}},
    }
    assert resolve_client_ip(event, None)
    assert event == {"user": {}, "request": {"env": {}}}


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        ({"platform": "javascript"}, {"platform": "javascript", "user": {"ip_address": CLIENT}}),
        (
            {"platform": "cocoa", "user": {"id": "1"}},
            {"platform": "cocoa", "user": {"id": "1", "ip_address": CLIENT}},
        ),
    ],
)
def test_browser_and_apple_events_get_the_client_address(
    event: dict[str, Any], expected: dict[str, Any]
) -> None:
    assert resolve_client_ip(event, CLIENT)
    assert event == expected


@pytest.mark.parametrize(
    "event",
    [
        {"platform": "python"},
        {"platform": "javascript", "user": {"ip_address": "203.0.113.1"}},
        {"platform": "javascript", "user": "not an object"},
        {"user": {"ip_address": "203.0.113.1"}, "request": {"env": "x"}},
    ],
)
def test_everything_else_is_left_alone(event: dict[str, Any]) -> None:
    before = orjson.dumps(event)
    assert not resolve_client_ip(event, CLIENT)
    assert not resolve_client_ip(event, None) or event.get("platform") == "javascript"
    assert orjson.dumps(event) == before


def _event(platform: str, ip: str | None) -> bytes:
    event: dict[str, Any] = {"message": "boom", "platform": platform}
    if ip is not None:
        event["user"] = {"ip_address": ip}
    return b'{"event_id":"' + b"e" * 32 + b'"}\n{"type":"event"}\n' + orjson.dumps(event) + b"\n"


@pytest.mark.parametrize("keep_ips", [True, False])
async def test_the_upstream_never_gets_auto(
    relay_factory: Any, recorder: RecordingUpstream, keep_ips: bool
) -> None:
    policy = {"scrubbing": {"ip_addresses": False}} if keep_ips else {}
    relay: TestClient = await relay_factory(policy=policy)
    for platform, ip in (("python", AUTO_IP), ("javascript", None)):
        resp = await relay.post(
            "/api/42/envelope/", data=_event(platform, ip), headers=auth_header()
        )
        assert resp.status == 200
    await recorder.wait_for(2)
    users = [orjson.loads(e.items[0].payload).get("user") for e in recorder.envelopes]
    if keep_ips:
        assert users == [{"ip_address": "127.0.0.1"}, {"ip_address": "127.0.0.1"}]
    else:
        assert users == [{}, None]


def _sessions(doc: dict[str, Any], item_type: str) -> bytes:
    return b'{}\n{"type":"' + item_type.encode() + b'"}\n' + orjson.dumps(doc) + b"\n"


@pytest.mark.parametrize("keep_ips", [True, False])
async def test_sessions_get_the_client_address_for_auto_too(
    relay_factory: Any, recorder: RecordingUpstream, keep_ips: bool
) -> None:
    policy = {"scrubbing": {"ip_addresses": False}} if keep_ips else {}
    relay: TestClient = await relay_factory(policy=policy)
    attrs = {"release": "shop@1.4.2", "environment": "production", "ip_address": AUTO_IP}
    now = datetime.now(UTC).isoformat()  # sessions are counted only within days of it
    session = {"sid": "a" * 32, "did": "u1", "status": "ok", "started": now}
    aggregates = {"aggregates": [{"started": now, "exited": 3}]}
    for doc, item_type in (
        ({**session, "attrs": attrs}, "session"),
        ({**aggregates, "attrs": attrs}, "sessions"),
    ):
        resp = await relay.post(
            "/api/42/envelope/", data=_sessions(doc, item_type), headers=auth_header()
        )
        assert resp.status == 200
    await recorder.wait_for(2)
    sent = [orjson.loads(e.items[0].payload)["attrs"] for e in recorder.envelopes]
    want = {"release": "shop@1.4.2", "environment": "production"}
    if keep_ips:
        want["ip_address"] = "127.0.0.1"
    assert sent == [want, want]


@pytest.mark.parametrize("keep_ips", [True, False])
async def test_replays_get_the_client_address_as_events_do(
    relay_factory: Any, recorder: RecordingUpstream, keep_ips: bool
) -> None:
    # Sentry normalizes a replay's addresses as an event's, from the request it gets: from
    # the relay, so left to Sentry every replay would get the relay's address and place.
    policy = {"scrubbing": {"ip_addresses": False}} if keep_ips else {}
    relay: TestClient = await relay_factory(policy=policy)
    replays = (
        {"replay_id": "a" * 32, "platform": "python", "user": {"ip_address": AUTO_IP}},
        {"replay_id": "b" * 32, "platform": "javascript", "user": {"id": "7"}},
    )
    for doc in replays:
        body = b'{}\n{"type":"replay_event"}\n' + orjson.dumps(doc) + b"\n"
        resp = await relay.post("/api/42/envelope/", data=body, headers=auth_header())
        assert resp.status == 200
    await recorder.wait_for(2)
    users = [orjson.loads(e.items[0].payload).get("user") for e in recorder.envelopes]
    if keep_ips:
        assert users == [{"ip_address": "127.0.0.1"}, {"id": "7", "ip_address": "127.0.0.1"}]
    else:
        assert users == [{}, {"id": "7"}]
