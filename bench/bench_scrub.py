"""Micro-benchmark: events/s of the default scrubbing policy vs sentry_sdk's EventScrubber.

    python bench/bench_scrub.py [--seconds 1.0] [--corpus DIR]

For every corpus envelope, the first item's payload is parsed with orjson and
scrubbed, in the same process and on the same bytes, by

- relay:  `compile_scrubber(None).scrub_event(event, item_type)` (the full default
  policy: key denylist, value detectors over every string, `_meta` remarks);
- sdk:    `sentry_sdk.scrubber.EventScrubber(recursive=True).scrub_event(event)`
  (key denylist only).

Both timings include `orjson.loads` of the payload (each scrubber needs a fresh
dict) and exclude serialization; `parse` is printed so it can be subtracted. The
two are interleaved in rounds so that machine noise hits both alike; the best
round is reported. Also shown: whole-envelope `scrub_envelope` (parse, scrub,
re-serialize, all items).
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
            scrubber.scrub_event(orjson.loads(payload), item_type)

        def theirs(payload: bytes = payload) -> None:
            sdk.scrub_event(orjson.loads(payload))

        def parse(payload: bytes = payload) -> None:
            orjson.loads(payload)

        def envelope(raw: bytes = raw) -> None:
            env = parse_envelope(raw)
            scrubber.scrub_envelope(env)
            env.serialize()

        r_ours = _rate(ours, args.seconds)
        r_sdk = _rate(theirs, args.seconds)
        r_parse = _rate(parse, args.seconds / 2)
        r_env = _rate(envelope, args.seconds)
        rows.append((path.stem, item_type, len(payload), r_ours, r_sdk, r_parse, r_env))

    head = f"{'event':24} {'type':12} {'bytes':>6} {'relay ev/s':>11} {'sdk ev/s':>10} {'ratio':>6} {'parse/s':>9} {'envelope/s':>11}"
    print(head)
    print("-" * len(head))
    for name, ty, size, r_ours, r_sdk, r_parse, r_env in rows:
        print(
            f"{name:24} {ty:12} {size:6d} {r_ours:11.0f} {r_sdk:10.0f} {r_ours / r_sdk:6.2f} {r_parse:9.0f} {r_env:11.0f}"
        )
    total_ours = len(rows) / sum(1 / r[3] for r in rows)
    total_sdk = len(rows) / sum(1 / r[4] for r in rows)
    print("-" * len(head))
    print(
        f"{'all (harmonic mean)':24} {'':12} {'':6} {total_ours:11.0f} {total_sdk:10.0f} {total_ours / total_sdk:6.2f}"
    )
    print("\nrelay ev/s and sdk ev/s include orjson.loads; ratio = relay / sdk (target >= 0.50).")


if __name__ == "__main__":
    main()
