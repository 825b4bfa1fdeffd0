"""Shadow mode: drops mirrored to a shadow project; a bad shadow never hurts the primary path."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient

import relay.services.shadow as shadow_module
from relay.app import create_app
from relay.keys import SHADOW
from relay.protocol.envelope import Envelope, Item, parse_envelope
from tests.support.corpus import CORPUS
from tests.support.relay import auth_header, make_config
from tests.support.upstream import RecordingUpstream, Reply

HEALTHZ = (CORPUS / "transaction-healthz.envelope").read_bytes()
CHECKOUT = (CORPUS / "transaction-checkout.envelope").read_bytes()
RESET = (CORPUS / "error-connection-reset.envelope").read_bytes()
#: `tags` no SDK sends: an unhashable key, a bare string, a pair of the wrong length.
GARBAGE_TAGS: list[Any] = [[["a"], "b"], "x", [1, 2, 3], [{"k": 1}, "v"], ["tenant", "acme"]]


def _with_tags(body: bytes, tags: Any) -> bytes:
    """`body` with its event's `tags` replaced."""
    return _with_field(body, "tags", tags)


def _with_field(body: bytes, key: str, value: Any) -> bytes:
    """`body` with its event's `key` set to `value`."""
    envelope = parse_envelope(body)
    items = []
    for item in envelope.items:
        if item.type == "event":
            event = orjson.loads(item.payload)
            event[key] = value
            item = Item(dict(item.headers), orjson.dumps(event))
        items.append(item)
    return Envelope(envelope.headers, items).serialize()


def _string_pairs(tags: Any) -> dict[str, Any]:
    """The `[str, value]` pairs of a tags list (the rest ignored)."""
    return {
        t[0]: t[1] for t in tags if isinstance(t, list) and len(t) == 2 and isinstance(t[0], str)
    }


async def _relay(
    aiohttp_client: Any, primary_url: str, shadow_url: str, **policy: Any
) -> TestClient:
    host = shadow_url.split("//", 1)[1]
    policy = {
        "shadow": {"dsn": f"http://{'e' * 32}@{host}/7", **policy.pop("shadow", {})},
        **policy,
    }
    config = make_config(primary_url, policy=policy)
    return await aiohttp_client(create_app(config))  # type: ignore[no-any-return]


def _tags(event: dict[str, Any]) -> dict[str, str]:
    """An event's tags, whether the SDK sent them as an object or as pairs."""
    tags = event["tags"]
    return dict(tags) if isinstance(tags, list) else tags  # type: ignore[no-any-return]


def _first_copy(recorder: RecordingUpstream) -> dict[str, Any]:
    return orjson.loads(recorder.envelopes[0].items[0].payload)  # type: ignore[no-any-return]


@pytest.fixture
async def shadow(aiohttp_server: Any) -> tuple[RecordingUpstream, str]:
    recorder = RecordingUpstream()
    server = await aiohttp_server(recorder.app)
    return recorder, str(server.make_url("")).rstrip("/")


async def test_dropped_items_go_only_to_the_shadow_tagged(
    shadow: tuple[RecordingUpstream, str],
    upstream_url: str,
    recorder: RecordingUpstream,
    aiohttp_client: Any,
) -> None:
    shadow_rec, shadow_url = shadow
    relay = await _relay(
        aiohttp_client, upstream_url, shadow_url, filters={"error_types": ["ConnectionResetError"]}
    )
    for body in (HEALTHZ, RESET, CHECKOUT):
        assert (
            await relay.post("/api/42/envelope/", data=body, headers=auth_header())
        ).status == 200
    await shadow_rec.wait_for(2)
    await recorder.wait_for(1)
    await asyncio.sleep(0.1)
    assert [i.type for e in recorder.envelopes for i in e.items] == ["transaction"]
    mirrored = {
        orjson.loads(e.items[0].payload)["event_id"]: orjson.loads(e.items[0].payload)
        for e in shadow_rec.envelopes
    }
    tags = {eid: _tags(ev) for eid, ev in mirrored.items()}
    assert {t["relay.dropped_reason"] for t in tags.values()} == {"filtered"}
    assert {t["relay.rule"] for t in tags.values()} == {"*/healthz", "ConnectionResetError"}
    assert all(r.path == "/api/7/envelope/" for r in shadow_rec.received)
    metrics = await (await relay.get("/metrics")).text()
    assert (
        'relay_items_total{category="transaction",outcome="shadowed",reason="health-check"} 1.0'
        in metrics
    )


async def test_dry_run_filter_forwards_and_mirrors(
    shadow: tuple[RecordingUpstream, str],
    upstream_url: str,
    recorder: RecordingUpstream,
    aiohttp_client: Any,
) -> None:
    shadow_rec, shadow_url = shadow
    relay = await _relay(
        aiohttp_client,
        upstream_url,
        shadow_url,
        filters={"error_types": {"types": ["ConnectionResetError"], "mode": "dry_run"}},
    )
    assert (await relay.post("/api/42/envelope/", data=RESET, headers=auth_header())).status == 200
    await recorder.wait_for(1)
    await shadow_rec.wait_for(1)
    forwarded = orjson.loads(recorder.envelopes[0].items[0].payload)
    assert "relay.dry_run" not in orjson.dumps(forwarded).decode()
    assert _tags(_first_copy(shadow_rec))["relay.dry_run"] == "true"


async def test_garbage_tags_on_a_dropped_event_do_not_fail_the_request(
    shadow: tuple[RecordingUpstream, str],
    upstream_url: str,
    recorder: RecordingUpstream,
    aiohttp_client: Any,
) -> None:
    shadow_rec, shadow_url = shadow
    relay = await _relay(
        aiohttp_client, upstream_url, shadow_url, filters={"error_types": ["ConnectionResetError"]}
    )
    body = _with_tags(RESET, GARBAGE_TAGS)
    assert (await relay.post("/api/42/envelope/", data=body, headers=auth_header())).status == 200
    await shadow_rec.wait_for(1)
    tags = _string_pairs(_first_copy(shadow_rec)["tags"])
    assert tags["relay.dropped_reason"] == "filtered"
    assert tags["relay.rule"] == "ConnectionResetError"
    assert tags["tenant"] == "acme"
    assert recorder.received == []


async def test_garbage_tags_on_a_dry_run_hit_still_forward_the_kept_event(
    shadow: tuple[RecordingUpstream, str],
    upstream_url: str,
    recorder: RecordingUpstream,
    aiohttp_client: Any,
) -> None:
    shadow_rec, shadow_url = shadow
    relay = await _relay(
        aiohttp_client,
        upstream_url,
        shadow_url,
        filters={"error_types": {"types": ["ConnectionResetError"], "mode": "dry_run"}},
    )
    body = _with_tags(RESET, GARBAGE_TAGS)
    assert (await relay.post("/api/42/envelope/", data=body, headers=auth_header())).status == 200
    await recorder.wait_for(1)
    await shadow_rec.wait_for(1)
    forwarded = orjson.loads(recorder.envelopes[0].items[0].payload)
    assert forwarded["tags"] == GARBAGE_TAGS
    tags = _string_pairs(_first_copy(shadow_rec)["tags"])
    assert tags["relay.dropped_reason"] == "filtered"
    assert tags["relay.dry_run"] == "true"


async def test_a_copy_that_cannot_be_built_is_logged_and_skipped(
    shadow: tuple[RecordingUpstream, str],
    upstream_url: str,
    recorder: RecordingUpstream,
    aiohttp_client: Any,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Whatever goes wrong building a copy, the primary request does not see it."""

    def boom(*args: Any, **kwargs: Any) -> None:
        raise KeyError("alice@example.com")  # a message quoting a payload value

    monkeypatch.setattr(shadow_module, "tag_for_shadow", boom)
    shadow_rec, shadow_url = shadow
    relay = await _relay(
        aiohttp_client,
        upstream_url,
        shadow_url,
        filters={"error_types": {"types": ["ConnectionResetError"], "mode": "dry_run"}},
    )
    with caplog.at_level("ERROR", logger="relay.shadow"):
        resp = await relay.post("/api/42/envelope/", data=RESET, headers=auth_header())
    assert resp.status == 200
    await recorder.wait_for(1)
    await asyncio.sleep(0.1)
    assert shadow_rec.received == []
    assert relay.app[SHADOW].failed_copies == 1
    metrics = await (await relay.get("/metrics")).text()
    assert 'relay_shadow_copies_skipped_total{reason="failed"} 1.0' in metrics
    (logged,) = [r for r in caplog.records if r.name == "relay.shadow"]
    # The error's type and where it was raised, never its message (nor a traceback).
    assert "[KeyError at test_shadow.py:" in logged.getMessage()
    assert logged.exc_info is None
    assert "alice@example.com" not in caplog.text


async def test_dry_run_quota_forwards_and_mirrors(
    shadow: tuple[RecordingUpstream, str],
    upstream_url: str,
    recorder: RecordingUpstream,
    aiohttp_client: Any,
) -> None:
    shadow_rec, shadow_url = shadow
    relay = await _relay(
        aiohttp_client,
        upstream_url,
        shadow_url,
        quotas=[
            {
                "id": "try-cap",
                "categories": ["transaction"],
                "scope": "project",
                "limit": 0,
                "window": 60,
                "mode": "dry_run",
            }
        ],
    )
    assert (
        await relay.post("/api/42/envelope/", data=CHECKOUT, headers=auth_header())
    ).status == 200
    await recorder.wait_for(1)
    await shadow_rec.wait_for(1)
    assert _tags(_first_copy(shadow_rec))["relay.rule"] == "try-cap"


async def test_dry_run_hit_then_really_rate_limited_is_mirrored_once(
    shadow: tuple[RecordingUpstream, str],
    upstream_url: str,
    recorder: RecordingUpstream,
    aiohttp_client: Any,
) -> None:
    """One copy per item, tagged with what really happened to it (the rate limit)."""
    shadow_rec, shadow_url = shadow
    relay = await _relay(
        aiohttp_client,
        upstream_url,
        shadow_url,
        filters={"error_types": {"types": ["ConnectionResetError"], "mode": "dry_run"}},
        quotas=[{"id": "no-errors", "categories": ["error"], "limit": 0, "window": 60}],
    )
    resp = await relay.post("/api/42/envelope/", data=RESET, headers=auth_header())
    assert resp.status == 429
    await shadow_rec.wait_for(1)
    await asyncio.sleep(0.2)
    assert recorder.received == []
    copies = [item for e in shadow_rec.envelopes for item in e.items]
    assert len(copies) == 1
    tags = _tags(orjson.loads(copies[0].payload))
    assert tags["relay.rule"] == "no-errors"
    assert "relay.dry_run" not in tags


@pytest.mark.parametrize("trouble", ["slow", "down"])
async def test_a_bad_shadow_never_delays_the_primary_path(
    aiohttp_server: Any,
    upstream_url: str,
    recorder: RecordingUpstream,
    aiohttp_client: Any,
    trouble: str,
) -> None:
    shadow_rec = RecordingUpstream()
    shadow_rec.answer(*[Reply(200, delay=3.0)] * 50)
    server = await aiohttp_server(shadow_rec.app)
    shadow_url = str(server.make_url("")).rstrip("/") if trouble == "slow" else "http://127.0.0.1:9"
    relay = await _relay(aiohttp_client, upstream_url, shadow_url)
    started = time.monotonic()
    for _ in range(20):
        assert (
            await relay.post("/api/42/envelope/", data=HEALTHZ, headers=auth_header())
        ).status == 200
        assert (
            await relay.post("/api/42/envelope/", data=CHECKOUT, headers=auth_header())
        ).status == 200
    await recorder.wait_for(20)
    assert time.monotonic() - started < 2.5


async def test_shadow_cap_per_minute(
    shadow: tuple[RecordingUpstream, str], upstream_url: str, aiohttp_client: Any
) -> None:
    shadow_rec, shadow_url = shadow
    relay = await _relay(aiohttp_client, upstream_url, shadow_url, shadow={"max_per_minute": 3})
    for _ in range(10):
        await relay.post("/api/42/envelope/", data=HEALTHZ, headers=auth_header())
    await shadow_rec.wait_for(3)
    await asyncio.sleep(0.2)
    assert len(shadow_rec.received) == 3
    metrics = await (await relay.get("/metrics")).text()
    assert 'relay_shadow_copies_skipped_total{reason="capped"} 7.0' in metrics


@pytest.mark.parametrize("keep_ips", [True, False])
async def test_shadow_copies_resolve_auto_addresses_as_the_primary_path_does(
    shadow: tuple[RecordingUpstream, str],
    upstream_url: str,
    aiohttp_client: Any,
    keep_ips: bool,
) -> None:
    shadow_rec, shadow_url = shadow
    scrubbing = {"scrubbing": {"ip_addresses": False}} if keep_ips else {}
    relay = await _relay(
        aiohttp_client,
        upstream_url,
        shadow_url,
        filters={"error_types": ["ConnectionResetError"]},
        **scrubbing,
    )
    body = _with_field(RESET, "user", {"id": "42", "ip_address": "{{auto}}"})
    assert (await relay.post("/api/42/envelope/", data=body, headers=auth_header())).status == 200
    await shadow_rec.wait_for(1)
    user = _first_copy(shadow_rec)["user"]
    assert user == ({"id": "42", "ip_address": "127.0.0.1"} if keep_ips else {"id": "42"})
