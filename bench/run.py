"""The benchmark harness: the relay under load, next to a pass-through floor.

    python bench/run.py [--duration 10] [--warmup 2] [--connections 64]
                        [--scenarios none,default,...|all] [--rate-scenarios ...]
                        [--rounds N] [--rate-rounds N]
                        [--loadgen auto|wrk|aiohttp] [--json out.json] [--list]
    python bench/run.py --soak      # `default`, 1,000 connections, 300 s: RSS over time

Starts, each in its own process group: a recording upstream (bench/upstream.py),
the target (bench/floor.py, or `python -m relay run` on a generated config), and
the load generator: `wrk` with bench/wrk.lua (bench/wrkgen.py) for closed-loop
runs when wrk is installed, else the aiohttp client bench/loadgen.py, which also
drives every fixed-rate run, on its lean httptools client (wrk has no constant-rate
mode). A scenario is a YAML file in
bench/scenarios/: a relay config plus a `bench:` section (`description`,
optionally `baseline`), which the harness removes before filling in the listen
port, the upstream, the corpus project, `redis.url` and `spool.path`.

A scenario the relay cannot run yet (`relay check-config` fails, the relay does
not start) is reported as "not available" with the reason. One that runs but
whose feature shows no sign of work (no Redis commands, no spool files, a single
process for `workers: 2`) is "not exercised", numbers kept.

Then, at a fixed offered rate of half the floor's throughput, the floor and the
`--rate-scenarios` are measured again for latency. With several rounds (`--rounds`,
`--rate-rounds`) the floor runs first in each round, every ratio is taken within its
round, and the report shows the median over the rounds beside each round's value.
The target's resident set is sampled every second of each window (start, end, peak,
growth per minute over the second half). Results: a table on stdout and JSON
(bench/results/<time>.json unless --json).
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from corpus import CORPUS_KEY, CORPUS_PROJECT, DEFAULT_CORPUS, parse_mix
from procs import (
    LOOPBACK,
    Child,
    ChildFailed,
    TreeSampler,
    children,
    free_port,
    raise_nofile,
    write_results,
)

BENCH = Path(__file__).resolve().parent
SCENARIOS_DIR = BENCH / "scenarios"
DEFAULT_SCENARIOS = (
    "none",
    "default",
    "default-redis",
    "default-redis-exact",
    "default-redis-cached",
    "default-spool",
    "workers-2",
    "workers-2-redis",
)
DEFAULT_RATE_SCENARIOS = (
    "none",
    "default",
    "default-redis",
    "default-redis-exact",
    "default-redis-cached",
    "workers-2-redis",
)
#: The scenarios with a latency target at the fixed rate (`none` runs there for its CPU).
#: `default-redis` has the relay's default quota cache (`reserve`); `default-redis-exact`
#: turns it off, `default-redis-cached` has it in `share` mode.
P99_TARGETS = ("default", "default-redis", "default-redis-exact", "default-redis-cached")
#: Measured at the fixed rate beside the targets, but not one of them: more than one core.
P99_REPORTED = ("workers-2-redis",)
#: `--soak`: the issue's memory target, "RSS stays under 150 MB with 1,000 concurrent
#: connections and does not grow over a 5-minute run".
SOAK_SCENARIO = "default"
SOAK_CONNECTIONS = 1000
SOAK_DURATION_S = 300.0
SOAK_WARMUP_S = 10.0
SOAK_RSS_LIMIT_MB = 150.0
PY = sys.executable

OK = "ok"
NOT_AVAILABLE = "not available"
NOT_EXERCISED = "not exercised"


# --- scenarios ----------------------------------------------------------------------------


@dataclass
class Scenario:
    name: str
    description: str
    config: dict[str, Any]
    baseline: str | None = None


def load_scenario(path: Path) -> Scenario:
    data = yaml.safe_load(path.read_text()) or {}
    meta = data.pop("bench", None) or {}
    return Scenario(path.stem, meta.get("description", ""), data, meta.get("baseline"))


def load_scenarios(directory: Path = SCENARIOS_DIR) -> dict[str, Scenario]:
    return {path.stem: load_scenario(path) for path in sorted(directory.glob("*.yaml"))}


def build_config(
    scenario: Scenario,
    *,
    port: int,
    upstream: str,
    workdir: Path,
    redis_url: str | None,
    project: int,
    key: str,
) -> dict[str, Any]:
    """The scenario's config with the harness's parts filled in."""
    cfg = copy.deepcopy(scenario.config)
    cfg["listen"] = {**cfg.get("listen", {}), "host": LOOPBACK, "port": port}
    cfg["upstream"] = {**cfg.get("upstream", {}), "url": upstream}
    cfg.setdefault("projects", [{"id": project, "keys": [key]}])
    cfg.setdefault("log", {"level": "warning"})
    cfg.setdefault("shutdown_timeout", 5)
    if "redis" in cfg:
        cfg["redis"] = {**(cfg["redis"] or {}), "url": redis_url or "redis://127.0.0.1:1/0"}
    if "spool" in cfg:
        spool = dict(cfg["spool"] or {})
        spool.setdefault("path", str(workdir / "spool"))
        cfg["spool"] = spool
    return cfg


def check_config(path: Path, workdir: Path) -> str | None:
    """None when `relay check-config` accepts the file, else why not."""
    try:
        proc = subprocess.run(
            [PY, "-m", "relay", "check-config", str(path)],
            cwd=workdir,
            env=_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
    except subprocess.TimeoutExpired:
        return "relay check-config timed out"
    if proc.returncode == 0:
        return None
    text = (proc.stderr or proc.stdout).strip().splitlines()
    return "relay check-config: " + " | ".join(line.strip() for line in text[-6:])


def _env() -> dict[str, str]:
    from procs import child_env

    return child_env()


# --- measurement --------------------------------------------------------------------------


@dataclass
class Options:
    corpus: Path
    mix: str
    encoding: str
    connections: int
    warmup: float
    duration: float
    project: int
    key: str
    #: Closed-loop load generator: "wrk" or "aiohttp" (fixed-rate runs always use
    #: bench/loadgen.py's httptools client).
    loadgen: str = "aiohttp"
    wrk_threads: int = 1


def loadgen_argv(target_url: str, opts: Options, rate: float) -> list[str]:
    """The command of the load generator for one run."""
    common = [
        "--url",
        target_url,
        "--corpus",
        str(opts.corpus),
        "--encoding",
        opts.encoding,
        "--connections",
        str(opts.connections),
        "--warmup",
        str(opts.warmup),
        "--duration",
        str(opts.duration),
        "--project",
        str(opts.project),
        "--key",
        opts.key,
    ]
    if opts.mix:
        common += ["--mix", opts.mix]
    if rate <= 0 and opts.loadgen == "wrk":
        return [PY, str(BENCH / "wrkgen.py"), *common, "--threads", str(opts.wrk_threads)]
    return [PY, str(BENCH / "loadgen.py"), *common, "--rate", str(rate)]


@dataclass
class Probe:
    """Signs that a scenario's feature did work, sampled while the load runs."""

    spool_dir: Path | None = None
    spool_files_max: int = 0
    redis_port: int | None = None
    redis_commands: int | None = None
    #: redis-server's CPU seconds in the window (user + system): the quota checks' cost
    #: that the relay's own CPU does not show.
    redis_cpu_s: float | None = None
    workers: int = 1
    #: The quota cache is on: most checks never reach Redis, only its syncs (one a second).
    quota_cache: bool = False
    _redis_start: tuple[int, float] = (0, 0.0)
    notes: list[str] = field(default_factory=list)

    def sample(self) -> None:
        if self.spool_dir is not None and self.spool_dir.exists():
            count = sum(1 for p in self.spool_dir.rglob("*") if p.is_file())
            self.spool_files_max = max(self.spool_files_max, count)

    def start(self) -> None:
        if self.redis_port is not None:
            self._redis_start = _redis_stats(self.redis_port)

    def stop(self) -> None:
        if self.redis_port is not None:
            commands, cpu = _redis_stats(self.redis_port)
            self.redis_commands = commands - self._redis_start[0]
            self.redis_cpu_s = round(cpu - self._redis_start[1], 3)


class Hooks:
    """Called as the measurement window opens and closes (bench/profile.py attaches there)."""

    def measure_start(self, pid: int) -> None:
        """`pid`: the target's root process."""

    def measure_end(self) -> None:
        pass


def _redis_stats(port: int) -> tuple[int, float]:
    """Commands processed and CPU seconds used (user + system, every thread) so far."""
    import redis

    client = redis.Redis(host=LOOPBACK, port=port, socket_timeout=5)
    try:
        # The INFO call itself counts as one command; it is subtracted by the delta.
        info = client.info("everything")
        cpu = float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
        return int(info["total_commands_processed"]), cpu
    finally:
        client.close()


def _upstream_stats(base: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{base}/__bench/stats", timeout=5) as resp:
        data: dict[str, Any] = json.loads(resp.read())
        return data


def drive(
    target_url: str,
    target_pid: int,
    upstream: str,
    opts: Options,
    *,
    rate: float = 0.0,
    probe: Probe | None = None,
    kids: list[Child],
    hooks: Hooks | None = None,
) -> dict[str, Any]:
    """Run the load generator against a started target; return its metrics."""
    probe = probe or Probe()
    sampler = TreeSampler(target_pid)
    argv = loadgen_argv(target_url, opts, rate)
    up_begin = _upstream_stats(upstream)["envelopes"]
    loadgen = Child("load generator", argv, cwd=BENCH)
    kids.append(loadgen)
    wait = opts.warmup + 30
    # Starting (imports, the mix, opening the connections) takes longer with many connections.
    loadgen.wait_for_line("measure-start", wait + opts.connections / 50)
    sampler.start()
    probe.start()
    if hooks is not None:
        hooks.measure_start(target_pid)
    up0 = _upstream_stats(upstream)
    deadline = time.monotonic() + opts.duration + 30
    line = None
    while time.monotonic() < deadline:
        line = loadgen.next_line(0.25)
        sampler.sample_processes()
        probe.sample()
        if line is not None and line.startswith("measure-end"):
            break
        if line is None and not loadgen.alive():
            break
    sampler.stop()
    probe.stop()
    if hooks is not None:
        hooks.measure_end()
    up1 = _upstream_stats(upstream)
    rss = sampler.peak_rss_mb()
    result_line = loadgen.wait_for_line("result", 60)
    loadgen.stop()
    metrics: dict[str, Any] = json.loads(result_line.split(" ", 1)[1])
    metrics.setdefault("loadgen", "aiohttp")
    up_final, drained = _wait_drained(upstream, DRAIN_TIMEOUT_S)
    window = metrics["window_s"] or 1.0
    ok = metrics["ok"]
    delivered = (up1["envelopes"] - up0["envelopes"]) / window
    # Share of answered envelopes that reach the upstream (filters drop some on purpose).
    fraction = (up_final - up_begin) / metrics["total_ok"] if metrics["total_ok"] else None
    sustained = delivered / fraction if fraction else None
    metrics.update(
        delivered_per_s=round(delivered, 1),
        delivery_fraction=round(fraction, 4) if fraction is not None else None,
        sustained_per_s=round(min(sustained, metrics["envelopes_per_s"]), 1)
        if sustained is not None
        else None,
        backlog_at_end=up_final - up1["envelopes"],
        drained=drained,
        upstream_bad=up1["bad"] - up0["bad"],
        upstream_cpu_s=round(up1.get("cpu_s", 0.0) - up0.get("cpu_s", 0.0), 3),
        cpu_s=round(sampler.cpu_s, 3),
        cpu_s_per_1000=round(sampler.cpu_s / ok * 1000, 4) if ok else None,
        peak_rss_mb=round(rss, 1),
        **sampler.rss_summary(),
        processes=sampler.max_processes,
        machine_cpu_busy=round(sampler.machine_busy, 3),
    )
    if probe.redis_commands is not None:
        metrics["redis_commands"] = probe.redis_commands
        metrics["redis_commands_per_envelope"] = round(probe.redis_commands / ok, 3) if ok else None
    if probe.redis_cpu_s is not None:
        metrics["redis_cpu_s"] = probe.redis_cpu_s
        metrics["redis_cpu_s_per_1000"] = round(probe.redis_cpu_s / ok * 1000, 4) if ok else None
    if probe.spool_dir is not None:
        metrics["spool_files_max"] = probe.spool_files_max
    return metrics


#: Seconds to wait, after the load stops, for the target to deliver what it queued.
DRAIN_TIMEOUT_S = 30.0


def _wait_drained(upstream: str, timeout: float, quiet: float = 1.0) -> tuple[int, bool]:
    """The upstream's envelope count once it stopped growing for `quiet` seconds."""
    deadline = time.monotonic() + timeout
    last = _upstream_stats(upstream)["envelopes"]
    still_since = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = _upstream_stats(upstream)["envelopes"]
        if now != last:
            last, still_since = now, time.monotonic()
        elif time.monotonic() - still_since >= quiet:
            return last, True
    return last, False


def wait_http(url: str, child: Child, timeout: float) -> None:
    """Wait until GET `url` answers 200, or raise ChildFailed when the child dies or stalls."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not child.alive():
            raise ChildFailed(f"{child.name} exited with status {child.proc.returncode}", child)
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.05)
    raise ChildFailed(f"{child.name} did not answer {url} within {timeout:.0f}s", child)


def run_floor(
    upstream: str, opts: Options, *, rate: float = 0.0, hooks: Hooks | None = None
) -> dict[str, Any]:
    with children() as kids:
        floor = Child("floor", [PY, str(BENCH / "floor.py"), "--upstream", upstream], cwd=BENCH)
        kids.append(floor)
        port = int(floor.wait_for_line("listening", 30).split()[1])
        metrics = drive(
            f"http://{LOOPBACK}:{port}",
            floor.pid,
            upstream,
            opts,
            rate=rate,
            kids=kids,
            hooks=hooks,
        )
    return {
        "name": "floor",
        "description": (
            "pass-through on the relay's upstream client (bench/floor.py, BENCH_FLOOR_CLIENT=lean)"
            if os.environ.get("BENCH_FLOOR_CLIENT") == "lean"
            else "aiohttp pass-through (bench/floor.py)"
        ),
        "status": OK,
        **metrics,
    }


def run_scenario(
    scenario: Scenario,
    upstream: str,
    opts: Options,
    *,
    rate: float = 0.0,
    hooks: Hooks | None = None,
    keep_config: Path | None = None,
) -> dict[str, Any]:
    """Measure one scenario; never raises for a scenario the relay cannot run."""
    out: dict[str, Any] = {"name": scenario.name, "description": scenario.description}
    workdir = Path(tempfile.mkdtemp(prefix=f"relay-bench-{scenario.name}-"))
    try:
        with children() as kids:
            redis_url = None
            probe = Probe()
            if "redis" in scenario.config:
                binary = shutil.which("redis-server")
                if binary is None:
                    return {
                        **out,
                        "status": NOT_AVAILABLE,
                        "reason": "redis-server is not installed",
                    }
                redis_port = free_port()
                kids.append(start_redis(binary, redis_port, workdir))
                redis_url = f"redis://{LOOPBACK}:{redis_port}/0"
                probe.redis_port = redis_port
            port = free_port()
            cfg = build_config(
                scenario,
                port=port,
                upstream=upstream,
                workdir=workdir,
                redis_url=redis_url,
                project=opts.project,
                key=opts.key,
            )
            if "spool" in cfg:
                probe.spool_dir = Path(cfg["spool"]["path"])
            probe.workers = int(cfg.get("workers", 1))
            # The quota cache is on unless a scenario turns it off (`quota_cache_ratio: 0`).
            probe.quota_cache = (cfg.get("redis") or {}).get("quota_cache_ratio") != 0
            path = workdir / "relay.yaml"
            path.write_text(yaml.safe_dump(cfg, sort_keys=False))
            if keep_config is not None:
                shutil.copy(path, keep_config)
            problem = check_config(path, workdir)
            if problem is not None:
                return {**out, "status": NOT_AVAILABLE, "reason": problem}
            relay = Child(
                f"relay ({scenario.name})",
                [PY, "-m", "relay", "run", "--config", str(path)],
                cwd=workdir,
            )
            kids.append(relay)
            try:
                wait_http(f"http://{LOOPBACK}:{port}/healthz", relay, 30)
            except ChildFailed as exc:
                tail = relay.describe_failure()
                return {**out, "status": NOT_AVAILABLE, "reason": f"{exc}: {tail}".strip()}
            metrics = drive(
                f"http://{LOOPBACK}:{port}",
                relay.pid,
                upstream,
                opts,
                rate=rate,
                probe=probe,
                kids=kids,
                hooks=hooks,
            )
            out.update(status=OK, reason=None, **metrics)
            unexercised = _unexercised(probe, metrics)
            if unexercised:
                out.update(status=NOT_EXERCISED, reason=unexercised)
            if not relay.alive():
                out.update(status=NOT_AVAILABLE, reason=f"relay died: {relay.describe_failure()}")
            return out
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _unexercised(probe: Probe, metrics: dict[str, Any]) -> str | None:
    reasons = []
    # With the quota cache, a sync a second (and a check per window) is all Redis sees.
    least = 3 if probe.quota_cache else max(10, metrics["ok"] // 100)
    if probe.redis_commands is not None and probe.redis_commands < least:
        reasons.append(
            f"Redis saw {probe.redis_commands} commands for {metrics['ok']} envelopes "
            "(the relay does not use the `redis` section yet?)"
        )
    if probe.spool_dir is not None and probe.spool_files_max == 0:
        reasons.append("no file ever appeared in the spool directory")
    if probe.workers > 1 and metrics["processes"] < probe.workers:
        reasons.append(f"{metrics['processes']} relay process(es) for `workers: {probe.workers}`")
    return "; ".join(reasons) or None


def start_redis(binary: str, port: int, workdir: Path) -> Child:
    child = Child(
        "redis-server",
        [
            binary,
            "--port",
            str(port),
            "--bind",
            LOOPBACK,
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],
        cwd=workdir,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            _redis_stats(port)
            return child
        except Exception:
            time.sleep(0.05)
    child.stop()
    raise ChildFailed(f"redis-server did not start on port {port}", child)


# --- report -------------------------------------------------------------------------------


def add_ratios(rows: list[dict[str, Any]], floor: dict[str, Any] | None) -> None:
    by_name = {row["name"]: row for row in rows}
    for row in rows:
        if row.get("status") == NOT_AVAILABLE or floor is None:
            continue
        row["vs_floor"] = {
            "throughput": _ratio(_throughput(row), _throughput(floor)),
            "answered": _ratio(row.get("envelopes_per_s"), floor.get("envelopes_per_s")),
            "p99": _ratio(row["latency_ms"]["p99"], floor["latency_ms"]["p99"]),
            "cpu": _ratio(floor.get("cpu_s_per_1000"), envelope_cpu(row)),
        }
    for row in rows:
        base = SCENARIO_BASELINES.get(row["name"])
        if base and base in by_name and row.get("status") != NOT_AVAILABLE:
            row[f"vs_{base}"] = {"throughput": _ratio(_throughput(row), _throughput(by_name[base]))}


SCENARIO_BASELINES: dict[str, str] = {}


#: The floor's own row in the tables.
FLOOR_RATIOS = {"throughput": 1.0, "p99": 1.0, "cpu": 1.0}


def envelope_cpu(row: dict[str, Any]) -> float | None:
    """CPU seconds per 1,000 envelopes that the target cost the machine: its own, plus
    redis-server's where it counts quotas there."""
    own = row.get("cpu_s_per_1000")
    if own is None:
        return None
    return round(own + (row.get("redis_cpu_s_per_1000") or 0.0), 4)


def combine_rounds(
    rounds: list[tuple[dict[str, Any] | None, list[dict[str, Any]]]],
) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """The last round's rows, with every ratio replaced by its median over the rounds
    (each round's own values kept under `rounds`). One noisy window, of the floor or of
    a scenario, then moves a ratio much less."""
    floor, rows = rounds[-1]
    if len(rounds) == 1:
        return floor, rows
    if floor is not None:
        floors = [f for f, _ in rounds if f is not None]
        floor = {
            **floor,
            "envelopes_per_s": statistics.median(f["envelopes_per_s"] for f in floors),
            "sustained_per_s": statistics.median(
                f.get("sustained_per_s") or f["envelopes_per_s"] for f in floors
            ),
            "cpu_s_per_1000": _median(f.get("cpu_s_per_1000") for f in floors),
            "rounds": [
                {"envelopes_per_s": f["envelopes_per_s"], "cpu_s_per_1000": f.get("cpu_s_per_1000")}
                for f in floors
            ],
        }
    for i, row in enumerate(rows):
        per_round = [r[i] for _, r in rounds]
        row["rounds"] = [
            {
                k: dict(v) if isinstance(v, dict) else v
                for k, v in r.items()
                if k.startswith("vs_") or k in _PER_ROUND
            }
            for r in per_round
        ]
        for key in _PER_ROUND:
            if key in row:
                row[key] = _median(r.get(key) for r in per_round)
        for key in [k for k in row if k.startswith("vs_")]:
            for metric in row[key]:
                values = [r[key][metric] for r in per_round if r.get(key, {}).get(metric)]
                if values:
                    row[key][metric] = round(statistics.median(values), 3)
    return floor, rows


#: Kept per round, and reported as the median over the rounds.
_PER_ROUND = (
    "envelopes_per_s",
    "sustained_per_s",
    "cpu_s_per_1000",
    "redis_cpu_s_per_1000",
    "cores",
)


def _cores(row: dict[str, Any]) -> float | None:
    """The CPU the row's target used over its window, in cores."""
    cpu, window = row.get("cpu_s"), row.get("window_s")
    return round(cpu / window, 3) if cpu and window else None


def with_cores(row: dict[str, Any]) -> dict[str, Any]:
    """`row`, with `cores` (kept per round, so that rounds report their median)."""
    cores = _cores(row)
    if cores is not None:
        row["cores"] = cores
    return row


def combine_latency_rounds(
    rounds: list[tuple[dict[str, Any] | None, list[dict[str, Any]]]],
) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """`combine_rounds` for the fixed-rate runs, where each round's p99 was taken against
    that round's floor: the ratios and the CPU are medians over the rounds, and the
    latencies shown are those of the median round (by p99 ratio; the floor's by its
    p99), the lower one of the middle two for an even count. Each round's p99 is kept
    under `rounds` as `p99_ms`."""
    if len(rounds) == 1:
        return rounds[0]
    floor_lats = [f["latency_ms"] for f, _ in rounds if f is not None]
    count = len(rounds[-1][1])
    row_lats = [[r[i].get("latency_ms") for _, r in rounds] for i in range(count)]
    row_ratios = [[r[i].get("vs_floor", {}).get("p99") for _, r in rounds] for i in range(count)]
    floor, rows = combine_rounds(rounds)
    if floor is not None and floor_lats:
        floor["latency_ms"] = floor_lats[_median_index([lat["p99"] for lat in floor_lats])]
        for entry, lat in zip(floor["rounds"], floor_lats, strict=True):
            entry["p99_ms"] = lat["p99"]
    for row, lats, ratios in zip(rows, row_lats, row_ratios, strict=True):
        known = [i for i, ratio in enumerate(ratios) if ratio is not None and lats[i]]
        if known:
            row["latency_ms"] = lats[known[_median_index([ratios[i] for i in known])]]
        for entry, lat in zip(row.get("rounds", []), lats, strict=True):
            entry["p99_ms"] = lat.get("p99") if lat else None
    return floor, rows


def _median_index(values: list[float]) -> int:
    """Where the median of `values` is (the lower middle one for an even count)."""
    order = sorted(range(len(values)), key=values.__getitem__)
    return order[(len(values) - 1) // 2]


def _median(values: Iterable[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return round(statistics.median(known), 4) if known else None


def _throughput(row: dict[str, Any]) -> float | None:
    """Sustained envelopes/s: answered, less what piled up undelivered in the outbox."""
    value = row.get("sustained_per_s")
    return value if value is not None else row.get("envelopes_per_s")


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or not b:
        return None
    return round(a / b, 3)


def _fmt(value: Any, spec: str = "") -> str:
    if value is None:
        return "-"
    return format(value, spec)


def soak_summary(row: dict[str, Any]) -> str:
    """One line on the memory target, from a closed-loop row's RSS series."""
    head = f"soak {row['name']}, {row.get('connections')} connections, {row.get('window_s')}s"
    if row.get("status") == NOT_AVAILABLE or not row.get("rss_mb"):
        return f"{head}: no RSS samples ({row.get('status')}: {_clip(row.get('reason'))})"
    growth = row.get("rss_growth_mb_per_min")
    return (
        f"{head} ({row.get('loadgen')}): RSS start {row['rss_start_mb']:.1f} MB, "
        f"end {row['rss_end_mb']:.1f} MB, peak {row['rss_peak_mb']:.1f} MB "
        f"(VmHWM {row['peak_rss_mb']:.1f} MB), growth {_fmt(growth, '+.3f')} MB/min "
        f"over the second half; {_fmt(row.get('sustained_per_s'), '.0f')} envelopes/s, "
        f"non200 {sum(row['non_200'].values())}, err {sum(row['errors'].values())} "
        f"| target: RSS < {SOAK_RSS_LIMIT_MB:.0f} MB, growth ~0 (reported, not asserted)"
    )


def table(rows: list[dict[str, Any]], title: str) -> str:
    head = (
        f"{'scenario':<15}{'ans/s':>7}{'sust/s':>8}{'xfloor':>8}{'p50 ms':>8}{'p99 ms':>8}"
        f"{'p999 ms':>9}{'p99 xfl':>8}{'cpu s/1k':>9}{'cpu xfl':>8}{'RSS MB':>7}{'backlog':>8}"
        f"{'non200':>7}"
        f"{'err':>5}  status"
    )
    lines = [title, head, "-" * len(head)]
    for row in rows:
        if row.get("status") == NOT_AVAILABLE:
            lines.append(f"{row['name']:<15}  not available: {_clip(row.get('reason'))}")
            continue
        lat = row["latency_ms"]
        vs = row.get("vs_floor", {})
        status = row.get("status", OK)
        if row.get("reason"):
            status += ": " + _clip(row["reason"])
        extra = [
            f"{k}: {v['throughput']}x"
            for k, v in row.items()
            if k.startswith("vs_") and k != "vs_floor"
        ]
        if extra:
            status += " (" + ", ".join(extra) + ")"
        lines.append(
            f"{row['name']:<15}{_fmt(row['envelopes_per_s'], '.0f'):>7}"
            f"{_fmt(row.get('sustained_per_s'), '.0f'):>8}{_fmt(vs.get('throughput'), '.2f'):>8}"
            f"{_fmt(lat['p50'], '.1f'):>8}{_fmt(lat['p99'], '.1f'):>8}{_fmt(lat['p999'], '.1f'):>9}"
            f"{_fmt(vs.get('p99'), '.2f'):>8}{_fmt(envelope_cpu(row), '.3f'):>9}"
            f"{_fmt(vs.get('cpu'), '.2f'):>8}"
            f"{_fmt(row.get('peak_rss_mb'), '.0f'):>7}{_fmt(row.get('backlog_at_end')):>8}"
            f"{sum(row['non_200'].values()):>7}{sum(row['errors'].values()):>5}  {status}"
        )
    return "\n".join(lines)


def _clip(text: object, width: int = 160) -> str:
    value = str(text or "")
    return value if len(value) <= width else value[: width - 3] + "..."


def targets(results: dict[str, Any]) -> list[str]:
    """The issue's targets, reported (never asserted)."""
    rows = {r["name"]: r for r in results["scenarios"]}
    out = []

    def usable(name: str) -> dict[str, Any] | None:
        row = rows.get(name)
        return row if row is not None and row.get("status") == OK else None

    fixed = results.get("fixed_rate")
    at_rate = {r["name"]: r for r in fixed["scenarios"]} if fixed else {}

    def throughput(name: str, target: str) -> None:
        if (r := usable(name)) is None:
            return
        line = f"{name} throughput >= {target}x floor: {r['vs_floor']['throughput']}x"
        # The steadier reading: the floor's CPU per envelope over the scenario's.
        cpu = [f"closed loop {_fmt(r['vs_floor'].get('cpu'))}x"]
        fixed_row = at_rate.get(name)
        if fixed_row is not None and fixed_row.get("status") == OK and fixed_row.get("vs_floor"):
            cpu.append(f"at {fixed['rate']:.0f}/s {_fmt(fixed_row['vs_floor'].get('cpu'))}x")
        out.append(f"{line} (CPU per envelope x floor: {', '.join(cpu)})")

    throughput("default-redis", "0.50")
    throughput("default-redis-exact", "0.50")
    throughput("default-redis-cached", "0.50")
    throughput("none", "0.80")
    if (r := usable("workers-2")) is not None and "vs_default" in r:
        out.append(f"workers-2 >= 1.6x default: {r['vs_default']['throughput']}x")
    if (r := usable("workers-2-redis")) is not None and "vs_default-redis" in r:
        out.append(
            "  (workers-2-redis: "
            f"{r['vs_default-redis']['throughput']}x default-redis, reported, no target)"
        )
    if fixed:
        for row in fixed["scenarios"]:
            if row.get("status") != OK or not row.get("vs_floor"):
                continue
            line = (
                f"{row['name']} p99 at {fixed['rate']:.0f}/s < 2x floor p99: "
                f"{row['vs_floor']['p99']}x{_busy(row)}"
            )
            if row["name"] in P99_TARGETS:
                out.append(line)
            elif row["name"] in P99_REPORTED:
                out.append(f"  ({line}; two workers, the target is for one)")
    return out


def _busy(row: dict[str, Any]) -> str:
    """How much CPU the target used at the fixed rate: near one core (a worker's all),
    requests queue and the p99 measures that, not the relay's added latency."""
    cores = row.get("cores") or _cores(row)
    return f" (the relay used {cores:.2f} cores at this rate)" if cores else ""


# --- main ---------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    # Defaults of None are filled in by `apply_presets` (they differ under --soak).
    p.add_argument(
        "--duration", type=float, default=None, help="measured seconds per run (10; soak 300)"
    )
    p.add_argument(
        "--warmup", type=float, default=None, help="unmeasured seconds before each run (2; soak 10)"
    )
    p.add_argument("--connections", type=int, default=None, help="64; soak 1000")
    p.add_argument(
        "--scenarios",
        default=None,
        help="comma-separated names from bench/scenarios/ or paths to YAML files, or 'all'",
    )
    p.add_argument(
        "--rate-scenarios",
        default=None,
        help="scenarios measured again at 50%% of the floor's throughput ('' to skip)",
    )
    p.add_argument(
        "--loadgen",
        choices=("auto", "wrk", "aiohttp"),
        default="auto",
        help="closed-loop load generator; auto: wrk when on PATH (fixed rate: always "
        "bench/loadgen.py on httptools)",
    )
    p.add_argument("--wrk-threads", type=int, default=1, help="wrk threads (default 1)")
    p.add_argument(
        "--soak",
        action="store_true",
        help=f"memory soak: `{SOAK_SCENARIO}`, closed loop, {SOAK_CONNECTIONS} connections, "
        f"{SOAK_DURATION_S:.0f}s, no floor, no fixed-rate runs; RSS sampled every second",
    )
    p.add_argument("--rate-fraction", type=float, default=0.5)
    p.add_argument("--rate-duration", type=float, default=None, help="default: min(duration, 8)")
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="repeat the closed-loop floor + scenarios N times; ratios are the median",
    )
    p.add_argument(
        "--rate-rounds",
        type=int,
        default=None,
        help="repeat the fixed-rate floor + scenarios N times (default: --rounds); each "
        "round's p99 is taken against that round's floor, and the median is reported",
    )
    p.add_argument("--no-floor", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    p.add_argument("--mix", default="", help="name=weight,... (default: corpus.DEFAULT_MIX)")
    p.add_argument("--encoding", choices=("gzip", "identity"), default="gzip")
    p.add_argument("--project", type=int, default=CORPUS_PROJECT)
    p.add_argument("--key", default=CORPUS_KEY)
    p.add_argument("--json", type=Path, default=None, help="default: bench/results/<time>.json")
    p.add_argument(
        "--list", action="store_true", help="list scenarios and whether they are available"
    )
    return apply_presets(p.parse_args(argv))


def apply_presets(args: argparse.Namespace) -> argparse.Namespace:
    """Fill in the options left unset: the default set, or the soak preset."""
    soak = args.soak
    defaults = {
        "duration": SOAK_DURATION_S if soak else 10.0,
        "warmup": SOAK_WARMUP_S if soak else 2.0,
        "connections": SOAK_CONNECTIONS if soak else 64,
        "scenarios": SOAK_SCENARIO if soak else ",".join(DEFAULT_SCENARIOS),
        "rate_scenarios": "" if soak else ",".join(DEFAULT_RATE_SCENARIOS),
    }
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if soak:
        args.no_floor = True
    return args


def resolve_loadgen(choice: str) -> str:
    """`auto` is wrk when it is on PATH, else the aiohttp generator."""
    if choice == "auto":
        return "wrk" if shutil.which("wrk") else "aiohttp"
    if choice == "wrk" and shutil.which("wrk") is None:
        raise SystemExit("--loadgen wrk: wrk is not on PATH (apt-get install wrk)")
    return choice


def describe_loadgen(loadgen: str, threads: int) -> str:
    if loadgen == "wrk":
        return (
            f"wrk, {threads} thread{'s' if threads != 1 else ''} (bench/wrkgen.py, bench/wrk.lua)"
        )
    return f"{loadgen} (bench/loadgen.py)"


def _resolve_name(name: str, scenarios: dict[str, Scenario]) -> str:
    """A scenario name, or a path to a YAML scenario file outside bench/scenarios/."""
    if name.endswith((".yaml", ".yml")):
        sc = load_scenario(Path(name))
        scenarios[sc.name] = sc
        return sc.name
    return name


def list_scenarios(scenarios: dict[str, Scenario], opts: Options) -> None:
    for name, sc in scenarios.items():
        workdir = Path(tempfile.mkdtemp(prefix="relay-bench-list-"))
        try:
            cfg = build_config(
                sc,
                port=free_port(),
                upstream=f"http://{LOOPBACK}:9",
                workdir=workdir,
                redis_url=f"redis://{LOOPBACK}:6379/0",
                project=opts.project,
                key=opts.key,
            )
            path = workdir / "relay.yaml"
            path.write_text(yaml.safe_dump(cfg, sort_keys=False))
            problem = check_config(path, workdir)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        default = "*" if name in DEFAULT_SCENARIOS else " "
        state = "config ok" if problem is None else f"not available: {problem}"
        print(f"{default} {name:<15} {sc.description}\n  {'':<15} {state}")
    print("(* = in the default set)")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    raise_nofile()
    loadgen = resolve_loadgen(args.loadgen)
    scenarios = load_scenarios()
    for sc in scenarios.values():
        if sc.baseline:
            SCENARIO_BASELINES[sc.name] = sc.baseline
    opts = Options(
        corpus=args.corpus,
        mix=args.mix,
        encoding=args.encoding,
        connections=args.connections,
        warmup=args.warmup,
        duration=args.duration,
        project=args.project,
        key=args.key,
        loadgen=loadgen,
        wrk_threads=max(1, args.wrk_threads),
    )
    parse_mix(args.mix)
    if args.list:
        list_scenarios(scenarios, opts)
        return 0
    names = (
        list(scenarios) if args.scenarios == "all" else [n for n in args.scenarios.split(",") if n]
    )
    rate_names = [n for n in args.rate_scenarios.split(",") if n]
    names = [_resolve_name(n, scenarios) for n in names]
    rate_names = [_resolve_name(n, scenarios) for n in rate_names]
    unknown = [n for n in names + rate_names if n not in scenarios]
    if unknown:
        print(
            f"unknown scenario(s): {', '.join(unknown)}; have {', '.join(scenarios)}",
            file=sys.stderr,
        )
        return 2
    started = dt.datetime.now(dt.UTC)
    results: dict[str, Any] = {
        "meta": {
            "date": started.isoformat(timespec="seconds"),
            "host": platform.node(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "loadgen": describe_loadgen(loadgen, opts.wrk_threads),
            "loadgen_fixed_rate": describe_loadgen("httptools", 1),
            "soak": args.soak,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "connections": args.connections,
            "encoding": args.encoding,
            "corpus": str(args.corpus),
            "mix": parse_mix(args.mix),
            "note": "load generator, relay and upstream share this machine's cores",
        },
        "scenarios": [],
    }
    with children() as kids:
        upstream_proc = Child("upstream", [PY, str(BENCH / "upstream.py")], cwd=BENCH)
        kids.append(upstream_proc)
        upstream = f"http://{LOOPBACK}:{upstream_proc.wait_for_line('listening', 30).split()[1]}"
        closed = f"closed loop ({loadgen})"
        floor: dict[str, Any] | None = None
        rounds: list[tuple[dict[str, Any] | None, list[dict[str, Any]]]] = []
        for round_no in range(max(1, args.rounds)):
            tag = f" (round {round_no + 1} of {args.rounds})" if args.rounds > 1 else ""
            if not args.no_floor:
                print(
                    f"floor: {closed}, {args.connections} connections, {args.duration:g}s{tag}",
                    flush=True,
                )
                floor = run_floor(upstream, opts)
            rows = []
            for name in names:
                print(f"scenario {name}: {closed}{tag}", flush=True)
                rows.append(run_scenario(scenarios[name], upstream, opts))
            add_ratios(rows, floor)
            rounds.append((floor, rows))
        floor, results["scenarios"] = combine_rounds(rounds)
        if floor is not None:
            results["floor"] = floor
        if rate_names and floor is not None and floor["envelopes_per_s"]:
            rate = round(floor["envelopes_per_s"] * args.rate_fraction, 1)
            rate_opts = copy.copy(opts)
            rate_opts.duration = args.rate_duration or min(args.duration, 8.0)
            rate_opts.connections = max(args.connections, 64)
            rate_rounds = max(1, args.rate_rounds or args.rounds)
            fixed_rounds: list[tuple[dict[str, Any] | None, list[dict[str, Any]]]] = []
            for round_no in range(rate_rounds):
                tag = f" (round {round_no + 1} of {rate_rounds})" if rate_rounds > 1 else ""
                print(
                    f"fixed rate {rate:g}/s ({args.rate_fraction:g} x floor): floor{tag}",
                    flush=True,
                )
                fixed_floor = with_cores(run_floor(upstream, rate_opts, rate=rate))
                rows = []
                for name in rate_names:
                    print(f"fixed rate {rate:g}/s: {name}{tag}", flush=True)
                    rows.append(
                        with_cores(run_scenario(scenarios[name], upstream, rate_opts, rate=rate))
                    )
                add_ratios(rows, fixed_floor)
                fixed_rounds.append((fixed_floor, rows))
            combined_floor, rows = combine_latency_rounds(fixed_rounds)
            results["fixed_rate"] = {
                "rate": rate,
                "fraction_of_floor": args.rate_fraction,
                "rounds": rate_rounds,
                "floor": combined_floor,
                "scenarios": rows,
            }
    print()
    floor_rows = [] if floor is None else [{**floor, "vs_floor": FLOOR_RATIOS}]
    print(
        table(
            [*floor_rows, *results["scenarios"]],
            f"closed loop: {args.connections} connections, {args.duration:g}s after "
            f"{args.warmup:g}s warm-up, {args.encoding} bodies; "
            f"load generator: {describe_loadgen(loadgen, opts.wrk_threads)}",
        )
    )
    if args.rounds > 1:
        print(f"\nx floor per round (the table shows the median of {args.rounds}):")
        width = max((len(row["name"]) for row in results["scenarios"]), default=0) + 2
        for row in results["scenarios"]:
            per_round = [r.get("vs_floor", {}).get("throughput") for r in row.get("rounds", [])]
            print(f"  {row['name']:<{width}}" + "  ".join(_fmt(v, ".2f") for v in per_round))
    fixed = results.get("fixed_rate")
    if fixed:
        print()
        print(
            table(
                [
                    {**fixed["floor"], "vs_floor": FLOOR_RATIOS},
                    *fixed["scenarios"],
                ],
                f"fixed rate: {fixed['rate']:g} envelopes/s offered "
                f"({fixed['fraction_of_floor']:g} x floor); load generator: "
                f"{describe_loadgen('httptools', 1)}",
            )
        )
        if fixed.get("rounds", 1) > 1:
            print(
                f"\np99 x floor per round, beside the floor's p99 ms (the table shows the "
                f"median of {fixed['rounds']}, and the latencies of the median round):"
            )
            floor_p99 = [r.get("p99_ms") for r in fixed["floor"].get("rounds", [])]
            width = max((len(row["name"]) for row in fixed["scenarios"]), default=0) + 2
            print(f"  {'floor ms':<{width}}" + "  ".join(_fmt(v, ".1f") for v in floor_p99))
            for row in fixed["scenarios"]:
                per_round = [r.get("vs_floor", {}).get("p99") for r in row.get("rounds", [])]
                print(f"  {row['name']:<{width}}" + "  ".join(_fmt(v, ".2f") for v in per_round))
    results["targets"] = targets(results)
    if args.soak:
        results["soak"] = [soak_summary(row) for row in results["scenarios"]]
        print()
        for line in results["soak"]:
            print(line)
    if results["targets"]:
        print("\ntargets (reported, not asserted):")
        for line in results["targets"]:
            print(f"  {line}")
    print(f"\nwrote {write_results(results, args.json, '', started)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
