"""Real relay processes: SIGHUP reload, workers under a supervisor, SIGKILL under load."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from tests.support.process import RelayProcess
from tests.support.upstream import RecordingUpstream, Reply

KEY = "abc123def4567890abc123def4567890"
KEY2 = "22222222222222222222222222222222"


def envelope(n: int) -> bytes:
    event_id = f"{n:032x}"
    return (
        orjson.dumps({"event_id": event_id})
        + b'\n{"type":"event"}\n'
        + orjson.dumps({"message": f"m{n}"})
        + b"\n"
    )


async def post(session: aiohttp.ClientSession, url: str, body: bytes, key: str = KEY) -> int:
    async with session.post(f"{url}/api/42/envelope/?sentry_key={key}", data=body) as resp:
        await resp.read()
        return resp.status


def base_config(upstream_url: str, **extra: Any) -> dict[str, Any]:
    return {
        "upstream": {"url": upstream_url, "retry_base_s": 0.05, "retry_max_s": 0.2},
        "projects": [{"id": 42, "keys": [KEY]}],
        "shutdown_timeout": 5,
        **extra,
    }


async def test_sighup_reload_applies_good_config_and_keeps_old_on_bad(
    tmp_path: Path, upstream_url: str, processes: list[RelayProcess]
) -> None:
    relay = RelayProcess(tmp_path, base_config(upstream_url))
    processes.append(relay)
    await asyncio.to_thread(relay.start)
    async with aiohttp.ClientSession() as session:
        assert await post(session, relay.url, envelope(1), KEY2) == 403
        config = base_config(upstream_url)
        config["projects"] = [{"id": 42, "keys": [KEY, KEY2]}]
        relay.write_config({**config, "listen": {"host": "127.0.0.1", "port": relay.port}})
        relay.signal(signal.SIGHUP)
        for _ in range(100):
            if await post(session, relay.url, envelope(2), KEY2) == 200:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("reload did not apply")
        relay.config_path.write_text("projects: [{id: 42, keys: oops}]\nlisten: {port: 1}\n")
        relay.signal(signal.SIGHUP)
        await asyncio.sleep(0.5)
        assert await post(session, relay.url, envelope(3), KEY2) == 200
        async with session.get(f"{relay.url}/metrics") as resp:
            text = await resp.text()
        assert 'relay_config_reloads_total{result="ok"} 1.0' in text
        assert 'relay_config_reloads_total{result="invalid"} 1.0' in text
    assert relay.stop() == 0


async def scrape(url: str) -> tuple[dict[str, float], float]:
    """`relay_requests_total{endpoint="envelope",status="200"}` by worker, and
    `relay_workers_scraped`, of one scrape on a new connection (any worker may answer)."""
    from prometheus_client.parser import text_string_to_metric_families

    connector = aiohttp.TCPConnector(force_close=True)
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.get(f"{url}/metrics") as resp,
    ):
        assert resp.status == 200
        text = await resp.text()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert [(s.labels, s.value) for s in families["relay_workers"].samples] == [({}, 2.0)]
    per_worker = {
        s.labels["worker"]: s.value
        for s in families["relay_requests"].samples
        if s.labels.get("endpoint") == "envelope" and s.labels.get("status") == "200"
    }
    return per_worker, families["relay_workers_scraped"].samples[0].value


async def test_workers_share_the_port_and_a_killed_worker_is_restarted(
    tmp_path: Path, upstream_url: str, recorder: RecordingUpstream, processes: list[RelayProcess]
) -> None:
    relay = RelayProcess(tmp_path, base_config(upstream_url, workers=2))
    processes.append(relay)
    await asyncio.to_thread(relay.start)
    async with asyncio.timeout(10):
        while len(relay.children()) < 2:
            await asyncio.sleep(0.05)
    first = relay.children()
    async with asyncio.timeout(15):  # both workers listening: a scrape reaches both
        while (await scrape(relay.url))[1] < 2:
            await asyncio.sleep(0.05)
    async with aiohttp.ClientSession() as session:
        statuses = await asyncio.gather(*(post(session, relay.url, envelope(n)) for n in range(40)))
        assert set(statuses) == {200}
        await recorder.wait_for(40)
        # Whichever worker a scrape reaches answers for both: the counts add up to 40.
        for _ in range(6):
            per_worker, scraped = await scrape(relay.url)
            assert scraped == 2 and sum(per_worker.values()) == 40
            assert set(per_worker) <= {"0", "1"}
        os.kill(first[0], signal.SIGKILL)
        async with asyncio.timeout(15):
            while True:
                kids = relay.children()
                if len(kids) == 2 and first[0] not in kids:
                    break
                await asyncio.sleep(0.05)
        statuses = await asyncio.gather(
            *(post(session, relay.url, envelope(n)) for n in range(100, 140))
        )
        assert set(statuses) == {200}
        async with asyncio.timeout(15):  # the new worker serves its socket in turn
            while (await scrape(relay.url))[1] < 2:
                await asyncio.sleep(0.05)
    await recorder.wait_for(80)
    assert relay.stop() == 0


async def test_sigkill_under_load_loses_no_acknowledged_envelope(
    tmp_path: Path, upstream: Any, recorder: RecordingUpstream, processes: list[RelayProcess]
) -> None:
    upstream_url = str(upstream[1].make_url("")).rstrip("/")
    recorder.answer(*[Reply(200, delay=0.02)] * 1000)
    config = base_config(upstream_url, spool={"path": str(tmp_path / "spool"), "durable": True})
    config["upstream"]["concurrency"] = 2
    relay = RelayProcess(tmp_path, config)
    processes.append(relay)
    await asyncio.to_thread(relay.start)
    acknowledged: set[str] = set()

    async def send(session: aiohttp.ClientSession, n: int) -> None:
        try:
            if await post(session, relay.url, envelope(n)) == 200:
                acknowledged.add(f"{n:032x}")
        except (TimeoutError, aiohttp.ClientError):
            pass

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        tasks = [asyncio.create_task(send(session, n)) for n in range(400)]
        deadline = time.monotonic() + 10
        while len(acknowledged) < 100 and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        relay.kill()
        await asyncio.gather(*tasks)
    assert len(acknowledged) >= 100
    await asyncio.to_thread(relay.start)
    async with asyncio.timeout(30):
        while not acknowledged <= {e.event_id for e in recorder.envelopes}:
            await asyncio.sleep(0.1)
    assert relay.stop() == 0


@pytest.mark.parametrize("ratio", [0, None])
async def test_two_relays_sharing_redis_accept_exactly_the_limit(
    tmp_path: Path,
    upstream_url: str,
    recorder: RecordingUpstream,
    redis_server: Any,
    processes: list[RelayProcess],
    ratio: float | None,
) -> None:
    """Without the quota cache, exactly the limit. With it (the default, `reserve`), never
    more; while the burst lasts, one relay may refuse what the other still holds (at most
    a tenth of the room each, the default ratio), as documented."""
    limit = 25
    redis: dict[str, Any] = {"url": redis_server.url, "prefix": f"exact{ratio}"}
    if ratio is not None:
        redis["quota_cache_ratio"] = ratio
    policy = {
        "quotas": [
            {
                "id": "shared",
                "categories": ["error"],
                "scope": "organization",
                "limit": limit,
                "window": 3600,
            }
        ]
    }
    relays = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        relay = RelayProcess(
            tmp_path / name,
            base_config(upstream_url, policy=policy, redis=redis),
        )
        processes.append(relay)
        relays.append(relay)
    await asyncio.gather(*(asyncio.to_thread(r.start) for r in relays))
    async with aiohttp.ClientSession() as session:
        statuses = await asyncio.gather(
            *(post(session, relays[n % 2].url, envelope(n)) for n in range(120))
        )
    accepted = statuses.count(200)
    if ratio == 0:
        assert accepted == limit
    else:
        assert limit - 2 * int(limit * 0.1) <= accepted <= limit
    assert statuses.count(429) == 120 - accepted
    await recorder.wait_for(accepted)
    # relay usage reads the shared counters from Redis.
    from relay.cli import main

    config_path = relays[0].config_path
    assert await asyncio.to_thread(main, ["usage", "--config", str(config_path)]) == 0


async def test_gc_is_tuned_for_serving() -> None:
    """Startup objects leave the collector's generations; young collections run rarely."""
    import gc

    from relay.server import GC_GEN0_THRESHOLD, _tune_gc

    before = gc.get_threshold()
    try:
        await _tune_gc(None)  # type: ignore[arg-type]
        assert gc.get_threshold()[0] == GC_GEN0_THRESHOLD
        assert gc.get_freeze_count() > 1000
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def test_the_listener_gets_the_configured_backlog(monkeypatch: pytest.MonkeyPatch) -> None:
    """1,024 pending connections by default, not aiohttp's 128: a burst of connections
    is queued by the kernel, not dropped into SYN retries."""
    from relay import server
    from relay.config import parse_config

    seen: dict[str, Any] = {}
    monkeypatch.setattr(server, "run_app", lambda app, **kw: seen.update(kw))
    monkeypatch.setattr(server, "_install_uvloop", lambda: None)
    server.serve_worker(parse_config({}, env={}), config_path=None, worker=None)
    assert seen["backlog"] == 1024
    assert seen["keepalive_timeout"] == 75.0
    config = parse_config({"listen": {"backlog": 4096, "keepalive_timeout_s": "30s"}}, env={})
    server.serve_worker(config, config_path=None, worker=None)
    assert seen["backlog"] == 4096
    assert seen["keepalive_timeout"] == 30.0


async def test_a_client_slow_to_send_its_headers_is_cut_off_at_the_keepalive_timeout(
    tmp_path: Path, upstream_url: str, processes: list[RelayProcess]
) -> None:
    """A connection that trickles its request line and headers (slowloris) is closed
    `listen.keepalive_timeout_s` after it opened, however steadily it sends."""
    relay = RelayProcess(tmp_path, base_config(upstream_url, listen={"keepalive_timeout_s": 1}))
    processes.append(relay)
    await asyncio.to_thread(relay.start)
    reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
    opened = time.monotonic()
    writer.write(b"POST /api/42/envelope/ HTTP/1.1\r\nHost: relay\r\n")
    closed_after: float | None = None
    for n in range(40):  # one header line every 0.1 s: 4 s if never cut off
        writer.write(b"X-Slow-%d: x\r\n" % n)
        try:
            await writer.drain()
            got = await asyncio.wait_for(reader.read(1024), 0.1)
        except TimeoutError:
            continue
        except ConnectionError:
            got = b""
        if not got:
            closed_after = time.monotonic() - opened
            break
    writer.close()
    assert closed_after is not None, "the relay kept a slow-header connection for 4 s"
    assert 0.9 < closed_after < 3.0
    # An ordinary client on its own connection is served as usual.
    async with aiohttp.ClientSession() as session:
        assert await post(session, relay.url, envelope(1)) == 200
    assert relay.stop() == 0


async def test_fast_path_and_hand_over_on_the_served_loop(
    tmp_path: Path, upstream_url: str, recorder: RecordingUpstream, processes: list[RelayProcess]
) -> None:
    """The relay as it runs (uvloop): envelopes on the fast path, then a request it hands
    to aiohttp on the same connection, then another envelope there; an idle connection
    does not hold up SIGTERM."""
    relay = RelayProcess(tmp_path, base_config(upstream_url))
    processes.append(relay)
    await asyncio.to_thread(relay.start)
    reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)

    def post_raw(n: int) -> bytes:
        body = envelope(n)
        return (
            b"POST /api/42/envelope/?sentry_key=%s HTTP/1.1\r\nHost: relay\r\n"
            b"Content-Length: %d\r\n\r\n" % (KEY.encode(), len(body))
        ) + body

    writer.write(post_raw(1) + b"GET /healthz HTTP/1.1\r\nHost: relay\r\n\r\n" + post_raw(2))
    answers = []
    for _ in range(3):
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        answers.append(head.split(b"\r\n")[0] + b" " + await reader.readexactly(length))
    assert answers[0] == b'HTTP/1.1 200 OK {"id":"%032x"}' % 1
    assert answers[1].startswith(b"HTTP/1.1 200 OK")
    assert answers[2] == b'HTTP/1.1 200 OK {"id":"%032x"}' % 2
    await recorder.wait_for(2)
    _, idle = await asyncio.open_connection("127.0.0.1", relay.port)
    started = time.monotonic()
    assert await asyncio.to_thread(relay.stop) == 0
    assert time.monotonic() - started < 4
    writer.close()
    idle.close()


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("cause", ["port taken", "spool under a file"])
def test_a_relay_that_cannot_start_says_why_and_exits_3(
    tmp_path: Path, upstream_url: str, processes: list[RelayProcess], workers: int, cause: str
) -> None:
    """Not a traceback, nor (with workers) a supervisor restarting workers forever: one
    line saying what failed, every process gone, exit status 3."""
    extra: dict[str, Any] = {"workers": workers}
    if cause == "spool under a file":
        (tmp_path / "a-file").write_text("")
        extra["spool"] = {"path": str(tmp_path / "a-file" / "spool")}
    relay = RelayProcess(tmp_path, base_config(upstream_url, **extra))
    processes.append(relay)
    holder = socket.socket()
    try:
        if cause == "port taken":
            holder.bind(("127.0.0.1", relay.port))
            holder.listen()
        with pytest.raises(AssertionError, match="relay exited"):
            relay.start()
        assert relay.proc is not None
        assert relay.proc.wait(timeout=20) == 3
    finally:
        holder.close()
    log = relay.log.read_text()
    assert "Traceback" not in log
    expected = "cannot listen on 127.0.0.1" if cause == "port taken" else "spool"
    who = "the relay" if workers == 1 else "worker"
    assert any(
        who in line and "could not start:" in line and expected in line for line in log.splitlines()
    ), log
    if workers > 1:
        assert "stopping the relay" in log
        assert log.count("started (pid") == 2  # no restarts
