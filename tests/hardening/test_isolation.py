"""Auth and isolation: who may send where, and where the relay may send.

- an unknown project or key is refused (403) and nothing is forwarded;
- a key of one project never sends to another, with or without `accept_unknown`;
- the envelope `dsn` header never chooses the upstream (no SSRF): only the configured
  upstream is ever contacted;
- admin endpoints need the token, compared in constant time;
- `/metrics` can live on a separate internal address.
"""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

import orjson
import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestClient, TestServer

import relay.web.admin
from tests.hardening.conftest import GOOD_ENVELOPE
from tests.support.redis_server import free_port
from tests.support.relay import KEY, OTHER_KEY, RelayFactory, auth_header
from tests.support.upstream import RecordingUpstream

THIRD_KEY = "0123456789abcdef0123456789abcdef"
TOKEN = "adm1n-t0ken-value-7c1d"


def tunnel(dsn: str) -> bytes:
    """An envelope as a browser tunnel posts it: the key only in the `dsn` header."""
    header = orjson.dumps({"event_id": "0123456789abcdef0123456789abcdef", "dsn": dsn})
    return header + b'\n{"type":"event"}\n{"message":"tunnelled"}\n'


@pytest.fixture
async def evil(aiohttp_server: Any) -> tuple[RecordingUpstream, str]:
    """A second server on loopback that an attacker would like the relay to contact."""
    recorder = RecordingUpstream()
    server: TestServer = await aiohttp_server(recorder.app)
    return recorder, f"127.0.0.1:{server.port}"


async def _settle(recorder: RecordingUpstream) -> None:
    await asyncio.sleep(0.2)


@pytest.mark.parametrize("accept_unknown", [False, True])
async def test_unknown_project_or_key_never_forwards(
    relay_factory: RelayFactory, recorder: RecordingUpstream, accept_unknown: bool
) -> None:
    relay = await relay_factory(accept_unknown=accept_unknown)
    refused = [
        ("/api/42/envelope/", auth_header(THIRD_KEY)),  # unknown key of a known project
        ("/api/42/envelope/", auth_header(OTHER_KEY)),  # project 43's key
        ("/api/43/envelope/", auth_header(KEY)),  # project 42's key
        ("/api/42/store/", auth_header(OTHER_KEY)),
        ("/api/42/minidump/", auth_header(OTHER_KEY)),
        ("/api/42/security/", auth_header(OTHER_KEY)),
        ("/api/99/envelope/", auth_header(KEY)),  # a configured key, to an unknown project
    ]
    if not accept_unknown:
        refused.append(("/api/99/envelope/", auth_header(THIRD_KEY)))
    for path, headers in refused:
        resp = await relay.post(path, data=GOOD_ENVELOPE, headers=headers)
        assert resp.status == 403, (path, headers, await resp.text())
    await _settle(recorder)
    assert recorder.received == []
    if accept_unknown:
        resp = await relay.post(
            "/api/99/envelope/", data=GOOD_ENVELOPE, headers=auth_header(THIRD_KEY)
        )
        assert resp.status == 200
        await recorder.wait_for(1)
        assert recorder.received[0].path == "/api/99/envelope/"


async def test_no_auth_or_malformed_auth_never_forwards(
    relay: TestClient, recorder: RecordingUpstream
) -> None:
    for headers in (
        {},
        {"X-Sentry-Auth": "Sentry sentry_version=7"},
        {"X-Sentry-Auth": "Sentry sentry_key=../../42"},
        {
            "X-Sentry-Auth": f"Sentry sentry_key={KEY}",
            "Authorization": f"Sentry sentry_key={OTHER_KEY}",
        },
    ):
        resp = await relay.post("/api/42/envelope/", data=GOOD_ENVELOPE, headers=headers)
        assert resp.status in (400, 401), headers
    for path in (
        "/api/42%2F..%2F43/envelope/",
        "/api/0/envelope/",
        "/api/-1/envelope/",
        "/api/99999999999999999999/envelope/",
    ):
        resp = await relay.post(path, data=GOOD_ENVELOPE, headers=auth_header())
        assert resp.status in (400, 404), path
    await _settle(recorder)
    assert recorder.received == []


async def test_a_configured_key_cannot_send_to_a_project_without_keys(
    relay_factory: RelayFactory, recorder: RecordingUpstream
) -> None:
    """A project that lists no keys accepts new keys, but not the key of another project:
    otherwise project 42's apps could write into project 44 (and its upstream DSN)."""
    relay = await relay_factory(
        projects=[{"id": 42, "keys": [KEY]}, {"id": 43, "keys": [OTHER_KEY]}, {"id": 44}]
    )
    resp = await relay.post("/api/44/envelope/", data=GOOD_ENVELOPE, headers=auth_header(KEY))
    assert resp.status == 403
    resp = await relay.post("/api/44/envelope/", data=GOOD_ENVELOPE, headers=auth_header(THIRD_KEY))
    assert resp.status == 200


async def test_tunnel_dsn_cannot_choose_the_upstream(
    relay_factory: RelayFactory,
    recorder: RecordingUpstream,
    upstream_url: str,
    evil: tuple[RecordingUpstream, str],
) -> None:
    evil_recorder, evil_host = evil
    relay = await relay_factory(accept_unknown=True)
    dsns = [
        f"http://{KEY}@{evil_host}/42",
        f"https://{KEY}@{evil_host}/42",
        f"http://{KEY}:secret@{evil_host}/prefix/42",
        f"http://{KEY}@[::1]:{evil_host.rsplit(':', 1)[1]}/42",
        f"http://{KEY}@{evil_host}/42?x=/api/42/envelope/",
        f"http://{KEY}@{evil_host}#@{upstream_url.split('//')[1]}/42",
    ]
    for dsn in dsns:
        resp = await relay.post("/api/42/envelope/", data=tunnel(dsn))
        assert resp.status in (200, 400), (dsn, await resp.text())
    # With header auth as well, the dsn still decides nothing.
    resp = await relay.post(
        "/api/42/envelope/", data=tunnel(f"http://{KEY}@{evil_host}/42"), headers=auth_header()
    )
    assert resp.status == 200
    await recorder.wait_for(1)
    await _settle(recorder)
    assert evil_recorder.received == [] and evil_recorder.attempts == 0
    upstream_host = upstream_url.split("//", 1)[1]
    for received in recorder.received:
        assert received.path == "/api/42/envelope/"
        assert received.headers["Host"] == upstream_host
        dsn = received.envelope.headers.get("dsn")
        assert dsn is None or evil_host not in dsn


async def test_tunnel_dsn_cannot_switch_project_or_key(
    relay_factory: RelayFactory, recorder: RecordingUpstream
) -> None:
    relay = await relay_factory(accept_unknown=True)
    cases = [
        (f"http://{KEY}@relay.example/43", 400),  # another project than the URL
        (f"http://{OTHER_KEY}@relay.example/42", 403),  # project 43's key to project 42
        (f"http://{THIRD_KEY}@relay.example/42", 403),  # unknown key of a known project
        ("http://relay.example/42", 400),  # no key
        ("file:///etc/passwd", 400),
        (f"gopher://{KEY}@relay.example/42", 400),
    ]
    for dsn, status in cases:
        resp = await relay.post("/api/42/envelope/", data=tunnel(dsn))
        assert resp.status == status, (dsn, await resp.text())
    await _settle(recorder)
    assert recorder.received == []


async def test_configured_upstream_dsn_wins_over_the_envelope_dsn(
    relay_factory: RelayFactory,
    recorder: RecordingUpstream,
    upstream_url: str,
    evil: tuple[RecordingUpstream, str],
) -> None:
    evil_recorder, evil_host = evil
    host = upstream_url.split("//", 1)[1]
    relay = await relay_factory(
        projects=[{"id": 42, "keys": [KEY], "upstream_dsn": f"http://{'d' * 32}@{host}/4500"}]
    )
    resp = await relay.post("/api/42/envelope/", data=tunnel(f"http://{KEY}@{evil_host}/42"))
    assert resp.status == 200
    await recorder.wait_for(1)
    received = recorder.received[0]
    assert received.path == "/api/4500/envelope/"
    assert received.envelope.headers["dsn"] == f"http://{'d' * 32}@{host}/4500"
    assert evil_recorder.attempts == 0


async def test_admin_endpoint_needs_the_token(relay_factory: RelayFactory) -> None:
    disabled = await relay_factory()
    resp = await disabled.get("/api/relay/usage/", headers={"Authorization": "Bearer "})
    assert resp.status == 403
    relay = await relay_factory(admin={"token": TOKEN})
    for headers in (
        {},
        {"Authorization": ""},
        {"Authorization": TOKEN},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": f"Bearer {TOKEN[:-1]}"},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": f"Bearer {TOKEN.upper()}"},
        {"Authorization": "Bearer é"},
        {"X-Sentry-Auth": f"Sentry sentry_key={KEY}"},
    ):
        resp = await relay.get("/api/relay/usage/", headers=headers)
        assert resp.status == 401, headers
        assert TOKEN not in await resp.text()
    resp = await relay.get("/api/relay/usage/", headers={"Authorization": f"Bearer {TOKEN}"})
    assert resp.status == 200
    resp = await relay.get("/api/relay/usage", headers={"Authorization": f"bearer  {TOKEN} "})
    assert resp.status == 200


def test_admin_token_is_compared_in_constant_time() -> None:
    source = inspect.getsource(relay.web.admin.check_admin)
    assert "hmac.compare_digest(" in source
    assert "==" not in source.replace("compare_digest", "")


async def test_metrics_on_a_separate_internal_address(relay_factory: RelayFactory) -> None:
    port = free_port()
    relay = await relay_factory(listen={"metrics": f"127.0.0.1:{port}"})
    resp = await relay.get("/metrics")
    assert resp.status == 404
    await relay.post("/api/42/envelope/", data=GOOD_ENVELOPE, headers=auth_header())
    async with ClientSession() as session, session.get(f"http://127.0.0.1:{port}/metrics") as side:
        assert side.status == 200
        text = await side.text()
    assert "relay_requests_total" in text
    # Only /metrics lives there: no ingest, no admin.
    async with ClientSession() as session:
        for path in ("/api/42/envelope/", "/api/relay/usage/", "/healthz"):
            async with session.post(f"http://127.0.0.1:{port}{path}", data=GOOD_ENVELOPE) as other:
                assert other.status in (404, 405), path
