"""The load generator: sends the corpus mix to one target and measures what comes back.

    python bench/loadgen.py --url http://127.0.0.1:PORT [--connections 64]
        [--warmup 3] [--duration 15] [--rate 0] [--encoding gzip] [--mix ...]

Closed loop (`--rate 0`): `--connections` senders, each sending its next envelope
as soon as the previous answer arrived. Fixed rate (`--rate R`): envelopes are
started on a schedule of R per second over up to `--connections` connections,
and latency counts from the scheduled start, so a slow server cannot hide its
queueing (no coordinated omission).

The client: aiohttp's for the closed loop; at a fixed rate (`--client auto`, the
default) a lean HTTP/1.1 client on `httptools`, the parser the recording upstream
uses: each envelope's whole request is built once, and an answer is parsed as it
arrives, so the generator takes a fraction of the CPU aiohttp's client does on the
cores it shares with the target (`--client aiohttp` for that one instead).

Only answers completed inside the measurement window (after the warm-up) count.
Prints `measure-start` and `measure-end` as the window opens and closes (the
harness samples CPU then), then `result <json>`.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

import aiohttp
import httptools
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


Done = Callable[[int | None, str | None], None]


class _Connection(asyncio.Protocol):
    """One keep-alive connection of `LeanClient`: one request at a time."""

    def __init__(self, client: LeanClient) -> None:
        self.client = client
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.done: Done | None = None

    def send(self, raw: bytes, done: Done) -> None:
        assert self.transport is not None
        self.done = done
        self.transport.write(raw)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self._finish(None, "HttpParserError")
            if self.transport is not None:
                self.transport.close()

    def on_message_complete(self) -> None:
        status = self.parser.get_status_code()
        keep = self.parser.should_keep_alive()
        done, self.done = self.done, None
        if keep:
            self.client.release(self)
        elif self.transport is not None:
            self.transport.close()
        if done is not None:
            done(status, None)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._finish(None, "ServerDisconnected")
        self.client.lost(self)

    def _finish(self, status: int | None, error: str | None) -> None:
        done, self.done = self.done, None
        if done is not None:
            done(status, error)


class LeanClient:
    """Up to `limit` keep-alive HTTP/1.1 connections to one host; requests wait in
    order for a free one. `send(raw, done)` writes a whole prebuilt request and calls
    `done(status, error)` when its answer has arrived (or the connection failed)."""

    def __init__(self, host: str, port: int, limit: int) -> None:
        self.host = host
        self.port = port
        self.limit = limit
        self.idle: list[_Connection] = []
        self.open = 0
        self.waiting: deque[tuple[bytes, Done]] = deque()
        self.connecting: set[asyncio.Task[None]] = set()

    def send(self, raw: bytes, done: Done) -> None:
        if self.idle:
            self.idle.pop().send(raw, done)
            return
        self.waiting.append((raw, done))
        if self.open < self.limit:
            self._connect()

    def release(self, conn: _Connection) -> None:
        if self.waiting:
            conn.send(*self.waiting.popleft())
        else:
            self.idle.append(conn)

    def lost(self, conn: _Connection) -> None:
        self.open -= 1
        if conn in self.idle:
            self.idle.remove(conn)
        if self.waiting and self.open < self.limit:
            self._connect()

    def _connect(self) -> None:
        self.open += 1
        task = asyncio.create_task(self._open())
        self.connecting.add(task)
        task.add_done_callback(self.connecting.discard)

    async def _open(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, conn = await loop.create_connection(lambda: _Connection(self), self.host, self.port)
        except OSError as exc:
            self.open -= 1
            if self.waiting:
                _, done = self.waiting.popleft()
                done(None, type(exc).__name__)
            return
        self.release(conn)

    def close(self) -> None:
        for task in self.connecting:
            task.cancel()
        for conn in self.idle:
            if conn.transport is not None:
                conn.transport.close()


def request_bytes(url: str, body: Body, headers: dict[str, str]) -> bytes:
    """The whole HTTP/1.1 request of one envelope, as `send` posts it."""
    parts = urlsplit(url)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    head = [f"POST {path} HTTP/1.1", f"Host: {parts.netloc}"]
    head += [f"{k}: {v}" for k, v in headers.items()]
    head.append(f"Content-Length: {len(body.wire)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body.wire


async def lean_fixed_rate(
    url: str,
    bodies: list[Body],
    headers: dict[str, str],
    run_: Run,
    rate: float,
    begin: float,
    limit: int,
) -> None:
    """`fixed_rate` on `LeanClient`: the same schedule and accounting, no task per request."""
    parts = urlsplit(url)
    client = LeanClient(parts.hostname or "127.0.0.1", parts.port or 80, limit)
    raws = [request_bytes(url, body, headers) for body in bodies]
    outstanding = 0
    finished = asyncio.Event()

    def callback(scheduled: float, body: Body) -> Done:
        def done(status: int | None, error: str | None) -> None:
            nonlocal outstanding
            run_.record(scheduled, status, error, body)
            outstanding -= 1
            if outstanding == 0:
                finished.set()

        return done

    try:
        async for i, scheduled in schedule(begin, rate, run_):
            outstanding += 1
            finished.clear()
            n = i % len(bodies)
            client.send(raws[n], callback(scheduled, bodies[n]))
        if outstanding:
            try:
                async with asyncio.timeout(10):
                    await finished.wait()
            except TimeoutError:
                pass
    finally:
        client.close()


async def schedule(begin: float, rate: float, run_: Run) -> AsyncIterator[tuple[int, float]]:
    """The fixed-rate schedule: (index, scheduled start) of each send, `rate` per second
    from `begin` until the window ends, each yielded at its time and counted as sent."""
    for i in itertools.count():
        scheduled = begin + i / rate
        if scheduled >= run_.end:
            return
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        run_.sent += 1
        yield i, scheduled


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

    async for i, scheduled in schedule(begin, rate, run_):
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
    client = "httptools" if args.rate > 0 and args.client in ("auto", "httptools") else "aiohttp"
    connector = aiohttp.TCPConnector(limit=args.connections, limit_per_host=args.connections)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(
        connector=connector, timeout=timeout, auto_decompress=False
    ) as session:
        begin = time.perf_counter()
        run_ = Run(begin + args.warmup, begin + args.warmup + args.duration)
        announcer = asyncio.create_task(announce(run_))
        if client == "httptools":
            await lean_fixed_rate(url, bodies, headers, run_, args.rate, begin, args.connections)
        elif args.rate > 0:
            await fixed_rate(session, url, bodies, headers, run_, args.rate, begin)
        else:
            await closed_loop(session, url, bodies, headers, run_, args.connections)
        await announcer
    extra: dict[str, Any] = {
        "mode": "fixed_rate" if args.rate > 0 else "closed_loop",
        "connections": args.connections,
        "loadgen": client,
        "loadgen_cpu_s": round(getattr(run_, "loadgen_cpu_s", 0.0), 3),
    }
    if args.rate > 0:
        extra["offered_per_s"] = args.rate
    print("result " + orjson.dumps(run_.result(**extra)).decode(), flush=True)


def main() -> None:
    parser = traffic_arguments(__doc__)
    parser.add_argument("--rate", type=float, default=0.0, help="envelopes/s; 0 = closed loop")
    parser.add_argument(
        "--client",
        choices=("auto", "httptools", "aiohttp"),
        default="auto",
        help="auto: httptools at a fixed rate, aiohttp in closed loop (httptools there too "
        "is not offered: a closed loop needs per-request timeouts it does not keep)",
    )
    args = parser.parse_args()
    if args.client == "httptools" and args.rate <= 0:
        parser.error("--client httptools drives fixed-rate runs only (give --rate)")
    run(main_async(args))


if __name__ == "__main__":
    main()
