"""The forwarder's outcomes: one per category of every delivered or rejected entry."""

from __future__ import annotations

from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer

from relay.config import UpstreamConfig
from relay.outcomes import Outcome, OutcomeKind, OutcomeLog, Reason
from relay.policy.targets import resolve_target
from relay.services.forwarder import Forwarder
from relay.services.metrics import Metrics
from relay.services.outbox import MemoryOutbox, OutboxEntry
from relay.services.upstream_limits import UpstreamLimits


async def test_each_delivered_or_rejected_entry_gets_its_own_outcomes(
    aiohttp_server: Any,
) -> None:
    seen: list[str] = []

    async def envelope(request: web.Request) -> web.Response:
        seen.append(request.match_info["project"])
        await request.read()
        return web.Response(status=400 if request.match_info["project"] == "7" else 200)

    app = web.Application()
    app.router.add_post("/api/{project}/envelope/", envelope)
    server: TestServer = await aiohttp_server(app)
    url = str(server.make_url("")).rstrip("/")
    outbox = MemoryOutbox(100, 10**6)
    log = OutcomeLog()
    async with aiohttp.ClientSession() as session:
        forwarder = Forwarder(
            outbox,
            session,
            UpstreamConfig(url=url),
            UpstreamLimits(),
            log,
            Metrics(),
            concurrency=1,
        )

        def entry(project: int, quantities: list[tuple[str, int]]) -> OutboxEntry:
            target = resolve_target(url, None, project, "a" * 32)
            return OutboxEntry(target, b"{}\n", project, quantities)

        for e in (
            entry(42, [("transaction", 1), ("span", 3)]),
            entry(42, [("transaction", 1), ("span", 3)]),
            entry(43, [("transaction", 1), ("span", 3)]),
            entry(42, [("error", 1), ("attachment", 1234)]),
            entry(7, [("error", 1)]),
        ):
            outbox.put_nowait(e)
        forwarder.start()
        await forwarder.drain(5)
    assert seen == ["42", "42", "43", "42", "7"]
    accepted = OutcomeKind.ACCEPTED, Reason.FORWARDED
    assert log.outcomes == [
        Outcome(*accepted, "transaction", 1, 42),
        Outcome(*accepted, "span", 3, 42),
        Outcome(*accepted, "transaction", 1, 42),
        Outcome(*accepted, "span", 3, 42),
        Outcome(*accepted, "transaction", 1, 43),
        Outcome(*accepted, "span", 3, 43),
        Outcome(*accepted, "error", 1, 42),
        Outcome(*accepted, "attachment", 1234, 42),
        Outcome(OutcomeKind.INVALID, Reason.UPSTREAM_REJECTED, "error", 1, 7),
    ]
