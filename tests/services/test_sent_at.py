"""An envelope that waited in the relay reaches the upstream with its `sent_at` moved by
the wait, so that Sentry does not take the wait for the SDK's clock drift."""

from __future__ import annotations

import gzip
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from relay.config import UpstreamConfig
from relay.outcomes import OutcomeLog
from relay.policy.targets import resolve_target
from relay.protocol.sent_at import shift_sent_at
from relay.services.forwarder import Forwarder
from relay.services.metrics import Metrics
from relay.services.outbox import MemoryOutbox, OutboxEntry
from relay.services.spool import DiskSpool
from relay.services.upstream_http import UpstreamHttp
from relay.services.upstream_limits import UpstreamLimits

BODY = (
    b'{"event_id":"' + b"a" * 32 + b'","sent_at":"2026-12-07T00:27:44.000Z","sdk":{"name":"x"}}\n'
    b'{"type":"event","length":2}\n{}\n'
)


def test_sent_at_moves_by_the_wait_and_nothing_else_changes() -> None:
    moved = shift_sent_at(BODY, 3600.5)
    assert moved is not None
    header, rest = moved.split(b"\n", 1)
    assert orjson.loads(header) == {
        "event_id": "a" * 32,
        "sent_at": "2026-12-07T01:27:44.500Z",
        "sdk": {"name": "x"},
    }
    assert rest == BODY.split(b"\n", 1)[1]
    offset = b'{"sent_at":"2026-12-07T01:00:00+01:00"}\n'
    assert orjson.loads(shift_sent_at(offset, 60) or b"")["sent_at"] == "2026-12-07T00:01:00.000Z"


@pytest.mark.parametrize(
    "header",
    [b"{}", b'{"sent_at":null}', b'{"sent_at":"yesterday"}', b"[1]", b"not json",
     b'{"sent_at":"9999-12-31T23:59:59Z"}'],
)  # fmt: skip
def test_nothing_to_move_gives_none(header: bytes) -> None:
    assert shift_sent_at(header + b'\n{"type":"event","length":2}\n{}\n', 10**9) is None


async def _forward(aiohttp_server: Any, entry_of: Any, outbox: Any) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []

    async def envelope(request: web.Request) -> web.Response:
        body = await request.read()  # inflated by aiohttp when it came gzipped
        seen.append(orjson.loads(body.split(b"\n", 1)[0]))
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/api/{project}/envelope/", envelope)
    server: TestServer = await aiohttp_server(app)
    url = str(server.make_url("")).rstrip("/")
    http = UpstreamHttp()
    try:
        forwarder = Forwarder(
            outbox, http, UpstreamConfig(url=url), UpstreamLimits(), OutcomeLog(), Metrics()
        )
        target = resolve_target(url, None, 42, "a" * 32)
        for entry in entry_of(target):
            await outbox.put(entry)
        forwarder.start()
        await forwarder.drain(5)
    finally:
        await http.close()
    return seen


@pytest.mark.parametrize("encoding", ["", "gzip"])
async def test_a_long_wait_moves_sent_at_a_short_one_does_not(
    aiohttp_server: Any, encoding: str
) -> None:
    body = gzip.compress(BODY) if encoding else BODY
    now = time.time()

    def entries(target: Any) -> list[OutboxEntry]:
        return [
            OutboxEntry(target, body, 42, [("error", 1)], encoding=encoding, received_at=ago)
            for ago in (now - 7200, now - 5)
        ]

    seen = await _forward(aiohttp_server, entries, MemoryOutbox(100, 10**6))
    late, prompt = (s["sent_at"] for s in seen)
    assert prompt == "2026-12-07T00:27:44.000Z"
    assert late.startswith("2026-12-07T02:27:4")  # two hours later, give or take the test


async def test_the_spool_keeps_when_an_envelope_was_accepted(
    aiohttp_server: Any, tmp_path: Path
) -> None:
    spool = DiskSpool(tmp_path / "spool", max_bytes=10**7, max_age=0, durable=False)
    await spool.open()
    try:
        accepted = time.time() - 3 * 3600

        def entries(target: Any) -> list[OutboxEntry]:
            return [OutboxEntry(target, BODY, 42, [("error", 1)], received_at=accepted)]

        seen = await _forward(aiohttp_server, entries, spool)
    finally:
        await spool.close()
    assert seen[0]["sent_at"].startswith("2026-12-07T03:27:4")
