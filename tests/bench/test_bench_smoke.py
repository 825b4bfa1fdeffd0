"""The benchmark harness runs end to end: floor and one scenario, two seconds each."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

METRICS = {
    "envelopes_per_s",
    "sustained_per_s",
    "latency_ms",
    "cpu_s_per_1000",
    "peak_rss_mb",
    "non_200",
    "errors",
}

#: Two seconds of the `none` scenario and of the floor; no fixed-rate pass.
ARGS = ["--duration", "2", "--warmup", "0.5", "--connections", "8"]
ARGS += ["--scenarios", "none", "--rate-scenarios", ""]


def test_harness_smoke(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "run.py"), *ARGS, "--json", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(out.read_text())
    assert set(results) >= {"meta", "floor", "scenarios", "targets"}
    floor = results["floor"]
    assert set(floor) >= METRICS
    assert floor["envelopes_per_s"] > 0
    assert floor["non_200"] == {} and floor["errors"] == {}
    (row,) = results["scenarios"]
    assert row["name"] == "none"
    assert row["status"] == "ok", row.get("reason")
    assert set(row) >= METRICS | {"vs_floor"}
    assert row["envelopes_per_s"] > 0 and row["sustained_per_s"] > 0
    assert set(row["latency_ms"]) >= {"p50", "p99", "p999"}
    assert row["cpu_s_per_1000"] > 0 and row["peak_rss_mb"] > 0
    assert row["vs_floor"]["throughput"] > 0
