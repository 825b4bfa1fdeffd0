"""What `relay_processing_backlog` counts while a shadow project mirrors drops.

The gauge counts envelopes answered and not yet scrubbed and queued (the backlog's jobs
and the large ones on the offload thread) and, as docs/operations.md says, large shadow
copies being built there. A small shadow copy is built in the request itself: mirroring
drops adds nothing to the gauge.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

import relay.services.shadow as shadow_module
from relay.app import create_app
from relay.keys import INGEST
from relay.protocol.envelope import Envelope, Item, parse_envelope
from relay.services.backlog import Backlog
from relay.services.offload import MIN_BYTES
from tests.support.corpus import CORPUS
from tests.support.relay import auth_header, make_config
from tests.support.upstream import RecordingUpstream

HEALTHZ = (CORPUS / "transaction-healthz.envelope").read_bytes()
CHECKOUT = (CORPUS / "transaction-checkout.envelope").read_bytes()
RESET = (CORPUS / "error-connection-reset.envelope").read_bytes()


async def _relay(
    aiohttp_client: Any, upstream_url: str, aiohttp_server: Any
) -> tuple[TestClient, RecordingUpstream]:
    """A relay that filters health checks and ConnectionResetError, mirrored to a shadow."""
    shadow = RecordingUpstream()
    host = str((await aiohttp_server(shadow.app)).make_url("")).rstrip("/").split("//", 1)[1]
    policy = {
        "shadow": {"dsn": f"http://{'e' * 32}@{host}/7"},
        "filters": {"error_types": ["ConnectionResetError"]},
    }
    client: TestClient = await aiohttp_client(create_app(make_config(upstream_url, policy=policy)))
    return client, shadow


async def _gauge(relay: TestClient) -> float:
    for line in (await (await relay.get("/metrics")).text()).splitlines():
        if line.startswith("relay_processing_backlog "):
            return float(line.split()[1])
    raise AssertionError("relay_processing_backlog not exported")


async def test_mirrored_drops_do_not_count_while_envelopes_wait(
    upstream_url: str, recorder: RecordingUpstream, aiohttp_client: Any, aiohttp_server: Any
) -> None:
    relay, shadow = await _relay(aiohttp_client, upstream_url, aiohttp_server)
    backlog: Backlog = relay.app[INGEST].backlog
    held: list[Callable[[], None]] = []
    backlog.push = held.append  # type: ignore[method-assign]
    for body in (HEALTHZ, RESET, CHECKOUT, HEALTHZ, CHECKOUT):
        resp = await relay.post("/api/42/envelope/", data=body, headers=auth_header())
        assert resp.status == 200
    # Three drops mirrored (their copies queued already), two envelopes kept.
    await shadow.wait_for(3)
    assert len(held) == 2
    # The kept envelopes wait in the backlog for a loop turn that has not come yet.
    backlog._jobs.extend(held)
    backlog._scheduled = True
    assert await _gauge(relay) == 2.0
    backlog.flush()
    assert await _gauge(relay) == 0.0
    await recorder.wait_for(2)
    assert len(shadow.envelopes) == 3


async def test_a_large_shadow_copy_being_built_counts_as_documented(
    upstream_url: str,
    recorder: RecordingUpstream,
    aiohttp_client: Any,
    aiohttp_server: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    relay, shadow = await _relay(aiohttp_client, upstream_url, aiohttp_server)
    gate = threading.Event()
    build = shadow_module._build

    def gated(*args: Any) -> Any:
        gate.wait(5.0)
        return build(*args)

    monkeypatch.setattr(shadow_module, "_build", gated)
    reset = parse_envelope(RESET)  # dropped by the filter, with a large log attached
    log = Item({"type": "attachment", "filename": "app.log"}, b"x" * MIN_BYTES)
    body = Envelope(reset.headers, [*reset.items, log]).serialize()
    assert (await relay.post("/api/42/envelope/", data=body, headers=auth_header())).status == 200
    try:
        assert await _gauge(relay) == 1.0  # nothing for the primary, one copy on the thread
    finally:
        gate.set()
    await shadow.wait_for(1)
    assert await _gauge(relay) == 0.0
    assert recorder.envelopes == []
