"""The forwarder's outcomes: one per category of every delivered or rejected entry."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer

from relay.config import UpstreamConfig
from relay.outcomes import Outcome, OutcomeKind, OutcomeLog, Reason
from relay.policy.targets import resolve_target
from relay.services.forwarder import Forwarder
from relay.services.metrics import Metrics
from relay.services.outbox import MemoryOutbox, OutboxEntry
from relay.services.upstream_http import UpstreamHttp
from relay.services.upstream_limits import UpstreamLimits


async def test_each_delivered_or_rejected_entry_gets_its_own_outcomes(
    aiohttp_server: Any,
) -> None:
    log, seen = await _forward(
        aiohttp_server,
        lambda project: (400 if project == "7" else 200, {}),
        [
            (42, [("transaction", 1), ("span", 3)]),
            (42, [("transaction", 1), ("span", 3)]),
            (43, [("transaction", 1), ("span", 3)]),
            (42, [("error", 1), ("attachment", 1234)]),
            (7, [("error", 1)]),
        ],
    )
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


async def test_a_redirect_is_not_followed_but_logged_and_retried(
    aiohttp_server: Any, caplog: Any
) -> None:
    moved = {"Location": "https://elsewhere.example.com/api/1/envelope/"}
    log, seen = await _forward(
        aiohttp_server,
        lambda project: (301, moved),
        [(42, [("error", 1)])],
        max_attempts=2,
        outage_after=100,
    )
    assert seen == ["42", "42"]  # two attempts, never a request to the new address
    assert log.outcomes == [Outcome(OutcomeKind.INTERNAL, Reason.SEND_FAILED, "error", 1, 42)]
    assert "answered 301 (a redirect)" in caplog.text


class _FlakyOutbox(MemoryOutbox):
    """Reading and marking done fail as a spool's file I/O can (too many open files, a
    read-only remount), a given number of times."""

    def __init__(self, get_failures: int, done_failures: int) -> None:
        super().__init__(100, 10**6)
        self.get_failures = get_failures
        self.done_failures = done_failures
        self.done_calls = 0

    async def get(self) -> OutboxEntry:
        if self.get_failures:
            self.get_failures -= 1
            raise OSError(24, "Too many open files")
        return await super().get()

    def done(self, entry: OutboxEntry) -> None:
        self.done_calls += 1
        super().done(entry)
        if self.done_failures:  # after its bookkeeping, as a spool's failed unlink
            self.done_failures -= 1
            raise PermissionError(13, "Permission denied")


async def test_outbox_errors_never_stop_the_forwarder(aiohttp_server: Any, caplog: Any) -> None:
    seen: list[bytes] = []

    async def envelope(request: web.Request) -> web.Response:
        seen.append(await request.read())
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/api/{project}/envelope/", envelope)
    server: TestServer = await aiohttp_server(app)
    url = str(server.make_url("")).rstrip("/")
    outbox = _FlakyOutbox(get_failures=3, done_failures=1)
    naps: list[float] = []

    async def nap(seconds: float) -> None:
        naps.append(seconds)

    http = UpstreamHttp()
    forwarder = Forwarder(
        outbox, http, UpstreamConfig(url=url), UpstreamLimits(), OutcomeLog(), Metrics(),
        sleep=nap, concurrency=1,
    )  # fmt: skip
    try:
        target = resolve_target(url, None, 42, "a" * 32)
        for n in range(2):
            outbox.put_nowait(OutboxEntry(target, b"envelope %d" % n, 42, [("error", 1)]))
        forwarder.start()
        await forwarder.drain(5)
    finally:
        await http.close()
    # Both delivered, in order, by the one task, which read again after each failure
    # (waiting longer each time) and went on after a failed `done`.
    assert seen == [b"envelope 0", b"envelope 1"]
    assert naps == [0.5, 1.0, 2.0]
    assert outbox.done_calls == 2 and outbox.pending == 0
    messages = [r.getMessage() for r in caplog.records]
    assert messages.count("cannot read the next queued envelope; trying again") == 3
    assert messages.count("could not mark a delivered envelope done in the outbox") == 1


async def _forward(
    aiohttp_server: Any,
    answer: Any,
    entries: list[tuple[int, list[tuple[str, int]]]],
    limits: UpstreamLimits | None = None,
    sdk: list[tuple[str, str]] | None = None,
    requests: list[dict[str, str]] | None = None,
    **config: Any,
) -> tuple[OutcomeLog, list[str]]:
    """Forward `entries` (project, quantities; with `sdk`, each entry's User-Agent and
    client) to an upstream answering `answer(project)`; the outcomes, and the projects the
    upstream was sent, in order (with `requests`, each request's headers are added to it)."""
    seen: list[str] = []

    async def envelope(request: web.Request) -> web.Response:
        project = request.match_info["project"]
        seen.append(project)
        if requests is not None:
            requests.append(dict(request.headers))
        await request.read()
        status, headers = answer(project)
        return web.Response(status=status, headers=headers, text="{}")

    app = web.Application()
    app.router.add_post("/api/{project}/envelope/", envelope)
    server: TestServer = await aiohttp_server(app)
    url = str(server.make_url("")).rstrip("/")
    outbox = MemoryOutbox(100, 10**6)
    log = OutcomeLog()
    http = UpstreamHttp()

    async def no_wait(_: float) -> None:
        await asyncio.sleep(0)

    try:
        forwarder = Forwarder(
            outbox,
            http,
            UpstreamConfig(url=url, **config),
            limits or UpstreamLimits(),
            log,
            Metrics(),
            sleep=no_wait,
            concurrency=1,
        )
        for n, (project, quantities) in enumerate(entries):
            target = resolve_target(url, None, project, "a" * 32)
            user_agent, client = sdk[n] if sdk else ("", "")
            outbox.put_nowait(
                OutboxEntry(
                    target, b"{}\n", project, quantities, user_agent=user_agent, client=client
                )
            )
        forwarder.start()
        await forwarder.drain(5)
    finally:
        await http.close()
    return log, seen


async def test_an_envelope_answered_500_every_time_is_given_up_on_and_holds_no_other(
    aiohttp_server: Any,
) -> None:
    # Its failures put the relay in an outage, where it is the probing entry: a probe the
    # upstream answers with a failure spends one of its attempts, so it is given up on and
    # the next entry probes, instead of it being sent forever with every other waiting.
    log, seen = await _forward(
        aiohttp_server,
        lambda project: (500 if project == "7" else 200, {}),
        [(7, [("error", 1)]), (42, [("error", 1)]), (43, [("error", 1)])],
        max_attempts=3,
        outage_after=2,
    )
    assert seen == ["7", "7", "7", "42", "43"]
    assert log.outcomes == [
        Outcome(OutcomeKind.INTERNAL, Reason.SEND_FAILED, "error", 1, 7),
        Outcome(OutcomeKind.ACCEPTED, Reason.FORWARDED, "error", 1, 42),
        Outcome(OutcomeKind.ACCEPTED, Reason.FORWARDED, "error", 1, 43),
    ]


async def test_entries_under_an_announced_limit_are_not_sent(aiohttp_server: Any) -> None:
    # After a 429 the queued entries whose every category is limited get `rate_limited`
    # without a request (as SDKs and Sentry's Relay do); the others are still sent.
    limited = {"X-Sentry-Rate-Limits": "60:error;attachment:key:quota_exceeded"}
    log, seen = await _forward(
        aiohttp_server,
        lambda project: (429, limited) if project == "7" else (200, {}),
        [
            (7, [("error", 1)]),
            (42, [("error", 1), ("attachment", 100)]),
            (43, [("transaction", 1), ("span", 2)]),
            (44, [("error", 1), ("transaction", 1)]),
            (45, []),
        ],
    )
    assert seen == ["7", "43", "44", "45"]
    assert log.outcomes == [
        Outcome(OutcomeKind.RATE_LIMITED, Reason.UPSTREAM_RATE_LIMITED, "error", 1, 7),
        Outcome(OutcomeKind.RATE_LIMITED, "quota_exceeded", "error", 1, 42),
        Outcome(OutcomeKind.RATE_LIMITED, "quota_exceeded", "attachment", 100, 42),
        Outcome(OutcomeKind.ACCEPTED, Reason.FORWARDED, "transaction", 1, 43),
        Outcome(OutcomeKind.ACCEPTED, Reason.FORWARDED, "span", 2, 43),
        Outcome(OutcomeKind.ACCEPTED, Reason.FORWARDED, "error", 1, 44),
        Outcome(OutcomeKind.ACCEPTED, Reason.FORWARDED, "transaction", 1, 44),
    ]


async def test_the_sdks_user_agent_and_client_are_forwarded(aiohttp_server: Any) -> None:
    # As Sentry's Relay forwards them: Sentry reads browsers from the User-Agent (CSP
    # reports, logs, spans). What the relay sends itself, or a value a header cannot
    # carry, names the relay.
    browser = "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0"
    sent: list[dict[str, str]] = []
    await _forward(
        aiohttp_server,
        lambda project: (200, {}),
        [(42, []), (42, []), (42, [])],
        sdk=[
            (browser, "sentry.javascript.browser/8.0.0"),
            ("", ""),
            ("x" * 600, "bad client, with a comma"),
        ],
        requests=sent,
    )
    relay = "sentry-relay-proxy/0.1"
    assert [h["User-Agent"] for h in sent] == [browser, relay, relay]
    assert [h["X-Sentry-Auth"].split("sentry_client=")[1].split(",")[0] for h in sent] == [
        "sentry.javascript.browser/8.0.0",
        relay,
        relay,
    ]
