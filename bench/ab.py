"""Compare the relay's CPU per envelope between two versions, runs alternated.

    python bench/ab.py                          # HEAD against the working tree, `none`
    python bench/ab.py --base main~3 --exp HEAD --scenario default --pairs 6

This host's speed drifts by up to a third within minutes, so two `bench/run.py` runs
minutes apart cannot tell a 3% change from noise. Here each pair runs both versions
back to back, at a fixed rate every version sustains (so the work per envelope is
the same and the CPU it took is the measure), in alternating order (base first, then
exp first, ...), and the report is the per-pair difference: its median, and its mean
with the standard error.

A version is a git revision, checked out into a temporary work tree (removed at the
end; after a hard kill, `git worktree prune` forgets it), or `.` for this checkout as
it is, uncommitted changes included. Each side runs
its own `bench/` harness and relay code, under this Python, with this checkout's
corpus (a temporary work tree has no `../shared` beside it).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from corpus import DEFAULT_CORPUS

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
WORKTREE = "."

#: Run in a child with one side's `bench/` first on the path: one measured run of a
#: scenario (or the floor) at a fixed rate, its metrics printed as `result {json}`.
DRIVER = """
import json, sys
side, corpus, name, rate, duration, warmup, connections = sys.argv[1:8]
sys.path.insert(0, side + "/bench")
from pathlib import Path
from corpus import CORPUS_KEY, CORPUS_PROJECT
from procs import LOOPBACK, Child, children
from run import BENCH, PY, Options, load_scenarios, run_floor, run_scenario

opts = Options(
    corpus=Path(corpus), mix="", encoding="gzip", connections=int(connections),
    warmup=float(warmup), duration=float(duration), project=CORPUS_PROJECT, key=CORPUS_KEY,
)
with children() as kids:
    up = Child("upstream", [PY, str(BENCH / "upstream.py")], cwd=BENCH)
    kids.append(up)
    upstream = f"http://{LOOPBACK}:{up.wait_for_line('listening', 30).split()[1]}"
    if name == "floor":
        metrics = run_floor(upstream, opts, rate=float(rate))
    else:
        metrics = run_scenario(load_scenarios()[name], upstream, opts, rate=float(rate))
print("result " + json.dumps(metrics), flush=True)
"""


@dataclass
class Side:
    label: str
    revision: str
    path: Path


@dataclass
class Summary:
    pairs: int
    base_us: float
    exp_us: float
    median_diff_us: float
    mean_diff_us: float
    stderr_us: float | None

    @property
    def relative(self) -> float:
        return self.mean_diff_us / self.base_us if self.base_us else 0.0

    def line(self) -> str:
        spread = f" +- {self.stderr_us:.1f}" if self.stderr_us is not None else ""
        return (
            f"exp - base over {self.pairs} pair(s): median {self.median_diff_us:+.1f} us, "
            f"mean {self.mean_diff_us:+.1f}{spread} us per envelope "
            f"({self.relative:+.1%} of base's {self.base_us:.0f} us)"
        )


def summarize(pairs: list[tuple[float, float]]) -> Summary:
    """`pairs`: (base, exp) CPU microseconds per envelope, one tuple per pair."""
    if not pairs:
        raise ValueError("no pairs to summarize")
    diffs = [exp - base for base, exp in pairs]
    stderr = statistics.stdev(diffs) / len(diffs) ** 0.5 if len(diffs) > 1 else None
    return Summary(
        pairs=len(pairs),
        base_us=statistics.median(base for base, _ in pairs),
        exp_us=statistics.median(exp for _, exp in pairs),
        median_diff_us=statistics.median(diffs),
        mean_diff_us=statistics.fmean(diffs),
        stderr_us=stderr,
    )


def checkout(revision: str, parent: Path, label: str) -> Path:
    """A detached work tree of `revision` under `parent` (or this checkout for `.`)."""
    if revision == WORKTREE:
        return REPO
    path = parent / label
    proc = subprocess.run(
        ["git", "-C", str(REPO), "worktree", "add", "--detach", "--force", str(path), revision],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise SystemExit(f"cannot check out {revision!r}: {proc.stderr.strip()}")
    return path


def remove(path: Path) -> None:
    if path != REPO:
        subprocess.run(
            ["git", "-C", str(REPO), "worktree", "remove", "--force", str(path)],
            capture_output=True,
        )


def measure(side: Side, args: argparse.Namespace) -> dict[str, Any]:
    argv = [
        sys.executable, "-c", DRIVER, str(side.path), str(args.corpus), args.scenario, str(args.rate),
        str(args.duration), str(args.warmup), str(args.connections),
    ]  # fmt: skip
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=args.duration + 180)
    for line in proc.stdout.splitlines():
        if line.startswith("result "):
            metrics: dict[str, Any] = json.loads(line[len("result ") :])
            return metrics
    raise SystemExit(
        f"{side.label} ({side.revision}) gave no result (exit {proc.returncode}):\n"
        f"{proc.stderr[-2000:]}"
    )


def cpu_us(metrics: dict[str, Any]) -> float:
    """CPU microseconds per envelope: the target's, plus redis-server's if reported."""
    per_1000 = metrics.get("cpu_s_per_1000")
    if per_1000 is None:
        raise SystemExit(f"a run reported no CPU per envelope: {metrics.get('reason')}")
    return float(per_1000 + (metrics.get("redis_cpu_s_per_1000") or 0.0)) * 1000


def p99_ms(metrics: dict[str, Any]) -> float:
    """The run's p99 latency (at a fixed rate: time from the request's due time)."""
    return float(metrics.get("latency_ms", {}).get("p99", float("nan")))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--base", default="HEAD", help="git revision, or '.' (default: HEAD)")
    p.add_argument("--exp", default=WORKTREE, help="git revision, or '.' (default: '.')")
    p.add_argument("--scenario", default="none", help="a name from bench/scenarios/, or floor")
    p.add_argument("--rate", type=float, default=800.0, help="envelopes/s offered (800)")
    p.add_argument("--pairs", type=int, default=4)
    p.add_argument("--duration", type=float, default=8.0, help="measured seconds per run")
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--connections", type=int, default=64)
    p.add_argument(
        "--corpus",
        type=Path,
        default=DEFAULT_CORPUS,
        help="both sides send this corpus (default: this checkout's)",
    )
    p.add_argument("--json", type=Path, default=None, help="also write the runs as JSON")
    args = p.parse_args(argv)
    if args.pairs < 1:
        p.error("--pairs must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="relay-ab-") as tmp:
        sides: list[Side] = []
        try:
            for label, revision in (("base", args.base), ("exp", args.exp)):
                sides.append(Side(label, revision, checkout(revision, Path(tmp), label)))
            runs: list[dict[str, Any]] = []
            pairs: list[tuple[float, float]] = []
            print(
                f"{args.scenario} at {args.rate:g}/s, {args.duration:g}s per run; "
                f"base {args.base}, exp {args.exp}",
                flush=True,
            )
            for n in range(args.pairs):
                order = sides if n % 2 == 0 else sides[::-1]
                got = {side.label: measure(side, args) for side in order}
                base, exp = cpu_us(got["base"]), cpu_us(got["exp"])
                pairs.append((base, exp))
                runs.append({"pair": n + 1, "first": order[0].label, **got})
                print(
                    f"pair {n + 1} ({order[0].label} first): base {base:.1f} us, "
                    f"exp {exp:.1f} us, diff {exp - base:+.1f} us per envelope; "
                    f"p99 base {p99_ms(got['base']):.2f} ms, exp {p99_ms(got['exp']):.2f} ms",
                    flush=True,
                )
        finally:
            for side in sides:
                remove(side.path)
    summary = summarize(pairs)
    print(summary.line())
    p99s = {side: statistics.median(p99_ms(r[side]) for r in runs) for side in ("base", "exp")}
    print(f"p99 latency, median of the runs: base {p99s['base']:.2f} ms, exp {p99s['exp']:.2f} ms")
    envelopes = min(r[side]["ok"] for r in runs for side in ("base", "exp"))
    if envelopes:
        # /proc counts CPU in clock ticks: one tick over a run's envelopes.
        tick_us = 1e6 / os.sysconf("SC_CLK_TCK") / envelopes
        print(f"resolution: {tick_us:.1f} us per envelope per run (one clock tick)")
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {
                    "base": args.base,
                    "exp": args.exp,
                    "scenario": args.scenario,
                    "rate": args.rate,
                    "summary": {**summary.__dict__, "relative": summary.relative},
                    "runs": runs,
                },
                indent=2,
            )
            + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
