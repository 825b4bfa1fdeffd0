"""Profile the relay under the `default` scenario's load with py-spy; write the top costs.

    pip install py-spy          # a tool of this benchmark only, not a dependency
    python bench/profile.py [--scenario default] [--duration 12] [--out bench/profile-default.txt]

The harness starts the upstream and the relay as `bench/run.py` does, and attaches
`py-spy record` to the relay (every process of it) for the measurement window only,
after the warm-up. The text written lists functions by own time (the leaf of a
sample) and by total time (anywhere on the stack), and own time by module. Idle
samples (the event loop waiting in epoll) are left out, so the percentages are of
the time the relay was busy.
"""

from __future__ import annotations

import argparse
import datetime as dt
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from corpus import CORPUS_KEY, CORPUS_PROJECT, DEFAULT_CORPUS
from procs import LOOPBACK, REPO, Child, child_env, children
from run import PY, Hooks, Options, load_scenarios, run_floor, run_scenario

BENCH = Path(__file__).resolve().parent
#: `func (path/to/file.py:123)` as py-spy writes frames in its raw format.
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


class PySpy(Hooks):
    def __init__(
        self, binary: str, duration: float, rate: int, raw: Path, native: bool = False
    ) -> None:
        self.binary = binary
        self.native = native
        self.duration = duration
        self.rate = rate
        self.raw = raw
        self.proc: subprocess.Popen[str] | None = None
        self.error = ""

    def measure_start(self, pid: int) -> None:
        argv = [
            self.binary, "record", "--pid", str(pid), "--subprocesses",
            "--duration", str(max(1, int(self.duration))), "--rate", str(self.rate),
            "--format", "raw", "--output", str(self.raw), "--nonblocking", "--full-filenames",
        ]  # fmt: skip
        if self.native:  # py-spy pauses the process for each native sample
            argv.remove("--nonblocking")
            argv.append("--native")
        self.proc = subprocess.Popen(
            argv,
            env=child_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )

    def measure_end(self) -> None:
        if self.proc is None:
            return
        try:
            out, _ = self.proc.communicate(timeout=self.duration + 30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        if self.proc.returncode != 0:
            self.error = out.strip()[-500:]


def _short(path: str) -> str:
    """Paths relative to the repo or to site-packages / the stdlib, for reading."""
    for marker in (str(REPO) + "/", "site-packages/", "/lib/python3.11/", "lib/python3.11/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


def aggregate(raw: str) -> tuple[int, Counter[str], Counter[str], Counter[str]]:
    """(samples, own time per function, total time per function, own time per module)."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    modules: Counter[str] = Counter()
    samples = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        names = []
        for frame in stack.split(";"):
            m = _FRAME.match(frame)
            if m is None:
                names.append((frame, frame))
                continue
            file = _short(m["file"])
            names.append((f"{m['func']} ({file})", file))
        # py-spy puts the process/thread first when profiling subprocesses: skip non-frames.
        names = [n for n in names if "(" in n[0]]
        if not names:
            continue
        samples += count
        own[names[-1][0]] += count
        modules[_module(names[-1][1])] += count
        for name in {n for n, _ in names}:
            total[name] += count
    return samples, own, total, modules


def _module(file: str) -> str:
    if file.startswith("relay/"):
        return file
    head = file.split("/", 1)[0]
    return head if head.endswith(".py") or "/" not in file else head + "/"


def report(
    raw: str, metrics: dict[str, Any], scenario: str, args: argparse.Namespace, top: int = 30
) -> str:
    samples, own, total, modules = aggregate(raw)
    load = (
        f"{args.load_rate:g} envelopes/s offered"
        if args.load_rate
        else f"closed loop, {args.connections} connections"
    )
    date = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
    lines = [
        (
            f"Profile of the pass-through floor (bench/floor.py), {date}"
            if scenario == "floor"
            else f"Profile of the relay, scenario `{scenario}` (bench/scenarios/{scenario}.yaml), {date}"
        ),
        f"py-spy record --subprocesses "
        f"{'--native (pausing the relay per sample)' if args.native else '--nonblocking'} "
        f"--rate {args.sample_rate}, {args.duration:g}s "
        f"after {args.warmup:g}s warm-up; load: {load}, gzip bodies, the default mix.",
        f"Under the profiler: {metrics.get('envelopes_per_s')} envelopes/s, p99 "
        f"{metrics.get('latency_ms', {}).get('p99')} ms, {metrics.get('cpu_s_per_1000')} CPU s per 1,000.",
        f"{samples} busy samples (idle event-loop waits excluded); percentages are of those.",
        "Load generator, upstream and relay share the machine's cores.",
        "",
        f"Top {top} functions by own time (the function itself, not its callees):",
        "",
    ]
    for name, count in own.most_common(top):
        lines.append(f"  {100 * count / samples:5.1f}%  {name}")
    lines += ["", f"Top {top} functions by total time (on the stack):", ""]
    # Frames under which every sample sits (runpy, cli, run_app) say nothing: skip them.
    outer = 0.95 * max(total.values(), default=0)
    for name, count in [(n, c) for n, c in total.most_common() if c < outer][:top]:
        lines.append(f"  {100 * count / samples:5.1f}%  {name}")
    lines += ["", "Own time by module (relay modules by file, others by package):", ""]
    for name, count in modules.most_common(25):
        lines.append(f"  {100 * count / samples:5.1f}%  {name}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--scenario", default="default", help="a name from bench/scenarios/, or `floor`")
    p.add_argument("--duration", type=float, default=12.0)
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--sample-rate", type=int, default=250, help="py-spy samples per second")
    p.add_argument(
        "--load-rate",
        type=float,
        default=500.0,
        help="offered envelopes/s (a rate every scenario sustains, so that every envelope is "
        "also forwarded and the profile shows the steady-state mix); 0 = closed loop",
    )
    p.add_argument("--out", type=Path, default=None, help="default: bench/profile-<scenario>.txt")
    p.add_argument(
        "--raw", type=Path, default=None, help="also keep py-spy's collapsed stacks here"
    )
    p.add_argument(
        "--native",
        action="store_true",
        help="also sample native frames (C extensions, uvloop, the interpreter); slower",
    )
    args = p.parse_args(argv)
    binary = shutil.which("py-spy")
    if binary is None:
        print("py-spy is not installed: pip install py-spy", file=sys.stderr)
        return 2
    scenarios = load_scenarios()
    if args.scenario != "floor" and args.scenario not in scenarios:
        print(f"unknown scenario {args.scenario}; have {', '.join(scenarios)}", file=sys.stderr)
        return 2
    opts = Options(
        corpus=DEFAULT_CORPUS,
        mix="",
        encoding="gzip",
        connections=args.connections,
        warmup=args.warmup,
        duration=args.duration,
        project=CORPUS_PROJECT,
        key=CORPUS_KEY,
    )
    tmp = Path(tempfile.mkdtemp(prefix="relay-profile-"))
    try:
        spy = PySpy(binary, args.duration, args.sample_rate, tmp / "raw.txt", args.native)
        with children() as kids:
            upstream_proc = Child("upstream", [PY, str(BENCH / "upstream.py")], cwd=BENCH)
            kids.append(upstream_proc)
            upstream = (
                f"http://{LOOPBACK}:{upstream_proc.wait_for_line('listening', 30).split()[1]}"
            )
            if args.scenario == "floor":
                metrics = run_floor(upstream, opts, rate=args.load_rate, hooks=spy)
            else:
                metrics = run_scenario(
                    scenarios[args.scenario], upstream, opts, rate=args.load_rate, hooks=spy
                )
        if metrics.get("status") == "not available":
            print(
                f"scenario {args.scenario} is not available: {metrics.get('reason')}",
                file=sys.stderr,
            )
            return 1
        if spy.error or not spy.raw.exists():
            print(f"py-spy failed: {spy.error or 'no output'}", file=sys.stderr)
            return 1
        raw = spy.raw.read_text()
        if args.raw:
            shutil.copy(spy.raw, args.raw)
        out = args.out or BENCH / f"profile-{args.scenario}.txt"
        text = report(raw, metrics, args.scenario, args)
        out.write_text(text)
        print(text)
        print(f"wrote {out}")
        return 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
