"""The guarantee: nothing leaves the relay, or touches its disk or its logs, unscrubbed.

The whole corpus goes through a relay with a durable spool, a shadow project
mirroring every drop (filtered, sampled, dry-run), and debug-level JSON logs.
No planted secret may appear in any byte the upstream or the shadow receives,
in any spool file, or in any log line.
"""

from __future__ import annotations

import asyncio
import logging
import zlib
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from relay.app import create_app
from relay.logs import JsonFormatter
from tests.support.corpus import CORPUS, ENVELOPES, PLANTED
from tests.support.relay import KEY, auth_header, make_config
from tests.support.upstream import RecordingUpstream
from tests.web.test_durability import SwitchableUpstream


def _leaks(data: bytes) -> list[bytes]:
    return [secret for secret in PLANTED if secret in data]


def _gzip_members(data: bytes) -> list[bytes]:
    """Every gzip member found in `data`, inflated (the spool holds gzipped copies)."""
    members: list[bytes] = []
    start = data.find(b"\x1f\x8b\x08")
    while start >= 0:
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            plain = inflater.decompress(data[start:])
        except zlib.error:
            plain = b""
        if inflater.eof:
            members.append(plain)
            start = data.find(b"\x1f\x8b\x08", len(data) - len(inflater.unused_data))
        else:
            start = data.find(b"\x1f\x8b\x08", start + 1)
    return members


async def test_no_planted_secret_leaves_the_relay(
    aiohttp_server: Any, aiohttp_client: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    primary = SwitchableUpstream()  # down at first: everything is spooled
    shadow = RecordingUpstream()
    primary_server = await aiohttp_server(primary.app)
    shadow_server = await aiohttp_server(shadow.app)
    shadow_host = str(shadow_server.make_url("")).rstrip("/").split("//", 1)[1]
    spool_dir = tmp_path / "spool"
    policy = {
        "filters": {"error_types": ["ConnectionResetError"]},
        "sampling": [
            {
                "id": "try-checkout",
                "match": {"transaction": "/api/checkout"},
                "rate": 0.0,
                "mode": "dry_run",
            }
        ],
        "shadow": {"dsn": f"http://{'f' * 32}@{shadow_host}/99", "max_per_minute": 1000},
    }
    config = make_config(
        str(primary_server.make_url("")).rstrip("/"),
        policy=policy,
        spool={"path": str(spool_dir)},
        upstream={"outage_after": 1, "probe_max_s": 0.05, "client_reports_interval": 0.05},
        log={"level": "debug"},
    )
    relay: TestClient = await aiohttp_client(create_app(config))
    for path in ENVELOPES:
        resp = await relay.post("/api/42/envelope/", data=path.read_bytes(), headers=auth_header())
        assert resp.status == 200, (path.name, await resp.text())
    # Store endpoint and query auth too.
    store = (CORPUS / "error-payment.envelope").read_bytes().split(b"\n")[2]
    assert (await relay.post(f"/api/42/store/?sentry_key={KEY}", data=store)).status == 200

    spooled = b"".join(p.read_bytes() for p in spool_dir.rglob("*") if p.is_file())
    assert spooled, "the spool should hold the envelopes while the upstream is down"
    assert _leaks(spooled) == []
    inflated = _gzip_members(spooled)
    assert inflated, "the larger spooled copies are gzipped"
    assert all(_leaks(plain) == [] for plain in inflated)

    primary.down = False
    await primary.wait_for(len(ENVELOPES) - 2 + 1)  # healthz and ConnectionResetError are dropped
    await shadow.wait_for(3)  # healthz, ConnectionResetError, and the dry-run checkout copy
    await asyncio.sleep(0.2)

    received = [r.body for r in primary.received] + [r.body for r in shadow.received]
    for body in received:
        assert _leaks(body) == []
    shadow_events = [
        i for e in shadow.envelopes for i in e.items if i.type in ("event", "transaction")
    ]
    tags = [bytes(i.payload) for i in shadow_events]
    assert any(b"relay.dropped_reason" in t and b"filtered" in t for t in tags)
    assert any(b"relay.dry_run" in t for t in tags)
    assert all(r.path == "/api/99/envelope/" for r in shadow.received)

    formatter = JsonFormatter()
    logged = "\n".join(formatter.format(record) for record in caplog.records).encode()
    assert _leaks(logged) == []
    metrics = (await (await relay.get("/metrics")).text()).encode()
    assert _leaks(metrics) == []
