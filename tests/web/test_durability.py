"""Durability: spool-backed delivery through upstream outages, spool limits, torn segments."""

from __future__ import annotations

import asyncio
import random
import string
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from relay.app import create_app
from relay.keys import FORWARDER
from tests.support.relay import auth_header, make_config
from tests.support.upstream import RecordingUpstream


def event_envelope(n: int, size: int = 0) -> bytes:
    """An event with `size` characters of padding that gzip cannot shrink much (queued
    copies are gzipped, and the tests that fill the spool count on their size)."""
    event_id = f"{n:032x}"
    pad = "".join(random.Random(n).choices(string.ascii_lowercase + " ", k=size))
    payload = orjson.dumps({"event_id": event_id, "message": f"event {n}", "extra": {"pad": pad}})
    return orjson.dumps({"event_id": event_id}) + b'\n{"type":"event"}\n' + payload + b"\n"


class SwitchableUpstream(RecordingUpstream):
    """Answers 503 (or drops the connection) while `down`."""

    def __init__(self) -> None:
        super().__init__()
        self.down = True

    async def _handle(self, request: web.Request) -> web.Response:
        if self.down:
            self.attempts += 1
            await request.read()
            return web.Response(status=503)
        return await super()._handle(request)


async def test_outage_then_recovery_delivers_all_in_order_once(
    aiohttp_server: Any, aiohttp_client: Any, tmp_path: Path
) -> None:
    upstream = SwitchableUpstream()
    server = await aiohttp_server(upstream.app)
    config = make_config(
        str(server.make_url("")).rstrip("/"),
        spool={"path": str(tmp_path / "spool")},
        upstream={
            "concurrency": 1,
            "retry_base_s": 0.01,
            "retry_max_s": 0.05,
            "outage_after": 3,
            "probe_max_s": 0.1,
        },
    )
    relay: TestClient = await aiohttp_client(create_app(config))
    for n in range(30):
        resp = await relay.post("/api/42/envelope/", data=event_envelope(n), headers=auth_header())
        assert resp.status == 200
    async with asyncio.timeout(5):
        while relay.app[FORWARDER].upstream_up:
            await asyncio.sleep(0.01)
    metrics = await (await relay.get("/metrics")).text()
    assert "relay_upstream_up 0.0" in metrics
    ready = await relay.get("/readyz")
    assert ready.status == 200  # still accepting into the spool
    assert (await ready.json())["upstream"] == "down"
    assert (await relay.get("/readyz?upstream=required")).status == 503
    assert "relay_spool_bytes" in metrics
    attempts_in_outage = upstream.attempts
    await asyncio.sleep(0.3)
    assert upstream.attempts - attempts_in_outage < 10  # probing, not hammering
    upstream.down = False
    await upstream.wait_for(30)
    await asyncio.sleep(0.1)
    ids = [e.event_id for e in upstream.envelopes]
    assert ids == [f"{n:032x}" for n in range(30)]
    assert relay.app[FORWARDER].upstream_up


async def test_spool_full_answers_503_and_keeps_what_it_accepted(
    aiohttp_server: Any, aiohttp_client: Any, tmp_path: Path
) -> None:
    upstream = SwitchableUpstream()
    server = await aiohttp_server(upstream.app)
    config = make_config(
        str(server.make_url("")).rstrip("/"),
        spool={"path": str(tmp_path / "spool"), "max_bytes": "20KiB"},
        upstream={"outage_after": 1, "probe_max_s": 0.05},
    )
    relay: TestClient = await aiohttp_client(create_app(config))
    accepted = []
    for n in range(20):
        resp = await relay.post(
            "/api/42/envelope/", data=event_envelope(n, size=2000), headers=auth_header()
        )
        if resp.status == 200:
            accepted.append(f"{n:032x}")
        else:
            assert resp.status == 503
            assert resp.headers["Retry-After"]
    assert 3 <= len(accepted) < 20
    upstream.down = False
    await upstream.wait_for(len(accepted))
    assert sorted(e.event_id or "" for e in upstream.envelopes) == sorted(accepted)


async def test_restart_with_torn_segment_delivers_the_rest(
    aiohttp_server: Any, tmp_path: Path
) -> None:
    upstream = SwitchableUpstream()
    server = await aiohttp_server(upstream.app)
    url = str(server.make_url("")).rstrip("/")
    spool_dir = tmp_path / "spool"
    config = make_config(
        url, spool={"path": str(spool_dir)}, upstream={"outage_after": 1, "probe_max_s": 60}
    )
    first = TestClient(TestServer(create_app(config)))
    await first.start_server()
    for n in range(5):
        assert (
            await first.post("/api/42/envelope/", data=event_envelope(n), headers=auth_header())
        ).status == 200
    await first.close()
    (segment,) = [p for p in spool_dir.glob("seg-*.log") if p.stat().st_size]
    segment.write_bytes(segment.read_bytes()[:-25])  # power loss mid-record

    upstream.down = False
    second = TestClient(TestServer(create_app(make_config(url, spool={"path": str(spool_dir)}))))
    await second.start_server()
    try:
        await upstream.wait_for(4)
        await asyncio.sleep(0.1)
        assert [e.event_id for e in upstream.envelopes] == [f"{n:032x}" for n in range(4)]
        metrics = await (await second.get("/metrics")).text()
        assert "relay_spool_corrupt_records_total 1.0" in metrics
    finally:
        await second.close()


async def test_backlog_follows_the_upstream_configured_after_restart(
    aiohttp_server: Any, tmp_path: Path
) -> None:
    """Spooled under `upstream_dsn` of an old host, replayed after the config moved the
    project to a new one: the new host gets it, with its own key and routing headers."""
    old = SwitchableUpstream()  # down for good: being replaced
    new = RecordingUpstream()
    old_url = str((await aiohttp_server(old.app)).make_url("")).rstrip("/")
    new_url = str((await aiohttp_server(new.app)).make_url("")).rstrip("/")
    spool_dir = tmp_path / "spool"
    app_key = auth_header()["X-Sentry-Auth"].split("sentry_key=")[1].split(",")[0]
    old_dsn = f"http://{'b' * 32}@{old_url.split('//')[1]}/900"

    def config(url: str, upstream_dsn: str | None) -> Any:
        project: dict[str, Any] = {"id": 42, "keys": [app_key]}
        if upstream_dsn:
            project["upstream_dsn"] = upstream_dsn
        return make_config(
            url,
            spool={"path": str(spool_dir)},
            upstream={"outage_after": 1, "probe_max_s": 60},
            projects=[project],
        )

    first = TestClient(TestServer(create_app(config(old_url, old_dsn))))
    await first.start_server()
    body = (
        orjson.dumps(
            {
                "event_id": "1" * 32,
                "dsn": f"http://{app_key}@relay.example/42",
                "trace": {"trace_id": "2" * 32, "public_key": app_key},
            }
        )
        + b'\n{"type":"event"}\n{"message":"queued while the old host was down"}\n'
    )
    assert (await first.post("/api/42/envelope/", data=body, headers=auth_header())).status == 200
    for _ in range(100):
        if old.attempts:
            break
        await asyncio.sleep(0.02)
    await first.close()
    assert old.attempts >= 1 and old.received == []

    second = TestClient(TestServer(create_app(config(new_url, None))))
    await second.start_server()
    try:
        await new.wait_for(1)
        (got,) = new.received
        assert got.path == "/api/42/envelope/"
        assert f"sentry_key={app_key}" in got.headers["X-Sentry-Auth"]
        envelope = got.envelope
        assert envelope.headers["trace"]["public_key"] == app_key
        assert envelope.headers["dsn"].startswith(f"http://{app_key}@")
        assert "b" * 32 not in got.body.decode()  # nothing of the old upstream's key
        assert orjson.loads(envelope.items[0].payload)["message"].startswith("queued")
    finally:
        await second.close()
