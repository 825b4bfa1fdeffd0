"""Micro-benchmark: events/s of the default scrubbing policy vs sentry_sdk's EventScrubber.

    python bench/bench_scrub.py [--seconds 1.0] [--corpus DIR]

For every corpus envelope, the first item's payload is parsed with orjson and
scrubbed, in the same process and on the same bytes, by

- relay:  `compile_scrubber(None).scrub_event(event, item_type, report=False)`, as the
  ingest pipeline calls it (the full default policy: key denylist, value detectors
  over every string, `_meta` remarks; no redaction list);
- report: the same with `report=True` (the redaction list `relay scrub` prints);
- cold:   `relay` with the policy's string cache emptied before every event, i.e. an
  event none of whose strings was seen before (the cache is otherwise warm, as in a
  running relay where module names, paths, source lines and messages repeat);
- sdk:    `sentry_sdk.scrubber.EventScrubber(recursive=True).scrub_event(event)`
  (key denylist only).

All timings include `orjson.loads` of the payload (each scrubber needs a fresh
dict) and exclude serialization; `parse` is printed so it can be subtracted. The
measurements are interleaved in rounds so that machine noise hits them alike; the
best round is reported. Also shown: whole-envelope `scrub_envelope` (parse, scrub,
re-serialize, all items; `report=False`).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import orjson
from sentry_sdk.scrubber import EventScrubber

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from relay.processing.scrub import compile_scrubber
from relay.protocol.envelope import parse_envelope

DEFAULT_CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "corpus" / "python-sdk"


def _rate(fn: Callable[[], object], seconds: float) -> float:
    """Calls per second, best of a few rounds within `seconds`."""
    best = 0.0
    rounds = 5
    for _ in range(rounds):
        n = 0
        start = time.perf_counter()
        deadline = start + seconds / rounds
        while True:
            for _ in range(20):
                fn()
            n += 20
            now = time.perf_counter()
            if now >= deadline:
                break
        best = max(best, n / (now - start))
    return best


def _rates(fns: dict[str, Callable[[], object]], seconds: float) -> dict[str, float]:
    """Calls per second of each function, best of rounds that interleave them all."""
    best = dict.fromkeys(fns, 0.0)
    rounds = 10
    per_call = seconds / rounds
    for _ in range(rounds):
        for name, fn in fns.items():
            n = 0
            start = time.perf_counter()
            deadline = start + per_call
            while True:
                for _ in range(10):
                    fn()
                n += 10
                now = time.perf_counter()
                if now >= deadline:
                    break
            best[name] = max(best[name], n / (now - start))
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=1.0, help="time per measurement")
    ap.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    args = ap.parse_args()

    scrubber = compile_scrubber(None)
    sdk = EventScrubber(recursive=True)
    rows = []
    for path in sorted(args.corpus.glob("*.envelope")):
        raw = path.read_bytes()
        item = parse_envelope(raw).items[0]
        payload, item_type = item.payload, item.type

        def ours(payload: bytes = payload, item_type: str = item_type) -> None:
            scrubber.scrub_event(orjson.loads(payload), item_type, report=False)

        def reported(payload: bytes = payload, item_type: str = item_type) -> None:
            scrubber.scrub_event(orjson.loads(payload), item_type)

        def cold(payload: bytes = payload, item_type: str = item_type) -> None:
            scrubber.policy.cache.clear()
            scrubber.scrub_event(orjson.loads(payload), item_type, report=False)

        def theirs(payload: bytes = payload) -> None:
            sdk.scrub_event(orjson.loads(payload))

        def parse(payload: bytes = payload) -> None:
            orjson.loads(payload)

        def envelope(raw: bytes = raw) -> None:
            env = parse_envelope(raw)
            scrubber.scrub_envelope(env, report=False)
            env.serialize()

        rates = _rates(
            {"relay": ours, "report": reported, "cold": cold, "sdk": theirs, "parse": parse},
            args.seconds,
        )
        r_env = _rate(envelope, args.seconds / 2)
        rows.append((path.stem, item_type, len(payload), rates, r_env))

    cols = ("relay", "report", "cold", "sdk")
    head = (
        f"{'event':24} {'type':12} {'bytes':>6} "
        + " ".join(f"{c + ' ev/s':>11}" for c in cols)
        + f" {'ratio':>6} {'parse/s':>9} {'envelope/s':>11}"
    )
    print(head)
    print("-" * len(head))
    for name, ty, size, rates, r_env in rows:
        print(
            f"{name:24} {ty:12} {size:6d} "
            + " ".join(f"{rates[c]:11.0f}" for c in cols)
            + f" {rates['relay'] / rates['sdk']:6.2f} {rates['parse']:9.0f} {r_env:11.0f}"
        )
    mean = {c: len(rows) / sum(1 / r[3][c] for r in rows) for c in cols}
    print("-" * len(head))
    print(
        f"{'all (harmonic mean)':24} {'':12} {'':6} "
        + " ".join(f"{mean[c]:11.0f}" for c in cols)
        + f" {mean['relay'] / mean['sdk']:6.2f}"
    )
    print(
        "\nev/s include orjson.loads; ratio = relay / sdk (target >= 0.50); "
        "target >= 3,000 relay ev/s on error-with-attachment."
    )


if __name__ == "__main__":
    main()
