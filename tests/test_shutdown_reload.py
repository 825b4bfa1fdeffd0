"""Stopping and reloading real relay processes: what was answered 200 is delivered,
every request in flight is answered, a second signal does not cut the drain short,
and a reload says what it did and did not apply."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from tests.cli.test_processes import KEY, KEY2, base_config, envelope, post
from tests.support.process import RelayProcess
from tests.support.upstream import RecordingUpstream, Reply


def url_of(upstream: Any) -> str:
    return str(upstream[1].make_url("")).rstrip("/")


async def start(relay: RelayProcess, processes: list[RelayProcess]) -> RelayProcess:
    processes.append(relay)
    await asyncio.to_thread(relay.start)
    return relay


async def exit_code(relay: RelayProcess, timeout: float = 30) -> int:
    assert relay.proc is not None
    return await asyncio.to_thread(relay.proc.wait, timeout)


async def send(relay: RelayProcess, numbers: range) -> None:
    async with aiohttp.ClientSession() as session:
        statuses = await asyncio.gather(*(post(session, relay.url, envelope(n)) for n in numbers))
    assert set(statuses) == {200}


def event_ids(numbers: range) -> set[str]:
    return {f"{n:032x}" for n in numbers}


def delivered(recorder: RecordingUpstream) -> set[str]:
    return {e.event_id for e in recorder.envelopes if e.event_id}


def not_sent(exc: aiohttp.ClientError) -> bool:
    """The request did not reach the relay whole: the listener was closed, or a new
    connection that had not sent its request yet was closed as idle on SIGTERM (as
    documented). The relay cannot have accepted it, and the client knows it failed."""
    if isinstance(exc, aiohttp.ClientConnectorError):
        return True
    return isinstance(exc, aiohttp.ClientOSError) and "Can not write request" in str(exc)


def slow_relay(tmp_path: Path, upstream: Any, **extra: Any) -> RelayProcess:
    """A relay whose upstream takes 0.1 s per envelope, one at a time: 20 envelopes
    take 2 s to drain."""
    config = base_config(url_of(upstream), **extra)
    config["upstream"]["concurrency"] = 1
    return RelayProcess(tmp_path, config)


@pytest.mark.parametrize("second", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
async def test_a_second_signal_while_draining_does_not_end_the_drain(
    tmp_path: Path,
    upstream: Any,
    recorder: RecordingUpstream,
    processes: list[RelayProcess],
    second: signal.Signals,
) -> None:
    """systemd signals every process of its unit, a terminal's Ctrl-C the whole process
    group, and a reload may come at any time: none of it may cut the drain short (the
    envelopes answered 200 and still in memory would be lost)."""
    recorder.answer(*[Reply(200, delay=0.1)] * 100)
    relay = await start(slow_relay(tmp_path, upstream), processes)
    await send(relay, range(20))
    relay.signal(signal.SIGTERM)
    await asyncio.sleep(0.3)
    relay.signal(second)
    assert await exit_code(relay) == 0
    assert delivered(recorder) == event_ids(range(20))
    if second != signal.SIGHUP:
        assert f"{second.name} while stopping: the drain goes on" in relay.log.read_text()


async def test_the_disk_spool_drains_to_the_upstream_on_sigterm(
    tmp_path: Path, upstream: Any, recorder: RecordingUpstream, processes: list[RelayProcess]
) -> None:
    """As the docs promise: what is spooled goes upstream within `shutdown_timeout` (a
    pod's `emptyDir` spool is gone once the pod is deleted), not only at the next start."""
    recorder.answer(*[Reply(200, delay=0.1)] * 100)
    spool = {"path": str(tmp_path / "spool"), "durable": False}
    relay = await start(slow_relay(tmp_path, upstream, spool=spool), processes)
    await send(relay, range(20))
    relay.signal(signal.SIGTERM)
    assert await exit_code(relay) == 0
    assert delivered(recorder) == event_ids(range(20))
    # Nothing is left to send again at the next start.
    recorder.received.clear()
    await asyncio.to_thread(relay.start)
    await asyncio.sleep(0.5)
    assert await asyncio.to_thread(relay.stop) == 0
    assert not recorder.envelopes


async def test_drops_made_while_draining_are_reported_upstream_before_exit(
    tmp_path: Path, upstream: Any, recorder: RecordingUpstream, processes: list[RelayProcess]
) -> None:
    """An envelope the upstream keeps failing during the drain is dropped (`send_failed`);
    that drop is in a client report the upstream gets before the relay exits."""
    recorder.answer(Reply(500, delay=0.3), Reply(500, delay=0.3))
    config = base_config(url_of(upstream))
    config["upstream"].update(concurrency=1, max_attempts=2, outage_after=10)
    relay = await start(RelayProcess(tmp_path, config), processes)
    await send(relay, range(1))
    await asyncio.sleep(0.1)  # its first attempt is under way
    relay.signal(signal.SIGTERM)
    assert await exit_code(relay) == 0
    reports = [orjson.loads(item.payload) for item in recorder.items("client_report")]
    lines = [line for report in reports for line in report["discarded_events"]]
    assert lines == [{"reason": "queue_overflow", "category": "error", "quantity": 1}]


async def test_ctrl_c_under_load_with_workers_answers_every_request_and_delivers_it(
    tmp_path: Path, upstream: Any, recorder: RecordingUpstream, processes: list[RelayProcess]
) -> None:
    """`workers: 2` in a terminal: Ctrl-C sends SIGINT to the supervisor and to both
    workers, then the supervisor sends them SIGTERM. Every request sent is answered (or
    its connection refused), and every envelope answered 200 reaches the upstream."""
    recorder.answer(*[Reply(200, delay=0.02)] * 10_000)
    config = base_config(url_of(upstream), workers=2)
    config["upstream"]["concurrency"] = 2
    relay = await start(RelayProcess(tmp_path, config), processes)
    async with asyncio.timeout(10):
        while len(relay.children()) < 2:
            await asyncio.sleep(0.05)
    await asyncio.sleep(1)  # both workers listening

    def stop_all() -> None:
        assert relay.proc is not None
        for pid in [relay.proc.pid, *relay.children()]:
            os.kill(pid, signal.SIGINT)

    await _stopped_under_load(relay, recorder, envelope, stop_all)


async def test_sigterm_under_load_answers_every_request_and_delivers_it(
    tmp_path: Path, upstream: Any, recorder: RecordingUpstream, processes: list[RelayProcess]
) -> None:
    """One process, small envelopes on the fast path and large ones (aiohttp's), SIGTERM
    in the middle: each request is answered 200 or 503, each 200 is delivered."""
    recorder.answer(*[Reply(200, delay=0.02)] * 10_000)
    config = base_config(url_of(upstream))
    config["upstream"]["concurrency"] = 2
    relay = await start(RelayProcess(tmp_path, config), processes)

    def body(n: int) -> bytes:
        if n % 4:
            return envelope(n)
        return (
            orjson.dumps({"event_id": f"{n:032x}"})
            + b'\n{"type":"event"}\n'
            + orjson.dumps({"message": f"m{n}", "extra": {"pad": "x" * 100_000}})
            + b"\n"
        )

    await _stopped_under_load(relay, recorder, body, lambda: relay.signal(signal.SIGTERM))


async def _stopped_under_load(
    relay: RelayProcess,
    recorder: RecordingUpstream,
    body: Callable[[int], bytes],
    stop_relay: Callable[[], None],
) -> None:
    """16 senders post `body(n)` until the relay, stopped by `stop_relay` a second in,
    has exited: it exits 0, every request sent is answered 200 or 503 (or its connection
    refused), and every envelope answered 200 reaches the upstream."""
    answered: dict[str, int] = {}
    unanswered: list[str] = []
    stop = asyncio.Event()

    async def sender(first: int) -> None:
        n = first
        connector = aiohttp.TCPConnector(force_close=True)  # no reuse of a closed connection
        async with aiohttp.ClientSession(connector=connector) as session:
            while not stop.is_set():
                n += 1
                try:
                    answered[f"{n:032x}"] = await post(session, relay.url, body(n))
                except aiohttp.ClientError as exc:
                    if not_sent(exc):
                        await asyncio.sleep(0.01)
                    else:
                        unanswered.append(f"{n}: {exc!r}")

    senders = [asyncio.create_task(sender(i * 100_000)) for i in range(16)]
    await asyncio.sleep(1)
    stop_relay()
    code = await exit_code(relay)
    stop.set()
    await asyncio.gather(*senders)
    assert code == 0
    assert not unanswered
    assert set(answered.values()) <= {200, 503}
    accepted = {event_id for event_id, status in answered.items() if status == 200}
    assert len(accepted) > 50
    assert accepted <= delivered(recorder)


async def test_a_reload_sent_while_the_relay_starts_is_applied_once_it_serves(
    tmp_path: Path, upstream_url: str, processes: list[RelayProcess]
) -> None:
    """SIGHUP's default action ends a process: a `relay reload` sent just after a start
    must neither stop the relay nor be lost."""
    relay = RelayProcess(tmp_path, base_config(upstream_url))
    processes.append(relay)
    starting = asyncio.create_task(asyncio.to_thread(relay.start))
    deadline = time.monotonic() + 20
    while "example DSN" not in (relay.log.read_text() if relay.log.exists() else ""):
        assert time.monotonic() < deadline and not starting.done()
        await asyncio.sleep(0.001)
    # The config was loaded; a new one arrives, and with it the reload.
    config = base_config(upstream_url)
    config["projects"] = [{"id": 42, "keys": [KEY, KEY2]}]
    relay.write_config({**config, "listen": {"host": "127.0.0.1", "port": relay.port}})
    relay.signal(signal.SIGHUP)
    await starting
    async with aiohttp.ClientSession() as session:
        for _ in range(100):
            if await post(session, relay.url, envelope(1), KEY2) == 200:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the reload was lost")
    assert await asyncio.to_thread(relay.stop) == 0
