"""Process plumbing for the benchmark harness: children that never outlive it, /proc stats.

Every child is started in its own session (so its process group holds it and
everything it forks) with a parent-death signal and a raised open-file limit,
and stopped with `stop_group`:
SIGTERM to the group, then SIGKILL to whatever is left. CPU and memory are read
from /proc, summed over a process and all its descendants (relay workers).
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime as dt
import json
import os
import resource
import signal
import socket
import subprocess
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LOOPBACK = "127.0.0.1"
REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO / "bench" / "results"


def write_results(data: Any, out: Path | None, prefix: str, started: dt.datetime) -> Path:
    """`data` as JSON to `out`, or to bench/results/<prefix><time>.json; the path."""
    path = out or RESULTS_DIR / f"{prefix}{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


CLK_TCK = os.sysconf("SC_CLK_TCK")
_PR_SET_PDEATHSIG = 1


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def raise_nofile(want: int = 65536) -> int:
    """Raise the soft open-file limit towards `want` (at most the hard limit); the new limit.

    A thousand client connections need a thousand descriptors in the load generator
    and as many in the target, more than the usual soft limit of 1,024.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            return target
    return soft


def _child_setup() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    with contextlib.suppress(Exception):
        raise_nofile()


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for children: no RELAY_* overrides, the repo importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


class Child:
    """A child process in its own process group; stdout lines are collected by a thread.

    Parameters:
        name: for messages.
        argv: the command.
        cwd: working directory.
        env: extra environment variables.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        cwd: str | Path | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.lines: deque[str] = deque()
        self.stderr_tail: deque[str] = deque(maxlen=40)
        self._cond = threading.Condition()
        self.proc = subprocess.Popen(
            list(argv),
            cwd=str(cwd) if cwd else None,
            env=child_env(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
            preexec_fn=_child_setup,
        )
        self._readers = [
            threading.Thread(target=self._read_stdout, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
        ]
        for t in self._readers:
            t.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr_tail.append(line.rstrip("\n"))

    def alive(self) -> bool:
        return self.proc.poll() is None

    def next_line(self, timeout: float) -> str | None:
        """The next stdout line, or None on timeout or when the child has exited."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self.lines:
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._readers[0].is_alive()):
                    return None
                self._cond.wait(min(left, 0.2))
            return self.lines.popleft()

    def wait_for_line(self, prefix: str, timeout: float) -> str:
        """Skip stdout lines until one starts with `prefix`; raise if none comes in time."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            line = self.next_line(max(left, 0.0))
            if line is not None and line.startswith(prefix):
                return line
            if line is None:
                state = "exited" if not self.alive() else "timed out"
                raise ChildFailed(f"{self.name} {state} before printing {prefix!r}", self)

    def describe_failure(self, lines: int = 3) -> str:
        """The last non-empty stderr lines, on one line (the exception comes last)."""
        tail = [
            line.strip() for line in self.stderr_tail if line.strip() and set(line.strip()) != {"^"}
        ]
        return " | ".join(tail[-lines:])

    def stop(self, grace: float = 5.0) -> None:
        stop_group(self.proc, grace)


class ChildFailed(RuntimeError):
    def __init__(self, message: str, child: Child) -> None:
        super().__init__(message)
        self.child = child


def stop_group(proc: subprocess.Popen[str], grace: float = 5.0) -> None:
    """SIGTERM the child's process group, wait up to `grace`, then SIGKILL the group."""
    try:
        pgid = os.getpgid(proc.pid)
    except ProcessLookupError:
        pgid = None
    if pgid is not None and pgid == proc.pid:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
    elif proc.poll() is None:
        proc.terminate()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace)
    if pgid is not None and pgid == proc.pid:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=10)


# --- /proc --------------------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may contain spaces: split after it.
    return raw[raw.rindex(")") + 2 :].split()


def descendants(pid: int) -> list[int]:
    """`pid` and every live descendant of it."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        if fields is None:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def cpu_ticks(pids: Sequence[int]) -> dict[int, int]:
    """utime + stime (clock ticks) of each live pid."""
    out = {}
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            out[pid] = int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return out


def _status_kib(pids: Sequence[int], key: str) -> int:
    """Sum of one `/proc/<pid>/status` field given in kB (`VmHWM:`, `VmRSS:`) over the pids."""
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith(key):
                    total += int(line.split()[1])
                    break
        except OSError:
            continue
    return total


def peak_rss_kib(pids: Sequence[int]) -> int:
    """Sum of VmHWM (peak resident set) over the pids."""
    return _status_kib(pids, "VmHWM:")


def rss_kib(pids: Sequence[int]) -> int:
    """Sum of VmRSS (resident set now) over the pids."""
    return _status_kib(pids, "VmRSS:")


def growth_per_minute(series: Sequence[tuple[float, float]]) -> float | None:
    """Slope of a least-squares line through (seconds, value) points, per minute.

    None with fewer than two points or when they all share one time.
    """
    if len(series) < 2:
        return None
    n = len(series)
    mean_t = sum(t for t, _ in series) / n
    mean_v = sum(v for _, v in series) / n
    var = sum((t - mean_t) ** 2 for t, _ in series)
    if var == 0:
        return None
    cov = sum((t - mean_t) * (v - mean_v) for t, v in series)
    return cov / var * 60.0


def machine_ticks() -> tuple[int, int]:
    """(busy, total) clock ticks of all CPUs since boot, from /proc/stat."""
    parts = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = parts[3] + (parts[4] if len(parts) > 4 else 0)
    total = sum(parts[:8])
    return total - idle, total


@dataclass
class TreeSampler:
    """CPU of a process tree between `start()` and `stop()`, plus RSS and process count.

    Parameters:
        pid: the root process (the relay, or the floor).
        rss_interval: seconds between the RSS samples `sample_processes` takes.
    """

    pid: int
    rss_interval: float = 1.0
    _start: dict[int, int] = field(default_factory=dict)
    _machine: tuple[int, int] = (0, 0)
    _t0: float = 0.0
    _next_rss: float = 0.0
    max_processes: int = 0
    cpu_s: float = 0.0
    machine_busy: float = 0.0
    #: (seconds since `start()`, MiB summed over the tree), about every `rss_interval`.
    rss: list[tuple[float, float]] = field(default_factory=list)

    def sample_processes(self) -> list[int]:
        """The tree's pids now; also an RSS sample when one is due (after `start()`)."""
        pids = descendants(self.pid)
        self.max_processes = max(self.max_processes, len(pids))
        now = time.monotonic()
        if self._t0 and now >= self._next_rss:
            self.rss.append((round(now - self._t0, 2), rss_kib(pids) / 1024))
            # Keep the cadence; skip ticks missed while the caller was busy.
            self._next_rss = max(self._next_rss + self.rss_interval, now)
        return pids

    def start(self) -> None:
        self._t0 = self._next_rss = time.monotonic()
        self._start = cpu_ticks(self.sample_processes())
        self._machine = machine_ticks()

    def stop(self) -> None:
        end = cpu_ticks(self.sample_processes())
        ticks = sum(t - self._start.get(pid, 0) for pid, t in end.items())
        self.cpu_s = ticks / CLK_TCK
        busy, total = machine_ticks()
        dt = total - self._machine[1]
        self.machine_busy = (busy - self._machine[0]) / dt if dt else 0.0

    def peak_rss_mb(self) -> float:
        return peak_rss_kib(descendants(self.pid)) / 1024

    def rss_summary(self) -> dict[str, object]:
        """The RSS series of the window and what it says: start, end, peak, growth.

        `rss_growth_mb_per_min` is the slope of a linear fit over the second half of
        the window (the first half still holds warm-up effects: caches, pools, arenas).
        """
        if not self.rss:
            return {"rss_mb": [], "rss_t_s": []}
        values = [mb for _, mb in self.rss]
        half = self.rss[-1][0] / 2
        growth = growth_per_minute([(t, mb) for t, mb in self.rss if t >= half])
        return {
            "rss_interval_s": self.rss_interval,
            "rss_t_s": [t for t, _ in self.rss],
            "rss_mb": [round(mb, 1) for mb in values],
            "rss_start_mb": round(values[0], 1),
            "rss_end_mb": round(values[-1], 1),
            "rss_peak_mb": round(max(values), 1),
            "rss_growth_mb_per_min": round(growth, 3) if growth is not None else None,
        }


@contextlib.contextmanager
def children() -> Iterator[list[Child]]:
    """Collect children to stop, in reverse order, however the block ends."""
    started: list[Child] = []
    try:
        yield started
    finally:
        for child in reversed(started):
            with contextlib.suppress(Exception):
                child.stop()
