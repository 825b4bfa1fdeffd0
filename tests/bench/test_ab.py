"""`bench/ab.py`: two versions of the relay measured in alternated pairs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))

from ab import summarize  # noqa: E402


def test_summary_of_pairs() -> None:
    summary = summarize([(700.0, 680.0), (720.0, 690.0), (760.0, 770.0)])
    assert summary.pairs == 3
    assert summary.base_us == 720.0 and summary.exp_us == 690.0
    assert summary.median_diff_us == -20.0
    assert summary.mean_diff_us == pytest.approx(-40 / 3)
    assert summary.stderr_us == pytest.approx(20.816659994661325 / 3**0.5)
    assert summary.relative == pytest.approx(-40 / 3 / 720)
    assert "median -20.0 us" in summary.line() and "(-1.9% of base's 720 us)" in summary.line()
    one = summarize([(700.0, 650.0)])
    assert one.stderr_us is None and "+-" not in one.line()
    with pytest.raises(ValueError):
        summarize([])


def test_two_revisions_alternated(tmp_path: Path) -> None:
    """HEAD in a temporary work tree against this checkout: one short pair at a low rate."""
    out = tmp_path / "ab.json"
    argv = [
        sys.executable, str(REPO / "bench" / "ab.py"), "--base", "HEAD", "--exp", ".",
        "--pairs", "1", "--duration", "1", "--warmup", "0.5", "--rate", "100",
        "--json", str(out),
    ]  # fmt: skip
    proc = subprocess.run(
        argv,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "pair 1 (base first)" in proc.stdout and "exp - base over 1 pair(s)" in proc.stdout
    result = json.loads(out.read_text())
    (run,) = result["runs"]
    for side in ("base", "exp"):
        assert run[side]["status"] == "ok" and run[side]["ok"] > 50
        assert run[side]["cpu_s_per_1000"] > 0
    assert result["summary"]["pairs"] == 1
    # The temporary work tree is gone, from disk and from git's list.
    listed = subprocess.run(
        ["git", "-C", str(REPO), "worktree", "list"], capture_output=True, text=True, check=True
    ).stdout
    assert "relay-ab-" not in listed
