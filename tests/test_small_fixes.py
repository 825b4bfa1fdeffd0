"""Event ids for envelopes without one, CORS off the relay's own endpoints, DSN secrets
out of `repr`, and `relay usage` against a relay listening on IPv6."""

from __future__ import annotations

import re
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient

from relay.config import ConfigError, parse_config
from relay.protocol.dsn import Dsn
from relay.server import banner
from relay.usage import usage_url
from tests.support.relay import KEY, auth_header, make_config
from tests.support.upstream import RecordingUpstream

TOKEN = "s3cret-token"
HEX32 = re.compile(r"[0-9a-f]{32}")


def _envelope(header: dict[str, Any], item_type: str, payload: bytes) -> bytes:
    return (
        orjson.dumps(header) + b"\n" + orjson.dumps({"type": item_type}) + b"\n" + payload + b"\n"
    )


# -- an event id for an event envelope that has none ----------------------------------


@pytest.mark.parametrize(
    ("header", "item_type", "payload"),
    [
        ({}, "event", b'{"message":"boom"}'),
        ({"event_id": None}, "event", b'{"message":"boom"}'),
        ({"x_custom": 1}, "attachment", b"log line"),
    ],
    ids=["event", "event-id-null", "attachment"],
)
async def test_event_envelope_without_event_id_gets_one(
    relay: TestClient,
    recorder: RecordingUpstream,
    header: dict[str, Any],
    item_type: str,
    payload: bytes,
) -> None:
    body = _envelope(header, item_type, payload)
    resp = await relay.post("/api/42/envelope/", data=body, headers=auth_header())
    assert resp.status == 200, await resp.text()
    answer = await resp.json()
    assert HEX32.fullmatch(answer["id"]), answer
    await recorder.wait_for(1)
    forwarded = recorder.received[0].envelope
    assert forwarded.event_id == answer["id"]
    # The other envelope headers go on as they came.
    assert {k: v for k, v in forwarded.headers.items() if k != "event_id"} == {
        k: v for k, v in header.items() if k != "event_id"
    }


async def test_envelope_on_the_store_endpoint_gets_an_event_id(
    relay: TestClient, recorder: RecordingUpstream
) -> None:
    body = _envelope({}, "event", b'{"message":"boom"}')
    headers = {**auth_header(), "Content-Type": "application/x-sentry-envelope"}
    resp = await relay.post("/api/42/store/", data=body, headers=headers)
    assert resp.status == 200, await resp.text()
    event_id = (await resp.json())["id"]
    await recorder.wait_for(1)
    assert recorder.received[0].envelope.event_id == event_id


async def test_envelope_without_event_items_gets_no_event_id(
    relay: TestClient, recorder: RecordingUpstream
) -> None:
    """Items that need no event (sessions, check-ins, logs, types unknown to the relay):
    `{}`, and nothing added to the header."""
    body = _envelope({}, "future_thing", b"payload")
    resp = await relay.post("/api/42/envelope/", data=body, headers=auth_header())
    assert resp.status == 200, await resp.text()
    assert await resp.json() == {}
    await recorder.wait_for(1)
    assert recorder.received[0].body == body


# -- CORS on ingest paths only ---------------------------------------------------------


async def test_no_cors_on_the_relays_own_endpoints(relay_factory: Any) -> None:
    relay: TestClient = await relay_factory(admin={"token": TOKEN})
    origin = {"Origin": "https://evil.example"}
    for path in ("/api/relay/usage/", "/api/relay/usage", "/api/relay/healthcheck/live/"):
        resp = await relay.get(path, headers={**origin, "Authorization": f"Bearer {TOKEN}"})
        assert resp.status == 200, path
        assert "Access-Control-Allow-Origin" not in resp.headers, path
    # Nor on its errors.
    resp = await relay.get("/api/relay/usage/", headers=origin)
    assert resp.status == 401
    assert "Access-Control-Allow-Origin" not in resp.headers
    # A browser SDK's envelope still gets them.
    body = _envelope({"event_id": "0" * 31 + "1"}, "event", b'{"message":"boom"}')
    resp = await relay.post(
        "/api/42/envelope/", data=body, headers={**auth_header(), "Origin": "https://app.example"}
    )
    assert resp.status == 200
    assert resp.headers["Access-Control-Allow-Origin"] == "https://app.example"


# -- DSN secrets out of repr -----------------------------------------------------------


def test_dsn_repr_hides_the_secret_key() -> None:
    dsn = Dsn.parse(f"https://{KEY}:topsecretvalue@sentry.example.com/42")
    assert dsn.secret_key == "topsecretvalue"
    assert "topsecretvalue" not in repr(dsn)
    assert KEY in repr(dsn)
    assert str(dsn).endswith(":topsecretvalue@sentry.example.com/42")  # the wire form keeps it


# -- `relay usage` against a relay on IPv6: the URL it asks ------------------------------


def test_usage_url() -> None:
    assert usage_url("127.0.0.1", 3000) == "http://127.0.0.1:3000/api/relay/usage/"
    assert usage_url("0.0.0.0", 3000) == "http://127.0.0.1:3000/api/relay/usage/"
    assert usage_url("::1", 3000) == "http://[::1]:3000/api/relay/usage/"
    assert usage_url("[::1]", 3000) == "http://[::1]:3000/api/relay/usage/"
    assert usage_url("::", 3000) == "http://[::1]:3000/api/relay/usage/"
    assert usage_url("fd00::5", 3000) == "http://[fd00::5]:3000/api/relay/usage/"
    assert usage_url("relay.internal", 3000) == "http://relay.internal:3000/api/relay/usage/"


@pytest.mark.parametrize(
    ("host", "shown"),
    [
        ("::", "[::1]"),
        ("0.0.0.0", "127.0.0.1"),
        ("::1", "[::1]"),
        ("relay.internal", "relay.internal"),
    ],
)
def test_the_banner_shows_an_address_that_reaches_the_relay(host: str, shown: str) -> None:
    """A relay on `::` takes IPv6 connections only: its banner's example DSN says `[::1]`."""
    config = make_config("http://127.0.0.1:1", listen={"host": host, "port": 3000})
    text = banner(config)
    assert f"relay listening on http://{shown}:3000" in text
    assert f"@{shown}:3000/" in text


@pytest.mark.parametrize("url", ["rediss://s1:26379,s2:26379/0", "unix:///run/redis.sock"])
def test_sentinel_mode_refuses_a_url_whose_tls_or_socket_it_would_ignore(url: str) -> None:
    with pytest.raises(ConfigError, match=r"redis\.url: mode: sentinel takes redis://"):
        parse_config({"redis": {"url": url, "mode": "sentinel"}}, env={})
    parse_config({"redis": {"url": "redis://s1:26379,s2:26379/0", "mode": "sentinel"}}, env={})
