"""Every worker's metrics in one scrape: the merge of expositions, and the sockets."""

from __future__ import annotations

from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from relay.outcomes import Outcome, OutcomeKind, Reason
from relay.services.metrics import Metrics
from relay.services.peers import WORKERS, WORKERS_SCRAPED, WorkerPeers, merge_expositions


def worker_metrics(requests: int, items: int) -> str:
    m = Metrics()
    m.add_gauge_callback(*WORKERS, lambda: 3.0)  # as `create_app` registers them
    m.add_gauge_callback(*WORKERS_SCRAPED, lambda: 1.0)
    for _ in range(requests):
        m.count_request("envelope", 200, 0.003)
    for _ in range(items):
        m.emit(Outcome(OutcomeKind.ACCEPTED, Reason.FORWARDED, "error", 1, 42))
    m.outbox_size.set(requests)
    return m.render().decode()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_each_family_once_and_every_series_labelled_with_its_worker() -> None:
    zero, two = worker_metrics(3, 5), worker_metrics(4, 0)
    merged = merge_expositions([(0, zero), (2, two)], workers=3).decode()
    assert merged.count("# TYPE relay_requests_total counter") == 1
    assert merged.count("# TYPE relay_request_duration_seconds histogram") == 1
    got = samples(merged)
    key = ("relay_requests_total", (("endpoint", "envelope"), ("status", "200")))
    assert got[(key[0], (*key[1], ("worker", "0")))] == 3
    assert got[(key[0], (*key[1], ("worker", "2")))] == 4
    items = ("relay_items_total", (("category", "error"), ("outcome", "accepted")))
    assert got[(items[0], (*items[1], ("reason", "forwarded"), ("worker", "0")))] == 5
    assert got[("relay_outbox_size", (("worker", "2"),))] == 4
    assert got[("relay_workers", ())] == 3 and got[("relay_workers_scraped", ())] == 2
    # Each worker's view of itself is replaced by the scrape's: one sample each.
    assert [k for k in got if k[0].startswith("relay_workers")] == [
        ("relay_workers", ()),
        ("relay_workers_scraped", ()),
    ]
    # Nothing else lost or invented: each worker's own samples, each with its label.
    for index, text in ((0, zero), (2, two)):
        for (name, labels), value in samples(text).items():
            if name.startswith("relay_workers"):
                continue
            assert got[(name, tuple(sorted((*labels, ("worker", str(index))))))] == value
    buckets = [
        s
        for f in text_string_to_metric_families(merged)
        if f.name == "relay_request_duration_seconds"
        for s in f.samples
        if s.name.endswith("_bucket") and s.labels["le"] == "+Inf"
    ]
    assert sorted((s.labels["worker"], s.value) for s in buckets) == [("0", 3.0), ("2", 4.0)]


async def test_a_worker_answers_for_the_others_it_reaches(tmp_path: Path) -> None:
    """Worker 0 serves its socket; worker 1 (scraped) includes it; worker 2 is down."""
    from aiohttp import web

    peers = [WorkerPeers(str(tmp_path), i, 3) for i in range(3)]

    async def render_zero() -> bytes:
        return worker_metrics(1, 0).encode()

    app = web.Application()
    (tmp_path / "worker-0.sock").write_text("stale")  # left by a previous process
    async with asynccontextmanager(peers[0].serving(render_zero))(app):
        merged = (await peers[1].gather(worker_metrics(2, 0).encode())).decode()
    got = samples(merged)
    key = ("relay_requests_total", (("endpoint", "envelope"), ("status", "200")))
    assert got[(key[0], (*key[1], ("worker", "0")))] == 1
    assert got[(key[0], (*key[1], ("worker", "1")))] == 2
    assert not any(("worker", "2") in labels for _, labels in got)
    assert got[("relay_workers_scraped", ())] == 2 and got[("relay_workers", ())] == 3


async def test_a_socket_that_cannot_be_served_leaves_the_worker_running(
    tmp_path: Path, caplog: Any
) -> None:
    """A directory whose socket path is too long for AF_UNIX (a long `$TMPDIR`): the worker
    goes on serving, and a scrape reaching another worker counts it as not scraped."""
    from aiohttp import web

    deep = tmp_path / ("d" * 100)
    deep.mkdir()
    peers = [WorkerPeers(str(deep), i, 2) for i in range(2)]

    async def render() -> bytes:
        return worker_metrics(1, 0).encode()

    async with asynccontextmanager(peers[0].serving(render))(web.Application()):
        assert "cannot serve its metrics socket" in caplog.text
        merged = (await peers[1].gather(worker_metrics(2, 0).encode())).decode()
    assert samples(merged)[("relay_workers_scraped", ())] == 1
