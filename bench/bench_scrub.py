"""Micro-benchmark: events/s of the default scrubbing policy vs sentry_sdk's EventScrubber.

    python bench/bench_scrub.py [--seconds 1.0] [--rounds 100] [--corpus DIR]

For every corpus envelope, the first item's payload is parsed with orjson and
scrubbed, in the same process and on the same bytes, by

- relay:  `compile_scrubber(None).scrub_event(event, item_type, report=False)`, as the
  ingest pipeline calls it (the full default policy: key denylist, value detectors
  over every string, `_meta` remarks; no redaction list), the same payload every
  call, so the policy's string cache is warm;
- report: the same with `report=True` (the redaction list `relay scrub` prints);
- fresh:  `relay` on the payload with its volatile values made new for every call:
  ids (`event_id`, `check_in_id`, `trace_id`, `span_id`, `parent_span_id`, ...),
  timestamps (`timestamp`, `start_timestamp`, breadcrumb times, `sent_at`),
  `sample_rand`, and any string value that is a bare hex id or UUID (optionally
  quoted, as in frame `vars`) get random values of the same shape. This is what a
  running relay sees: stack frames, modules, messages and SQL repeat, ids and
  times do not. The variants are generated between measurement rounds, outside the
  timed work, and none is scrubbed twice;
- cold:   `relay` with the policy's string cache emptied before every event, i.e. an
  event none of whose strings was seen before;
- rule:   `relay` under the default policy plus one custom pattern rule applied to
  `$string` (the `full` scenario's), a selector that names a value type only;
- path:   the same rule applied to `$http.headers.x-api-key`, a path selector, which
  sends every value down the walker's general path (each value's path tracked);
- sdk:    `sentry_sdk.scrubber.EventScrubber(recursive=True).scrub_event(event)`
  (key denylist only).

All timings include `orjson.loads` of the payload (each scrubber needs a fresh
dict) and exclude serialization; `parse` is printed so it can be subtracted. The
measurements are interleaved in short rounds (`--rounds`, 100 of 10 ms per column by
default) so that machine noise hits them alike; rates are the best round, and the
`ratio` column is the median of the per-round relay / sdk ratios (each pair measured
moments apart), which a noisy host moves far less than a ratio of two best rounds.
Also shown: whole-envelope `scrub_envelope` (parse, scrub all items incl. text
attachments, re-serialize; `report=False`) on the same envelope every call (`envelope/s`) and on fresh variants of it (`env fresh/s`,
volatile values of headers and payloads made new as above).
"""

from __future__ import annotations

import argparse
import contextlib
import random
import re
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from sentry_sdk.scrubber import EventScrubber

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from relay.config.scrubbing import ScrubbingConfig
from relay.processing.scrub import compile_scrubber
from relay.protocol.envelope import parse_envelope

DEFAULT_CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "corpus" / "python-sdk"

#: The custom rule of the `rule` and `path` columns (bench/scenarios/full.yaml's).
CUSTOM_RULE = {
    "stripe_keys": {
        "type": "pattern",
        "pattern": "sk_(live|test)_[A-Za-z0-9]{10,}",
        "redaction": {"method": "replace", "text": "[stripe-key]"},
    }
}


def _with_rule(selector: str) -> Any:
    return compile_scrubber(
        ScrubbingConfig(
            pii_config={"rules": CUSTOM_RULE, "applications": {selector: ["stripe_keys"]}}
        )
    )


#: Keys whose values are new in every event (ids and times).
VOLATILE_KEYS = frozenset(
    {
        "event_id",
        "check_in_id",
        "trace_id",
        "span_id",
        "parent_span_id",
        "profile_id",
        "replay_id",
        "segment_id",
        "sid",
        "timestamp",
        "start_timestamp",
        "received",
        "sent_at",
        "sample_rand",
    }
)
#: Id-shaped values that stay the same from one event to the next.
STABLE_IDS = frozenset({"public_key"})
#: A bare id anywhere: 16 or 32 hex digits, or a UUID, optionally in quotes.
_ID = re.compile(
    r"'?(?:[0-9a-f]{16}|[0-9a-f]{32}|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})'?"
)
_ISO = re.compile(r"(\d{4}-\d\d-\d\d)T\d\d:\d\d:\d\d(?:\.(\d{1,6}))?(Z?)")
_DECIMAL = re.compile(r"\d+\.\d+")
_HEX = "0123456789abcdef"


def _volatile(value: Any, key: str | None, out: set[str]) -> None:
    """Collect the JSON texts of volatile values in parsed `value` into `out`."""
    if isinstance(value, dict):
        for k, v in value.items():
            _volatile(v, k, out)
    elif isinstance(value, list):
        for v in value:
            _volatile(v, None, out)
    elif isinstance(value, str):
        if (key in VOLATILE_KEYS and value) or (key not in STABLE_IDS and _ID.fullmatch(value)):
            out.add(orjson.dumps(value).decode())
    elif isinstance(value, float) and key in VOLATILE_KEYS:
        out.add(repr(value))


def _fresh_value(text: str, rng: random.Random) -> str:
    """A new value of the same shape (and length) as the JSON text `text`."""
    inner = text[1:-1] if text.startswith('"') else text
    iso = _ISO.fullmatch(inner)
    if iso is not None:
        # Same day, another time of it.
        date, frac, zone = iso.group(1), iso.group(2), iso.group(3)
        new = f"{date}T{rng.randrange(24):02d}:{rng.randrange(60):02d}:{rng.randrange(60):02d}"
        if frac:
            new += f".{rng.randrange(10 ** len(frac)):0{len(frac)}d}"
        new += zone
    elif _DECIMAL.fullmatch(inner):
        whole, digits = inner.split(".")
        # A fraction in [0, 1) (`sample_rand`) or a time up to a day later.
        num = rng.random() if whole == "0" else float(inner) + rng.uniform(0, 86_400)
        new = f"{num:.{len(digits)}f}"
    else:
        count = sum(c in _HEX for c in inner)
        fresh = f"{rng.getrandbits(4 * count):0{count}x}"
        chars = list(inner)
        at = 0
        for i, c in enumerate(chars):
            if c in _HEX:
                chars[i] = fresh[at]
                at += 1
        new = "".join(chars)
    return f'"{new}"' if text.startswith('"') else new


class Variants:
    """Fresh variants of `raw` (an event payload or a whole envelope), made in batches.

    Every distinct volatile value of the parsed `docs` (payloads, headers) gets one new
    value per variant, the same at each of its occurrences; lengths do not change.
    """

    def __init__(self, raw: bytes, docs: list[Any], seed: int) -> None:
        found: set[str] = set()
        for doc in docs:
            _volatile(doc, None, found)
        tokens = sorted((t for t in found if t.encode() in raw), key=len, reverse=True)
        self.tokens = tokens
        self.raw = raw
        self.rng = random.Random(seed)
        # `raw` cut at every occurrence of a token: text, token, text, token, ..., text.
        self.parts: list[bytes] = []
        self.slots: list[int] = []
        pos = 0
        if tokens:
            finder = re.compile(b"|".join(re.escape(t.encode()) for t in tokens))
            for m in finder.finditer(raw):
                self.parts.append(raw[pos : m.start()])
                self.slots.append(tokens.index(m.group(0).decode()))
                pos = m.end()
        self.parts.append(raw[pos:])
        self.pool: list[bytes] = []
        self.pos = 0

    def make(self, n: int) -> None:
        """Replace the pool by `n` new variants (call outside the timed work)."""
        rng, tokens, parts, slots = self.rng, self.tokens, self.parts, self.slots
        pool = []
        for _ in range(n):
            new = [_fresh_value(t, rng).encode() for t in tokens]
            out = [parts[0]]
            for slot, part in zip(slots, parts[1:], strict=True):
                out += (new[slot], part)
            joined = b"".join(out)
            assert len(joined) == len(self.raw)
            pool.append(joined)
        self.pool = pool
        self.pos = 0

    def next(self) -> bytes:
        pos = self.pos
        self.pos = pos + 1
        return self.pool[pos]


def _rates(
    fns: dict[str, Callable[[], object]],
    seconds: float,
    fresh: dict[str, Variants] | None = None,
    rounds: int = 100,
) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Calls per second of each function: the best of rounds that interleave them all,
    and every round's rate (for ratios taken within a round).

    `fresh`: per function name, the variants it consumes; before each round (outside
    the timing) they are regenerated, enough for the round at the best rate so far.
    """
    best = dict.fromkeys(fns, 0.0)
    per_round: dict[str, list[float]] = {name: [] for name in fns}
    per_call = seconds / rounds
    for _ in range(rounds):
        for name, fn in fns.items():
            variants = (fresh or {}).get(name)
            batch = 10
            if variants is not None:
                # Enough for the round at 1.5x its best rate so far (at first: the
                # best of the columns before it, which repeat one payload).
                top = best[name] or max(best.values()) or 20_000.0
                variants.make(int(top * per_call * 1.5) + 2 * batch)
            n = 0
            start = time.perf_counter()
            deadline = start + per_call
            while True:
                if variants is not None and variants.pos + batch > len(variants.pool):
                    break  # never scrub a variant twice
                for _ in range(batch):
                    fn()
                n += batch
                now = time.perf_counter()
                if now >= deadline:
                    break
            if n:
                rate = n / (now - start)
                best[name] = max(best[name], rate)
                per_round[name].append(rate)
    return best, per_round


def _median_ratio(ours: list[float], theirs: list[float]) -> float:
    """The median over rounds of ours / theirs, each pair measured moments apart: a
    noisy host slows both sides of a round alike, unlike a ratio of two best rounds."""
    return statistics.median(a / b for a, b in zip(ours, theirs, strict=False) if b > 0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=1.0, help="time per measurement")
    ap.add_argument("--rounds", type=int, default=100, help="interleaved rounds per measurement")
    ap.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    args = ap.parse_args()

    scrubber = compile_scrubber(None)
    ruled = _with_rule("$string")
    pathed = _with_rule("$http.headers.x-api-key")
    sdk = EventScrubber(recursive=True)
    rows = []
    for seed, path in enumerate(sorted(args.corpus.glob("*.envelope"))):
        raw = path.read_bytes()
        env0 = parse_envelope(raw)
        item = env0.items[0]
        payload, item_type = item.payload, item.type
        event_variants = Variants(payload, [orjson.loads(payload)], seed)
        env_docs: list[Any] = [env0.headers]
        for it in env0.items:
            env_docs.append(it.headers)
            with contextlib.suppress(orjson.JSONDecodeError):
                env_docs.append(orjson.loads(it.payload))
        env_variants = Variants(raw, env_docs, seed + 1000)

        def ours(payload: bytes = payload, item_type: str = item_type) -> None:
            scrubber.scrub_event(orjson.loads(payload), item_type, report=False)

        def reported(payload: bytes = payload, item_type: str = item_type) -> None:
            scrubber.scrub_event(orjson.loads(payload), item_type)

        def fresh(v: Variants = event_variants, item_type: str = item_type) -> None:
            scrubber.scrub_event(orjson.loads(v.next()), item_type, report=False)

        def cold(payload: bytes = payload, item_type: str = item_type) -> None:
            scrubber.policy.cache.clear()
            scrubber.scrub_event(orjson.loads(payload), item_type, report=False)

        def rule(payload: bytes = payload, item_type: str = item_type) -> None:
            ruled.scrub_event(orjson.loads(payload), item_type, report=False)

        def path_(payload: bytes = payload, item_type: str = item_type) -> None:
            pathed.scrub_event(orjson.loads(payload), item_type, report=False)

        def theirs(payload: bytes = payload) -> None:
            sdk.scrub_event(orjson.loads(payload))

        def parse(payload: bytes = payload) -> None:
            orjson.loads(payload)

        def envelope(raw: bytes = raw) -> None:
            env = parse_envelope(raw)
            scrubber.scrub_envelope(env, report=False)
            env.serialize()

        def envelope_fresh(v: Variants = env_variants) -> None:
            env = parse_envelope(v.next())
            scrubber.scrub_envelope(env, report=False)
            env.serialize()

        rates, per_round = _rates(
            {
                "relay": ours,
                "report": reported,
                "fresh": fresh,
                "cold": cold,
                "rule": rule,
                "path": path_,
                "sdk": theirs,
                "parse": parse,
            },
            args.seconds,
            {"fresh": event_variants},
            args.rounds,
        )
        rates["ratio"] = _median_ratio(per_round["relay"], per_round["sdk"])
        rates |= _rates(
            {"envelope": envelope, "env fresh": envelope_fresh},
            args.seconds / 2,
            {"env fresh": env_variants},
            args.rounds,
        )[0]
        rows.append((path.stem, item_type, len(payload), rates))

    cols = ("relay", "report", "fresh", "cold", "rule", "path", "sdk")
    head = (
        f"{'event':24} {'type':12} {'bytes':>6} "
        + " ".join(f"{c + ' ev/s':>11}" for c in cols)
        + f" {'ratio':>6} {'parse/s':>9} {'envelope/s':>11} {'env fresh/s':>11}"
    )
    print(head)
    print("-" * len(head))
    for name, ty, size, rates in rows:
        print(
            f"{name:24} {ty:12} {size:6d} "
            + " ".join(f"{rates[c]:11.0f}" for c in cols)
            + f" {rates['ratio']:6.2f} {rates['parse']:9.0f}"
            + f" {rates['envelope']:11.0f} {rates['env fresh']:11.0f}"
        )
    mean = {c: len(rows) / sum(1 / r[3][c] for r in rows) for c in cols}
    print("-" * len(head))
    print(
        f"{'all (harmonic mean)':24} {'':12} {'':6} "
        + " ".join(f"{mean[c]:11.0f}" for c in cols)
        + f" {mean['relay'] / mean['sdk']:6.2f}"
    )
    print(
        "\nev/s include orjson.loads (best round); ratio = relay / sdk, the median of the "
        "rounds' ratios (all: of the harmonic means); target >= 0.50 per event; "
        "target >= 3,000 relay ev/s on error-with-attachment (fresh and envelope)."
    )


if __name__ == "__main__":
    main()
