"""The load generator: sends the corpus mix to one target and measures what comes back.

    python bench/loadgen.py --url http://127.0.0.1:PORT [--connections 64]
        [--warmup 3] [--duration 15] [--rate 0] [--encoding gzip] [--mix ...]

Closed loop (`--rate 0`): `--connections` senders, each sending its next envelope
as soon as the previous answer arrived. Fixed rate (`--rate R`): envelopes are
started on a schedule of R per second over up to `--connections` connections,
and latency counts from the scheduled start, so a slow server cannot hide its
queueing (no coordinated omission).

Only answers completed inside the measurement window (after the warm-up) count.
Prints `measure-start` and `measure-end` as the window opens and closes (the
harness samples CPU then), then `result <json>`.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aio import run
from corpus import (
    Body,
    envelope_path,
    parse_mix,
    request_headers,
    sequence,
    traffic_arguments,
)


def percentile(ordered: list[float], q: float) -> float | None:
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Run:
    """Counters of one run; only answers completed inside the window are recorded."""

    def __init__(self, start: float, end: float) -> None:
        self.start = start
        self.end = end
        self.latencies: list[float] = []
        self.statuses: Counter[int] = Counter()
        self.errors: Counter[str] = Counter()
        self.sent = 0
        #: 200 answers over the whole run, warm-up and stragglers included.
        self.total_ok = 0
        self.by_body: Counter[str] = Counter()

    def record(self, began: float, status: int | None, error: str | None, body: Body) -> None:
        done = time.perf_counter()
        if status == 200:
            self.total_ok += 1
        if not self.start <= done <= self.end:
            return
        self.latencies.append(done - began)
        self.by_body[body.name] += 1
        if error is not None:
            self.errors[error] += 1
        else:
            assert status is not None
            self.statuses[status] += 1

    def result(self, **extra: Any) -> dict[str, Any]:
        window = self.end - self.start
        ordered = sorted(self.latencies)
        ok = self.statuses.get(200, 0)

        def ms(q: float) -> float | None:
            value = percentile(ordered, q)
            return None if value is None else round(value * 1000, 3)

        return {
            "window_s": round(window, 3),
            "requests": len(ordered),
            "ok": ok,
            "envelopes_per_s": round(ok / window, 1) if window else 0.0,
            "non_200": {str(k): v for k, v in sorted(self.statuses.items()) if k != 200},
            "errors": dict(self.errors),
            "latency_ms": {
                "p50": ms(0.50),
                "p90": ms(0.90),
                "p99": ms(0.99),
                "p999": ms(0.999),
                "max": round(ordered[-1] * 1000, 3) if ordered else None,
                "mean": round(sum(ordered) / len(ordered) * 1000, 3) if ordered else None,
            },
            "mix_sent": dict(self.by_body),
            "sent": self.sent,
            "total_ok": self.total_ok,
            **extra,
        }


async def send(
    session: aiohttp.ClientSession, url: str, body: Body, headers: dict[str, str]
) -> tuple[int | None, str | None]:
    try:
        async with session.post(url, data=body.wire, headers=headers) as resp:
            await resp.read()
            return resp.status, None
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        return None, type(exc).__name__


async def announce(run_: Run) -> None:
    await asyncio.sleep(max(0.0, run_.start - time.perf_counter()))
    cpu0 = time.process_time()
    print("measure-start", flush=True)
    await asyncio.sleep(max(0.0, run_.end - time.perf_counter()))
    print("measure-end", flush=True)
    run_.loadgen_cpu_s = time.process_time() - cpu0  # type: ignore[attr-defined]


async def closed_loop(
    session: aiohttp.ClientSession,
    url: str,
    bodies: list[Body],
    headers: dict[str, str],
    run_: Run,
    connections: int,
) -> None:
    counter = itertools.count()

    async def sender() -> None:
        while time.perf_counter() < run_.end:
            body = bodies[next(counter) % len(bodies)]
            began = time.perf_counter()
            run_.sent += 1
            status, error = await send(session, url, body, headers)
            run_.record(began, status, error, body)

    await asyncio.gather(*(sender() for _ in range(connections)))


async def fixed_rate(
    session: aiohttp.ClientSession,
    url: str,
    bodies: list[Body],
    headers: dict[str, str],
    run_: Run,
    rate: float,
    begin: float,
) -> None:
    pending: set[asyncio.Task[None]] = set()

    async def one(scheduled: float, body: Body) -> None:
        status, error = await send(session, url, body, headers)
        run_.record(scheduled, status, error, body)

    for i in itertools.count():
        scheduled = begin + i / rate
        if scheduled >= run_.end:
            break
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        run_.sent += 1
        task = asyncio.create_task(one(scheduled, bodies[i % len(bodies)]))
        pending.add(task)
        task.add_done_callback(pending.discard)
    if pending:
        _, late = await asyncio.wait(pending, timeout=10)
        for task in late:
            task.cancel()


async def main_async(args: argparse.Namespace) -> None:
    bodies = sequence(Path(args.corpus), parse_mix(args.mix), gzip_bodies=args.encoding == "gzip")
    url = args.url.rstrip("/") + envelope_path(args.project)
    headers = request_headers(args.key, gzip_bodies=args.encoding == "gzip")
    connector = aiohttp.TCPConnector(limit=args.connections, limit_per_host=args.connections)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(
        connector=connector, timeout=timeout, auto_decompress=False
    ) as session:
        begin = time.perf_counter()
        run_ = Run(begin + args.warmup, begin + args.warmup + args.duration)
        announcer = asyncio.create_task(announce(run_))
        if args.rate > 0:
            await fixed_rate(session, url, bodies, headers, run_, args.rate, begin)
        else:
            await closed_loop(session, url, bodies, headers, run_, args.connections)
        await announcer
    extra: dict[str, Any] = {
        "mode": "fixed_rate" if args.rate > 0 else "closed_loop",
        "connections": args.connections,
        "loadgen": "aiohttp",
        "loadgen_cpu_s": round(getattr(run_, "loadgen_cpu_s", 0.0), 3),
    }
    if args.rate > 0:
        extra["offered_per_s"] = args.rate
    print("result " + orjson.dumps(run_.result(**extra)).decode(), flush=True)


def main() -> None:
    parser = traffic_arguments(__doc__)
    parser.add_argument("--rate", type=float, default=0.0, help="envelopes/s; 0 = closed loop")
    run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
