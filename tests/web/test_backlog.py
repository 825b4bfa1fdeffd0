"""Answer first, scrub after: the steps the answer does not depend on run from the backlog.

With the memory outbox the SDK gets its answer once the envelope's items are decided
and room is reserved; fingerprinting, scrubbing and queueing follow on a later loop turn.
With the disk spool they run before the answer, so that an answered envelope is on disk.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient

from relay.keys import INGEST
from relay.processing import pipeline
from relay.services.backlog import Backlog
from tests.support.relay import auth_header
from tests.support.upstream import RecordingUpstream, Reply

SECRET = "4111 1111 1111 1111"


def event(n: int) -> bytes:
    return (
        orjson.dumps({"event_id": f"{n:032x}"})
        + b'\n{"type":"event"}\n'
        + orjson.dumps({"message": f"boom {n}", "extra": {"card": SECRET}})
        + b"\n"
    )


def hold(relay: TestClient) -> list[Callable[[], None]]:
    """Keep the relay's backlog jobs from running: the test runs them (or shuts down)."""
    backlog: Backlog = relay.app[INGEST].backlog
    held: list[Callable[[], None]] = []
    backlog.push = held.append  # type: ignore[method-assign]
    return held


async def test_the_answer_comes_before_scrubbing_and_the_room_is_reserved(
    relay: TestClient, recorder: RecordingUpstream
) -> None:
    held = hold(relay)
    outbox = relay.app[INGEST].outbox
    resp = await relay.post("/api/42/envelope/", data=event(1), headers=auth_header())
    assert resp.status == 200
    assert (await resp.json())["id"] == f"{1:032x}"
    assert len(held) == 1 and outbox.reserved == 1 and len(outbox) == 0
    assert recorder.envelopes == []
    held.pop()()
    assert outbox.reserved == 0
    await recorder.wait_for(1)
    forwarded = recorder.envelopes[0].items[0].payload
    assert SECRET.encode() not in forwarded and b"boom 1" in forwarded


async def test_the_room_reserved_is_for_the_items_kept(
    relay_factory: Any, recorder: RecordingUpstream
) -> None:
    """Items dropped before the answer (here by `attachments: drop`) take no room in the
    outbox while the envelope waits in the backlog."""
    relay = await relay_factory(policy={"scrubbing": {"attachments": "drop"}})
    held = hold(relay)
    outbox = relay.app[INGEST].outbox
    body = event(1) + b'{"type":"attachment","length":100000,"filename":"a.bin"}\n'
    body += b"x" * 100_000 + b"\n"
    resp = await relay.post("/api/42/envelope/", data=body, headers=auth_header())
    assert resp.status == 200
    assert outbox.reserved == 1
    assert 0 < outbox.reserved_bytes < 1_000
    held.pop()()
    assert outbox.reserved == 0 and outbox.reserved_bytes == 0
    await recorder.wait_for(1)
    assert [i.type for i in recorder.envelopes[0].items] == ["event"]


async def test_a_failure_after_the_answer_drops_the_items_with_an_outcome(
    relay: TestClient, recorder: RecordingUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug in processing")

    with monkeypatch.context() as patch:
        patch.setattr(pipeline, "finish", broken)
        resp = await relay.post("/api/42/envelope/", data=event(1), headers=auth_header())
        assert resp.status == 200
        metrics = await (await relay.get("/metrics")).text()
    assert (
        'relay_items_total{category="error",outcome="internal",reason="processing_failed"} 1.0'
        in metrics
    )
    assert relay.app[INGEST].outbox.reserved == 0
    # The relay goes on as before.
    resp = await relay.post("/api/42/envelope/", data=event(2), headers=auth_header())
    assert resp.status == 200
    await recorder.wait_for(1)
    assert [e.headers["event_id"] for e in recorder.envelopes] == [f"{2:032x}"]


async def test_shutdown_forwards_what_was_answered_but_not_yet_processed(
    relay_factory: Any, recorder: RecordingUpstream
) -> None:
    relay: TestClient = await relay_factory()
    held = hold(relay)
    for n in range(5):
        resp = await relay.post("/api/42/envelope/", data=event(n), headers=auth_header())
        assert resp.status == 200
    backlog: Backlog = relay.app[INGEST].backlog
    for job in held:  # back in the backlog, still waiting for a loop turn
        backlog._jobs.append(job)
    backlog._scheduled = True  # ... that never comes before shutdown
    await relay.close()
    assert len(backlog) == 0
    await recorder.wait_for(5)
    assert sorted(e.headers["event_id"] for e in recorder.envelopes) == [
        f"{n:032x}" for n in range(5)
    ]
    assert all(SECRET.encode() not in e.items[0].payload for e in recorder.envelopes)


async def test_the_backlog_is_a_gauge(relay: TestClient) -> None:
    metrics = await (await relay.get("/metrics")).text()
    assert "relay_processing_backlog 0.0" in metrics


async def test_with_the_spool_the_envelope_is_on_disk_before_the_answer(
    relay_factory: Any, recorder: RecordingUpstream, tmp_path: Path
) -> None:
    recorder.answer(Reply(status=503))  # keep it on disk: the upstream refuses for now
    relay: TestClient = await relay_factory(spool={"path": str(tmp_path / "spool")})
    assert relay.app[INGEST].backlog is None
    resp = await relay.post("/api/42/envelope/", data=event(1), headers=auth_header())
    assert resp.status == 200
    stored = b"".join(p.read_bytes() for p in (tmp_path / "spool").rglob("*") if p.is_file())
    assert f"{1:032x}".encode() in stored and SECRET.encode() not in stored
    metrics = await (await relay.get("/metrics")).text()
    assert "relay_processing_backlog 0.0" in metrics  # exported, for dashboards
