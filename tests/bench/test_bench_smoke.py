"""The benchmark harness runs end to end: floor and one scenario under wrk, then at a fixed rate."""

from __future__ import annotations

import asyncio
import gzip
import json
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))

from procs import growth_per_minute  # noqa: E402
from run import (  # noqa: E402
    add_ratios,
    combine_latency_rounds,
    combine_rounds,
    parse_args,
    targets,
    with_cores,
)
from upstream import peek  # noqa: E402

METRICS = {
    "envelopes_per_s",
    "sustained_per_s",
    "latency_ms",
    "cpu_s_per_1000",
    "peak_rss_mb",
    "non_200",
    "errors",
    "loadgen",
    "rss_mb",
    "rss_t_s",
    "rss_start_mb",
    "rss_end_mb",
    "rss_peak_mb",
    "rss_growth_mb_per_min",
}

#: Two seconds of the `none` scenario and of the floor under wrk, then two rounds of one
#: second of each at a fixed rate under bench/loadgen.py's httptools client.
ARGS = ["--duration", "2", "--warmup", "0.5", "--connections", "8", "--loadgen", "wrk"]
ARGS += ["--scenarios", "none", "--rate-scenarios", "none", "--rate-duration", "1"]
ARGS += ["--rate-rounds", "2"]


def _check_rss(row: dict[str, object]) -> None:
    series = row["rss_mb"]
    assert isinstance(series, list) and len(series) >= 2
    assert len(row["rss_t_s"]) == len(series)  # type: ignore[arg-type]
    assert all(isinstance(mb, float) and mb > 10 for mb in series)
    assert row["rss_start_mb"] == series[0] and row["rss_end_mb"] == series[-1]
    assert row["rss_peak_mb"] == max(series)


def test_harness_smoke(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "run.py"), *ARGS, "--json", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "load generator: wrk" in proc.stdout
    results = json.loads(out.read_text())
    assert set(results) >= {"meta", "floor", "scenarios", "targets", "fixed_rate"}
    assert results["meta"]["loadgen"].startswith("wrk")
    floor = results["floor"]
    assert set(floor) >= METRICS
    assert floor["loadgen"] == "wrk"
    assert floor["envelopes_per_s"] > 0
    assert floor["non_200"] == {} and floor["errors"] == {}
    _check_rss(floor)
    (row,) = results["scenarios"]
    assert row["name"] == "none"
    assert row["status"] == "ok", row.get("reason")
    assert set(row) >= METRICS | {"vs_floor"}
    assert row["loadgen"] == "wrk"
    assert row["envelopes_per_s"] > 0 and row["sustained_per_s"] > 0
    # Everything answered reaches the upstream under `none`, in-flight requests included.
    assert 0.97 <= row["delivery_fraction"] <= 1.03
    assert set(row["latency_ms"]) >= {"p50", "p99", "p999"}
    assert row["cpu_s_per_1000"] > 0 and row["peak_rss_mb"] > 0
    assert row["vs_floor"]["throughput"] > 0
    _check_rss(row)
    assert sum(row["mix_sent"].values()) == row["sent"]
    fixed = results["fixed_rate"]
    (rate_row,) = fixed["scenarios"]
    assert fixed["floor"]["loadgen"] == "httptools" and rate_row["loadgen"] == "httptools"
    assert rate_row["status"] == "ok", rate_row.get("reason")
    assert rate_row["envelopes_per_s"] > 0
    assert fixed["rounds"] == 2 and len(rate_row["rounds"]) == 2
    assert fixed["floor"]["latency_ms"]["p99"] in [r["p99_ms"] for r in fixed["floor"]["rounds"]]
    assert "p99 x floor per round" in proc.stdout


def test_soak_preset() -> None:
    args = parse_args(["--soak"])
    assert (args.scenarios, args.rate_scenarios) == ("default", "")
    assert (args.connections, args.duration, args.no_floor) == (1000, 300.0, True)
    assert parse_args(["--soak", "--duration", "20"]).duration == 20.0
    plain = parse_args([])
    assert (plain.connections, plain.duration, plain.no_floor) == (64, 10.0, False)


def test_growth_fit() -> None:
    assert growth_per_minute([(0.0, 50.0), (1.0, 50.0), (2.0, 50.0)]) == 0.0
    assert growth_per_minute([(0.0, 50.0), (30.0, 51.0), (60.0, 52.0)]) == 2.0
    assert growth_per_minute([(5.0, 50.0)]) is None


def test_upstream_peeks_instead_of_inflating() -> None:
    envelope = b'{"event_id":"9ec79c33ec9942ab8353589fcb2e04dc"}\n' + b"x" * 100_000
    head, size = peek(gzip.compress(envelope), "gzip")
    assert head[:1] == b"{" and len(head) <= 64 and size == len(envelope)
    assert peek(zlib.compress(envelope), "deflate")[1] == len(envelope)
    assert peek(envelope, "")[0][:1] == b"{"


def test_rounds_report_median_ratios_and_keep_each_round() -> None:
    def round_(
        floor_rate: float, ratio: float, cpu: float
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        floor = {
            "envelopes_per_s": floor_rate,
            "sustained_per_s": floor_rate,
            "cpu_s_per_1000": 0.4,
        }
        row = {"name": "none", "cpu_s_per_1000": cpu, "vs_floor": {"throughput": ratio}}
        return floor, [row]

    floor, (row,) = combine_rounds(
        [round_(1000, 0.7, 0.6), round_(2000, 0.9, 0.5), round_(1500, 0.5, 0.9)]
    )
    assert floor is not None and floor["envelopes_per_s"] == 1500
    assert floor["cpu_s_per_1000"] == 0.4
    assert [f["envelopes_per_s"] for f in floor["rounds"]] == [1000, 2000, 1500]
    assert row["vs_floor"]["throughput"] == 0.7
    assert [r["vs_floor"]["throughput"] for r in row["rounds"]] == [0.7, 0.9, 0.5]
    assert row["cpu_s_per_1000"] == 0.6  # the median, not the last round's 0.9
    assert [r["cpu_s_per_1000"] for r in row["rounds"]] == [0.6, 0.5, 0.9]
    _, single = combine_rounds([round_(1000, 0.7, 0.6)])
    assert single[0]["vs_floor"]["throughput"] == 0.7 and "rounds" not in single[0]


def test_fixed_rate_rounds_take_each_p99_against_its_own_floor() -> None:
    def round_(
        floor_p99: float, p99: float, cpu_s: float
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        floor = _row("floor", 0.4)
        floor["latency_ms"] = {"p50": 1.0, "p99": floor_p99}
        row = _row("default-redis", 0.5)
        row["latency_ms"] = {"p50": 2.0, "p99": p99}
        row["cpu_s"] = cpu_s
        with_cores(row)
        add_ratios([row], floor)
        return floor, [row]

    # The slow second round's floor has a p99 as high as the relay's: the ratio of each
    # round to its own floor is what is compared, never a p99 to another round's floor.
    rounds = [round_(4.0, 6.0, 7.2), round_(40.0, 40.0, 8.0), round_(4.0, 12.0, 7.6)]
    floor, (row,) = combine_latency_rounds(rounds)
    assert [r["vs_floor"]["p99"] for r in row["rounds"]] == [1.5, 1.0, 3.0]
    assert row["vs_floor"]["p99"] == 1.5
    assert row["latency_ms"]["p99"] == 6.0  # the median round's latencies, not the last's
    assert [r["p99_ms"] for r in row["rounds"]] == [6.0, 40.0, 12.0]
    assert row["cores"] == 0.95 and [r["cores"] for r in row["rounds"]] == [0.9, 1.0, 0.95]
    assert floor is not None and floor["latency_ms"]["p99"] == 4.0
    assert [r["p99_ms"] for r in floor["rounds"]] == [4.0, 40.0, 4.0]
    (line,) = targets(
        {"scenarios": [], "fixed_rate": {"rate": 800.0, "floor": floor, "scenarios": [row]}}
    )
    assert line == (
        "default-redis p99 at 800/s < 2x floor p99: 1.5x (the relay used 0.95 cores at this rate)"
    )
    # An even count: the lower of the middle two rounds' latencies.
    _, (row,) = combine_latency_rounds([round_(4.0, 10.0, 8.0), round_(4.0, 6.0, 8.0)])
    assert row["latency_ms"]["p99"] == 6.0 and row["vs_floor"]["p99"] == 2.0
    single = round_(4.0, 6.0, 8.0)
    assert combine_latency_rounds([single]) == single


def _row(name: str, cpu: float, redis_cpu: float | None = None) -> dict[str, Any]:
    row: dict[str, Any] = {
        "name": name,
        "status": "ok",
        "envelopes_per_s": 1000.0,
        "sustained_per_s": 1000.0,
        "latency_ms": {"p99": 10.0},
        "cpu_s_per_1000": cpu,
        "cpu_s": cpu * 8,
        "window_s": 8.0,
    }
    if redis_cpu is not None:
        row["redis_cpu_s_per_1000"] = redis_cpu
    return row


def test_cpu_ratio_counts_redis_and_reaches_the_targets() -> None:
    floor = _row("floor", 0.4)
    closed = [_row("none", 0.5), _row("default-redis", 0.6, redis_cpu=0.2)]
    add_ratios(closed, floor)
    assert closed[0]["vs_floor"]["cpu"] == 0.8
    # redis-server's CPU is part of what a quota check costs the machine.
    assert closed[1]["vs_floor"]["cpu"] == 0.5
    fixed_floor = _row("floor", 0.6)
    fixed = [_row("none", 0.8), _row("default-redis", 1.2, redis_cpu=0.3)]
    add_ratios(fixed, fixed_floor)
    lines = targets(
        {
            "scenarios": closed,
            "fixed_rate": {"rate": 800.0, "floor": fixed_floor, "scenarios": fixed},
        }
    )
    assert lines == [
        "default-redis throughput >= 0.50x floor: 1.0x"
        " (CPU per envelope x floor: closed loop 0.5x, at 800/s 0.4x)",
        "none throughput >= 0.80x floor: 1.0x"
        " (CPU per envelope x floor: closed loop 0.8x, at 800/s 0.75x)",
        # `none` runs at the fixed rate for its CPU only: no latency target.
        "default-redis p99 at 800/s < 2x floor p99: 1.0x (the relay used 1.20 cores at this rate)",
    ]


def test_two_workers_with_redis_are_reported_beside_the_one_core_targets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import run

    scenario = run.load_scenarios()["workers-2-redis"]
    assert scenario.config["workers"] == 2 and "redis" in scenario.config
    monkeypatch.setitem(run.SCENARIO_BASELINES, scenario.name, scenario.baseline)
    floor = _row("floor", 0.4)
    closed = [_row("default-redis", 0.8), _row("workers-2-redis", 0.8)]
    closed[1]["sustained_per_s"] = 1700.0
    add_ratios(closed, floor)
    assert closed[1]["vs_default-redis"] == {"throughput": 1.7}
    fixed_floor = _row("floor", 0.6)
    fixed = [_row("default-redis", 0.9), _row("workers-2-redis", 1.0)]
    fixed[0]["latency_ms"] = {"p99": 300.0}
    fixed[1]["latency_ms"] = {"p99": 15.0}
    add_ratios(fixed, fixed_floor)
    lines = targets(
        {
            "scenarios": closed,
            "fixed_rate": {"rate": 800.0, "floor": fixed_floor, "scenarios": fixed},
        }
    )
    assert lines[-3:] == [
        "  (workers-2-redis: 1.7x default-redis, reported, no target)",
        "default-redis p99 at 800/s < 2x floor p99: 30.0x (the relay used 0.90 cores at this rate)",
        "  (workers-2-redis p99 at 800/s < 2x floor p99: 1.5x (the relay used 1.00 cores at this"
        " rate); two workers, the target is for one)",
    ]
    assert run.DEFAULT_RATE_SCENARIOS[-1] == "workers-2-redis"


async def test_upstream_counts_envelopes_and_refuses_what_is_not_one() -> None:
    import aiohttp
    from upstream import Counters, start

    counters = Counters()
    server = await start(counters)
    base = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    envelope = b'{"event_id":"a"}\n{"type":"event"}\n{}\n'

    async def chunks() -> Any:
        yield envelope[:10]
        yield envelope[10:]

    try:
        connector = aiohttp.TCPConnector(limit=1)  # every request on the one kept-alive connection
        async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as session:

            async def post(path: str, body: Any, encoding: str = "") -> tuple[int, bytes]:
                headers = {"Content-Encoding": encoding} if encoding else {}
                async with session.post(base + path, data=body, headers=headers) as resp:
                    return resp.status, await resp.read()

            assert await post("/api/1/envelope/", gzip.compress(envelope), "gzip") == (
                200,
                b'{"id":null}',
            )
            assert (await post("/api/1/envelope/", envelope))[0] == 200
            assert (await post("/api/1/envelope/?sentry_key=k", chunks()))[0] == 200  # chunked
            assert (await post("/api/1/envelope/", b"[]"))[0] == 400
            assert (await post("/api/1/envelope/", b"not gzip", "gzip"))[0] == 400
            assert (await post("/api/1/store/", b"{}"))[0] == 200
            assert (await post("/api/1/envelope", envelope))[0] == 404
            assert (await post("/other/", envelope))[0] == 404
            async with session.get(base + "/__bench/stats") as resp:
                stats = await resp.json()
            assert len(connector._conns) == 1  # all on one connection: keep-alive works

        # Two requests in one write (pipelined) are answered in order; then a malformed
        # one is answered 400 and the connection closed.
        reader, writer = await asyncio.open_connection("127.0.0.1", int(base.rsplit(":", 1)[1]))
        one = b"POST /api/1/envelope/ HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (
            len(envelope),
            envelope,
        )
        writer.write(one + one.replace(b"envelope/", b"nothing/x/"))
        first = await reader.readuntil(b'{"id":null}')
        second = await reader.readuntil(b'{"detail":"not found"}')
        assert first.startswith(b"HTTP/1.1 200 OK\r\n") and b"HTTP/1.1 404" in second
        writer.write(b"NOT HTTP\r\n\r\n")
        rest = await asyncio.wait_for(reader.read(), 5)  # read to EOF: the server closed
        assert rest.startswith(b"HTTP/1.1 400") and b"Connection: close" in rest
        writer.close()
    finally:
        server.close()
        await server.wait_closed()
    assert stats["requests"] == 6 and stats["envelopes"] == 3 and stats["bad"] == 2
    assert stats["bytes_inflated"] == 3 * len(envelope) + 2 + 2 and stats["cpu_s"] > 0
    assert counters.envelopes == 4 and counters.requests == 7


async def test_lean_fixed_rate_client_queues_on_its_connections_and_reports_failures() -> None:
    """bench/loadgen.py's httptools client: at most `limit` keep-alive connections, requests
    beyond them wait in order, every request is answered once (status or error)."""
    from corpus import Body
    from loadgen import LeanClient, request_bytes
    from upstream import Counters, start

    from tests.support.redis_server import free_port

    counters = Counters()
    server = await start(counters)
    port = server.sockets[0].getsockname()[1]
    envelope = b'{"event_id":"a"}\n{"type":"event"}\n{}\n'
    body = Body("e", envelope, gzip.compress(envelope))
    headers = {"Content-Type": "application/x-sentry-envelope", "Content-Encoding": "gzip"}
    answers: list[tuple[int | None, str | None]] = []
    all_done = asyncio.Event()

    def done(status: int | None, error: str | None) -> None:
        answers.append((status, error))
        if len(answers) == 30:
            all_done.set()

    client = LeanClient("127.0.0.1", port, limit=4)
    try:
        for i in range(30):
            url = f"http://127.0.0.1:{port}{'/api/42/envelope/' if i % 10 else '/other/'}"
            client.send(request_bytes(url, body, headers), done)
        assert client.open == 4 and len(client.waiting) == 30
        await asyncio.wait_for(all_done.wait(), 10)
        assert sorted(answers, key=str) == [(200, None)] * 27 + [(404, None)] * 3
        assert client.open == 4 and len(client.idle) == 4  # kept alive, reused
        assert counters.envelopes == 27
    finally:
        client.close()
        server.close()
        await server.wait_closed()

    refused: list[tuple[int | None, str | None]] = []
    down = LeanClient("127.0.0.1", free_port(), limit=2)
    down.send(request_bytes("http://127.0.0.1:1/api/42/envelope/", body, headers),
              lambda s, e: refused.append((s, e)))  # fmt: skip
    for _ in range(100):
        if refused:
            break
        await asyncio.sleep(0.02)
    assert refused == [(None, "ConnectionRefusedError")] and down.open == 0
