"""Benchmark: how long small envelopes wait while large attachments are being scrubbed.

    python bench/stall.py [--duration 10] [--rate 100] [--large-mib 8] [--json out.json]

Starts the recording upstream (bench/upstream.py) and the relay on the `default`
scenario (the strict default policy, in-process quota), then sends corpus envelopes
at a fixed rate (`--rate`, one connection per request in flight) for two windows of
`--duration` seconds each:

- `baseline`: the small envelopes alone;
- `large`: the same, while a second client posts one envelope at a time carrying a
  `--large-mib` MiB log attachment with an email and a `token=` on every line (what
  the default policy has the most to do on), the next as soon as the last is answered.

For the small envelopes of each window it reports p50, p99 and the longest answer
time, and the ratios of the `large` window to the `baseline` one; for the large ones,
how many were sent and how long each took to reach the upstream. On the event loop,
every large attachment stops the answers for as long as it takes to scrub (about 0.1 s
per MiB); on the offload thread (`relay.services.offload`) the small answers go on,
slowed by sharing the core. Ratios against the same invocation's baseline, never a
pass/fail.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from corpus import CORPUS_KEY, CORPUS_PROJECT, DEFAULT_CORPUS, load_corpus
from loadgen import percentile
from micro import large_payload
from procs import LOOPBACK, Child, children, free_port, write_results
from run import BENCH, PY, build_config, load_scenario, wait_http

AUTH = f"Sentry sentry_key={CORPUS_KEY}, sentry_version=7, sentry_client=bench-stall/1.0"


async def small_window(
    session: aiohttp.ClientSession, url: str, bodies: list[bytes], rate: float, duration: float
) -> dict[str, Any]:
    """Small envelopes at `rate`/s for `duration` s: answer times in ms."""
    times: list[float] = []
    errors = 0
    tasks: set[asyncio.Task[None]] = set()

    async def one(body: bytes) -> None:
        nonlocal errors
        t0 = time.perf_counter()
        try:
            async with session.post(url, data=body, headers={"X-Sentry-Auth": AUTH}) as resp:
                await resp.read()
                if resp.status != 200:
                    errors += 1
                    return
        except aiohttp.ClientError:
            errors += 1
            return
        times.append((time.perf_counter() - t0) * 1000)

    begin = time.perf_counter()
    n = 0
    while (due := begin + n / rate) < begin + duration:
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        task = asyncio.create_task(one(bodies[n % len(bodies)]))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        n += 1
    if tasks:
        await asyncio.wait(tasks, timeout=60)
    times.sort()
    return {
        "sent": n,
        "answered": len(times),
        "errors": errors,
        "p50_ms": _round(percentile(times, 0.50)),
        "p99_ms": _round(percentile(times, 0.99)),
        "max_ms": _round(times[-1] if times else None),
    }


async def large_sender(
    session: aiohttp.ClientSession, url: str, body: bytes, stop: asyncio.Event
) -> tuple[list[float], dict[int, int]]:
    """Large envelopes one after another until `stop`: answer times in ms, statuses."""
    times: list[float] = []
    statuses: dict[int, int] = {}
    while not stop.is_set():
        t0 = time.perf_counter()
        async with session.post(url, data=body, headers={"X-Sentry-Auth": AUTH}) as resp:
            await resp.read()
            statuses[resp.status] = statuses.get(resp.status, 0) + 1
        times.append((time.perf_counter() - t0) * 1000)
        if resp.status != 200:
            await asyncio.sleep(0.5)  # the relay is full: as an SDK would, back off
    return times, statuses


async def measure(url: str, args: argparse.Namespace, bodies: list[bytes]) -> dict[str, Any]:
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        await small_window(session, url, bodies, args.rate, 1.0)  # warm-up
        baseline = await small_window(session, url, bodies, args.rate, args.duration)
        stop = asyncio.Event()
        sender = asyncio.create_task(
            large_sender(session, url, large_payload("text", args.large_mib << 20), stop)
        )
        large = await small_window(session, url, bodies, args.rate, args.duration)
        stop.set()
        large_times, statuses = await sender
    large["large_sent"] = len(large_times)
    large["large_statuses"] = statuses
    large["large_answer_ms_max"] = _round(max(large_times) if large_times else None)
    ratios = {
        k: _round(large[k] / baseline[k]) if baseline[k] and large[k] is not None else None
        for k in ("p50_ms", "p99_ms", "max_ms")
    }
    return {"baseline": baseline, "large": large, "large_vs_baseline": ratios}


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--duration", type=float, default=10.0, help="seconds per window")
    p.add_argument("--rate", type=float, default=100.0, help="small envelopes per second")
    p.add_argument("--large-mib", type=int, default=8, help="size of the large attachment")
    p.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    bodies = list(load_corpus(args.corpus).values())
    started = dt.datetime.now(dt.UTC)
    with tempfile.TemporaryDirectory(prefix="relay-stall-") as tmp, children() as kids:
        workdir = Path(tmp)
        upstream = Child("upstream", [PY, str(BENCH / "upstream.py")], cwd=BENCH)
        kids.append(upstream)
        up_port = int(upstream.wait_for_line("listening", 30).split()[1])
        port = free_port()
        cfg = build_config(
            load_scenario(BENCH / "scenarios" / "default.yaml"),
            port=port,
            upstream=f"http://{LOOPBACK}:{up_port}",
            workdir=workdir,
            redis_url=None,
            project=CORPUS_PROJECT,
            key=CORPUS_KEY,
        )
        cfg_path = workdir / "relay.yaml"
        cfg_path.write_text(yaml.safe_dump(cfg))
        relay = Child("relay", [PY, "-m", "relay", "run", "-c", str(cfg_path)], cwd=workdir)
        kids.append(relay)
        base = f"http://{LOOPBACK}:{port}"
        wait_http(f"{base}/healthz", relay, 30)
        url = f"{base}/api/{CORPUS_PROJECT}/envelope/"
        result = asyncio.run(measure(url, args, bodies))
    result["meta"] = {
        "date": started.isoformat(timespec="seconds"),
        "rate": args.rate,
        "duration": args.duration,
        "large_mib": args.large_mib,
    }
    for name in ("baseline", "large"):
        r = result[name]
        print(
            f"{name:<9} sent {r['sent']:>5}  answered {r['answered']:>5}  errors {r['errors']:>3}"
            f"  p50 {r['p50_ms']} ms  p99 {r['p99_ms']} ms  max {r['max_ms']} ms"
        )
    r = result["large"]
    print(
        f"large envelopes sent: {r['large_sent']} (answers {r['large_statuses']}),"
        f" longest answer {r['large_answer_ms_max']} ms"
    )
    print(f"large / baseline: {result['large_vs_baseline']}")
    print(f"wrote {write_results(result, args.json, 'stall-', started)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
