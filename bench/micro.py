"""Micro-benchmarks of the relay's pure hot paths and of the limiter round trip.

    python bench/micro.py [--seconds 0.4] [--corpus DIR] [--json out.json]

Per corpus file: envelope parse, serialize, gzip (inflate the request, deflate the
forward), and the whole pure path `parse -> prepare -> finish -> serialize` under
the policies of bench/scenarios/ (none, default, full), with whatever stages
`relay.policy.compile` provides today. Then the limiter: one quota check through
the in-process and the Redis limiter, one at a time and 64 at once, on uvloop as
the relay runs, with the CPU each check took (`cpu us/op`: the wall time of a check
alone is mostly waiting for Redis).

Every number is reported with the ratio to a trivial baseline measured in the same
invocation: `orjson.loads` + `orjson.dumps` of the file's JSON payloads for the
envelope work, a Redis `PING` round trip for the limiter. Never pass/fail; parts
that are not importable yet are skipped with the reason.

`large`: whole-envelope scrubbing (default policy) of one log-file attachment and one
JSON attachment at 1 and 8 MiB, every line holding an email and a `token=`: MB/s per
size against a UTF-8 decode + encode of the same bytes. `per_mb_vs_1mib` is the cost
per MB at 8 MiB over the cost per MB at 1 MiB: about 1 when the work grows linearly
with the payload (hits were merged quadratically before, 8x at 8 MiB).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import gzip
import shutil
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Coroutine
from functools import partial
from pathlib import Path
from typing import Any

import orjson
import yaml
from corpus import CORPUS_KEY, CORPUS_PROJECT, DEFAULT_CORPUS, load_corpus
from procs import LOOPBACK, REPO, children, free_port, write_results

sys.path.insert(0, str(REPO))

from relay.protocol.envelope import parse_envelope

BENCH = Path(__file__).resolve().parent
POLICIES = ("none", "default", "full")


def ops_per_s(fn: Callable[[], object], seconds: float) -> float:
    """Best of three timed batches of `fn` calls, each about `seconds / 3` long."""
    n = 1
    while True:  # calibrate a batch of at least 20 ms
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        took = time.perf_counter() - t0
        if took >= 0.02:
            break
        n *= 2
    per_batch = max(1, int(n * (seconds / 3) / took))
    best = 0.0
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(per_batch):
            fn()
        best = max(best, per_batch / (time.perf_counter() - t0))
    return best


def _json_payloads(data: bytes) -> list[bytes]:
    out = []
    for item in parse_envelope(data).items:
        if item.payload[:1] in (b"{", b"["):
            out.append(item.payload)
    return out


def _row(
    name: str, what: str, ops: float, baseline: float, cpu_s_per_op: float | None = None
) -> dict[str, Any]:
    row = {
        "file": name,
        "op": what,
        "ops_per_s": round(ops, 1),
        "us_per_op": round(1e6 / ops, 2),
        # How many baselines one op costs (2.0 = twice a JSON round trip of the payloads).
        "cost_in_baselines": round(baseline / ops, 3),
    }
    if cpu_s_per_op is not None:
        # The process's CPU per op (user + system): for ops that wait on another process,
        # where the wall time per op is mostly waiting.
        row["cpu_us_per_op"] = round(cpu_s_per_op * 1e6, 2)
    return row


def envelope_benchmarks(corpus: dict[str, bytes], seconds: float) -> list[dict[str, Any]]:
    rows = []
    for name, data in corpus.items():
        payloads = _json_payloads(data)

        def baseline(payloads: list[bytes] = payloads) -> None:
            for p in payloads:
                orjson.dumps(orjson.loads(p))

        base = ops_per_s(baseline, seconds)
        rows.append(_row(name, "baseline: orjson loads+dumps of payloads", base, base))
        parsed = parse_envelope(data)
        rows.append(
            _row(name, "parse_envelope", ops_per_s(partial(parse_envelope, data), seconds), base)
        )
        rows.append(_row(name, "Envelope.serialize", ops_per_s(parsed.serialize, seconds), base))
        packed = gzip.compress(data, 6)

        def gzip_path(packed: bytes = packed) -> None:
            body = zlib.decompress(packed, 47)
            c = zlib.compressobj(6, zlib.DEFLATED, 31)
            c.compress(body)
            c.flush()

        rows.append(_row(name, "gzip inflate + deflate(6)", ops_per_s(gzip_path, seconds), base))
    return rows


def _policy(name: str) -> Any:
    """A compiled policy for project 42 under a scenario's config, through the registry."""
    from relay.config import parse_config
    from relay.policy.registry import PolicyRegistry

    data = yaml.safe_load((BENCH / "scenarios" / f"{name}.yaml").read_text()) or {}
    data.pop("bench", None)
    for section in ("redis", "spool", "workers"):
        data.pop(section, None)
    data["projects"] = [{"id": CORPUS_PROJECT, "keys": [CORPUS_KEY]}]
    data["upstream"] = {"url": "http://127.0.0.1:9"}
    found = PolicyRegistry(parse_config(data, env={})).resolve(CORPUS_PROJECT, CORPUS_KEY)
    return found.policy  # type: ignore[union-attr]


def pipeline_benchmarks(
    corpus: dict[str, bytes], seconds: float
) -> tuple[list[dict[str, Any]], list[str]]:
    from relay.processing import pipeline
    from relay.processing.context import RequestContext

    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    ctx = RequestContext(CORPUS_PROJECT, CORPUS_KEY, "203.0.113.9", "sentry.python/2.75.0")
    for policy_name in POLICIES:
        try:
            policy = _policy(policy_name)
        except Exception as exc:
            notes.append(f"pipeline[{policy_name}]: not available: {type(exc).__name__}: {exc}")
            continue
        stages = [
            s
            for s in ("filters", "sampler", "fingerprinter", "scrubber")
            if getattr(policy, s, None) is not None
        ]
        notes.append(f"pipeline[{policy_name}]: stages compiled: {', '.join(stages) or 'none'}")
        for name, data in corpus.items():
            payloads = _json_payloads(data)

            def baseline(payloads: list[bytes] = payloads) -> None:
                for p in payloads:
                    orjson.dumps(orjson.loads(p))

            base = ops_per_s(baseline, seconds)

            def path(data: bytes = data, policy: Any = policy) -> bytes:
                envelope = parse_envelope(data)
                prepared = pipeline.prepare(
                    envelope,
                    ctx,
                    filters=policy.filters,
                    sampler=policy.sampler,
                    limits=policy.limits,
                )
                out = pipeline.finish(
                    prepared, scrubber=policy.scrubber, fingerprinter=policy.fingerprinter
                )
                return out.serialize()

            try:
                path()
            except Exception as exc:
                notes.append(f"pipeline[{policy_name}] {name}: failed: {type(exc).__name__}: {exc}")
                continue
            rows.append(
                _row(
                    name,
                    f"pipeline[{policy_name}] parse+prepare+finish+serialize",
                    ops_per_s(path, seconds),
                    base,
                )
            )
    return rows, notes


def large_payload(kind: str, size: int) -> bytes:
    """An envelope with an event and one attachment of ~`size` bytes (see the docstring)."""
    lines = []
    total = 0
    i = 0
    while total < size:
        if kind == "text":
            line = f"INFO request {i} from user{i}@example.com path=/items/{i} token=t{i:08x}\n"
        else:
            doc = {"i": i, "user": f"user{i}@example.com", "path": f"/items/{i}", "n": [1, 2]}
            line = orjson.dumps(doc).decode() + ",\n"
        lines.append(line)
        total += len(line)
        i += 1
    body = "".join(lines)
    if kind == "json":
        body = "[" + body.rstrip(",\n") + "]"
    data = body.encode()
    event = orjson.dumps({"message": "large"})
    head = {"type": "attachment", "length": len(data), "filename": f"large.{kind}"}
    return b"\n".join(
        [
            orjson.dumps({"event_id": "a" * 32}),
            orjson.dumps({"type": "event", "length": len(event)}),
            event,
            orjson.dumps(head),
            data,
            b"",
        ]
    )


def large_payload_benchmarks(seconds: float) -> list[dict[str, Any]]:
    from relay.processing.scrub import compile_scrubber

    scrubber = compile_scrubber(None)
    rows: list[dict[str, Any]] = []
    for kind in ("text", "json"):
        per_mb: dict[int, float] = {}
        for mib in (1, 8):
            data = large_payload(kind, mib << 20)
            payload = parse_envelope(data).items[1].payload

            def baseline(payload: bytes = payload) -> None:
                payload.decode().encode()

            def scrub(data: bytes = data) -> None:
                scrubber.scrub_envelope(parse_envelope(data), report=False)

            base = ops_per_s(baseline, seconds)
            ops = ops_per_s(scrub, seconds)
            name = f"{kind}-attachment-{mib}MiB"
            rows.append(_row(name, "baseline: utf-8 decode + encode", base, base))
            row = _row(name, "scrub_envelope (default policy)", ops, base)
            row["mb_per_s"] = round(ops * len(data) / 1e6, 2)
            per_mb[mib] = 1 / (ops * mib)
            if mib != 1:
                row["per_mb_vs_1mib"] = round(per_mb[mib] / per_mb[1], 2)
            rows.append(row)
    return rows


async def _limiter_benchmarks(redis_url: str, seconds: float) -> list[dict[str, Any]]:
    from redis.asyncio import Redis

    from relay.config import PolicyConfig, RedisConfig, Secret
    from relay.config.quotas import QuotaConfig
    from relay.processing.quotas import Scoping, compile_policy_quotas
    from relay.services.limiter import MemoryLimiter, create_limiter

    policy = PolicyConfig(
        quotas=[QuotaConfig(id="bench", limit=10**12, scope="project", window=60)]
    )
    quotas = compile_policy_quotas(policy, None)
    scope = Scoping(CORPUS_PROJECT, CORPUS_KEY)
    quantities = [("error", 1)]
    rows: list[dict[str, Any]] = []

    async def rate(op: Callable[[], Any], concurrency: int = 1) -> tuple[float, float]:
        """Ops per second, and CPU seconds per op."""

        async def loop(deadline: float) -> int:
            done = 0
            while time.perf_counter() < deadline:
                await op()
                done += 1
            return done

        await asyncio.gather(*(loop(time.perf_counter() + 0.1) for _ in range(concurrency)))
        t0, cpu0 = time.perf_counter(), time.process_time()
        counts = await asyncio.gather(*(loop(t0 + seconds) for _ in range(concurrency)))
        total = sum(counts)
        return total / (time.perf_counter() - t0), (time.process_time() - cpu0) / total

    client = Redis.from_url(redis_url)
    try:
        base, base_cpu = await rate(client.ping)
        base64, base64_cpu = await rate(client.ping, 64)
    finally:
        await client.aclose()
    rows.append(_row("-", "baseline: redis PING, 1 at a time", base, base, base_cpu))
    rows.append(_row("-", "baseline: redis PING, 64 at once", base64, base, base64_cpu))
    memory = MemoryLimiter()
    in_process, in_process_cpu = await rate(lambda: memory.check(scope, quantities, quotas))
    rows.append(_row("-", "MemoryLimiter.check", in_process, base, in_process_cpu))
    limiter = create_limiter(RedisConfig(url=Secret(redis_url)))
    try:
        one, one_cpu = await rate(lambda: limiter.check(scope, quantities, quotas))
        many, many_cpu = await rate(lambda: limiter.check(scope, quantities, quotas), 64)
        if limiter.redis_errors:
            raise RuntimeError(f"{limiter.redis_errors} checks failed to reach Redis")
    finally:
        await limiter.close()
    rows.append(_row("-", "RedisLimiter.check, 1 at a time", one, base, one_cpu))
    rows.append(_row("-", "RedisLimiter.check, 64 at once", many, base, many_cpu))
    return rows


def _run_like_the_relay(coro: Coroutine[Any, Any, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """On uvloop when it is installed, as the relay runs (its transports are not asyncio's)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def limiter_benchmarks(seconds: float) -> tuple[list[dict[str, Any]], list[str]]:
    try:
        import relay.services.limiter  # noqa: F401
    except Exception as exc:
        return [], [f"limiter: not available: {type(exc).__name__}: {exc}"]
    binary = shutil.which("redis-server")
    if binary is None:
        return [], ["limiter: not available: redis-server is not installed"]
    workdir = Path(tempfile.mkdtemp(prefix="relay-micro-redis-"))
    try:
        with children() as kids:
            from run import start_redis

            port = free_port()
            kids.append(start_redis(binary, port, workdir))
            try:
                url = f"redis://{LOOPBACK}:{port}/0"
                return _run_like_the_relay(_limiter_benchmarks(url, seconds)), []
            except Exception as exc:
                return [], [f"limiter: failed: {type(exc).__name__}: {exc}"]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def table(rows: list[dict[str, Any]]) -> str:
    head = f"{'file':<24}{'op':<58}{'ops/s':>11}{'us/op':>10}{'x base':>9}{'cpu us/op':>11}"
    lines = [head, "-" * len(head)]
    for r in rows:
        cpu = f"{r['cpu_us_per_op']:>11.1f}" if "cpu_us_per_op" in r else ""
        if "mb_per_s" in r:
            cpu += f"  {r['mb_per_s']} MB/s"
        if "per_mb_vs_1mib" in r:
            cpu += f", {r['per_mb_vs_1mib']}x per MB vs 1 MiB"
        lines.append(
            f"{r['file']:<24}{r['op']:<58}{r['ops_per_s']:>11.0f}{r['us_per_op']:>10.1f}{r['cost_in_baselines']:>9.2f}{cpu}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--seconds", type=float, default=0.4, help="time per measurement")
    p.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    p.add_argument(
        "--json", type=Path, default=None, help="default: bench/results/micro-<time>.json"
    )
    groups = ("envelope", "pipeline", "large", "limiter")
    p.add_argument("--only", choices=groups, action="append")
    args = p.parse_args(argv)
    only = set(args.only or groups)
    corpus = load_corpus(args.corpus)
    started = dt.datetime.now(dt.UTC)
    results: dict[str, Any] = {
        "meta": {"date": started.isoformat(timespec="seconds"), "corpus": str(args.corpus)}
    }
    notes: list[str] = []
    if "envelope" in only:
        results["envelope"] = envelope_benchmarks(corpus, args.seconds)
        print(table(results["envelope"]) + "\n", flush=True)
    if "pipeline" in only:
        results["pipeline"], more = pipeline_benchmarks(corpus, args.seconds)
        notes += more
        print(table(results["pipeline"]) + "\n", flush=True)
    if "large" in only:
        results["large"] = large_payload_benchmarks(args.seconds)
        print(table(results["large"]) + "\n", flush=True)
    if "limiter" in only:
        results["limiter"], more = limiter_benchmarks(args.seconds)
        notes += more
        if results["limiter"]:
            print(table(results["limiter"]) + "\n", flush=True)
    results["notes"] = notes
    for note in notes:
        print(note)
    print(f"\nwrote {write_results(results, args.json, 'micro-', started)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
