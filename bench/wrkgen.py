"""The closed-loop load generator on `wrk`: the corpus mix, reported as bench/loadgen.py does.

    python bench/wrkgen.py --url http://127.0.0.1:PORT [--connections 64] [--threads 1]
        [--warmup 3] [--duration 15] [--encoding gzip] [--mix ...]

Writes each envelope of one mix cycle (`corpus.sequence`) as a complete HTTP request
(the same path, headers and gzip body as bench/loadgen.py sends) into a temporary
directory, and runs `wrk` with bench/wrk.lua, which reads them once per thread and
sends them round robin, one request in flight per connection. wrk runs twice: for
the warm-up (discarded) and for the measured window. Each run is stopped with SIGINT
at its time (wrk's `-d` takes whole seconds only), and wrk's own clock gives the
window. wrk has no fixed-rate mode: fixed-rate runs use bench/loadgen.py.

Prints `measure-start` and `measure-end` around the measured run, then
`result <json>` in loadgen.py's shape. `total_ok` (200 answers over both runs, used
for the share of answers that reach the upstream) also counts the requests in
flight when a run stopped: wrk closes those connections without reading the
answers, but the target has the request and handles it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from corpus import (
    envelope_path,
    parse_mix,
    request_headers,
    sequence,
    traffic_arguments,
)
from procs import raise_nofile

BENCH = Path(__file__).resolve().parent
SCRIPT = BENCH / "wrk.lua"
#: Seconds a request may take before wrk counts a timeout (the aiohttp generator's total).
TIMEOUT_S = 30


def write_requests(directory: Path, args: argparse.Namespace) -> int:
    """One mix cycle as raw HTTP/1.1 requests plus `order.txt`; the number of requests."""
    gzip_bodies = args.encoding == "gzip"
    bodies = sequence(Path(args.corpus), parse_mix(args.mix), gzip_bodies=gzip_bodies)
    parts = urlsplit(args.url)
    headers = {"Host": parts.netloc, **request_headers(args.key, gzip_bodies=gzip_bodies)}
    path = envelope_path(args.project)
    order = []
    for i, body in enumerate(bodies):
        head = [f"POST {path} HTTP/1.1"]
        head += [f"{k}: {v}" for k, v in headers.items()]
        head.append(f"Content-Length: {len(body.wire)}")
        raw = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body.wire
        name = f"req-{i:03d}.http"
        (directory / name).write_bytes(raw)
        order.append(f"{name}\t{body.name}\n")
    (directory / "order.txt").write_text("".join(order))
    return len(bodies)


def run_wrk(
    binary: str, args: argparse.Namespace, directory: Path, seconds: float
) -> dict[str, Any]:
    """One wrk run of `seconds`; its `wrk-result` JSON."""
    base = f"{urlsplit(args.url).scheme}://{urlsplit(args.url).netloc}"
    argv = [
        binary,
        f"-t{args.threads}",
        f"-c{args.connections}",
        f"-d{math.ceil(seconds) + 10}s",  # a backstop: SIGINT ends the run on time
        f"--timeout={TIMEOUT_S}s",
        "-s",
        str(SCRIPT),
        base,
        "--",
        str(directory),
    ]
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        time.sleep(seconds)
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    for line in out.splitlines():
        if line.startswith("wrk-result "):
            data: dict[str, Any] = json.loads(line.split(" ", 1)[1])
            return data
    raise RuntimeError(f"wrk printed no result (exit {proc.returncode}): {(err or out)[-800:]}")


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _ok_and_in_flight(run: dict[str, Any]) -> tuple[int, int]:
    answered = sum(run["statuses"].values())
    return run["statuses"].get("200", 0), max(0, run["sent"] - answered)


def result(warm: dict[str, Any] | None, measured: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """The measured run in loadgen.py's result shape."""
    window = measured["duration_us"] / 1e6
    ok, in_flight = _ok_and_in_flight(measured)
    total_ok = ok + in_flight
    if warm is not None:
        warm_ok, warm_in_flight = _ok_and_in_flight(warm)
        total_ok += warm_ok + warm_in_flight
        in_flight += warm_in_flight
    errors = {k: v for k, v in measured["errors"].items() if v and k != "status"}
    return {
        "window_s": round(window, 3),
        "requests": measured["requests"],
        "ok": ok,
        "envelopes_per_s": round(ok / window, 1) if window else 0.0,
        "non_200": {k: v for k, v in sorted(measured["statuses"].items()) if k != "200"},
        "errors": errors,
        "latency_ms": measured["latency_ms"],
        "mix_sent": measured["mix_sent"],
        "sent": measured["sent"],
        "total_ok": total_ok,
        "in_flight_at_stop": in_flight,
        **extra,
    }


def main() -> None:
    parser = traffic_arguments(__doc__)
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (1 keeps its CPU low)")
    parser.add_argument("--wrk", default="wrk", help="the wrk binary")
    args = parser.parse_args()
    binary = shutil.which(args.wrk)
    if binary is None:
        sys.exit(f"wrk not found: {args.wrk}")
    args.threads = max(1, min(args.threads, args.connections))
    raise_nofile()
    directory = Path(tempfile.mkdtemp(prefix="relay-bench-wrk-"))
    try:
        write_requests(directory, args)
        warm = run_wrk(binary, args, directory, args.warmup) if args.warmup > 0 else None
        cpu0 = _children_cpu_s()
        print("measure-start", flush=True)
        measured = run_wrk(binary, args, directory, args.duration)
        print("measure-end", flush=True)
        extra = {
            "mode": "closed_loop",
            "connections": args.connections,
            "loadgen": "wrk",
            "wrk_threads": args.threads,
            "loadgen_cpu_s": round(_children_cpu_s() - cpu0, 3),
        }
        line = json.dumps(result(warm, measured, **extra), separators=(",", ":"))
        print("result " + line, flush=True)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
