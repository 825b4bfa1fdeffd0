"""The multi-worker supervisor, driven in this process with stand-in workers.

`subprocess.Popen` is replaced by a function that can fail (as fork/exec does under
memory pressure: EAGAIN, ENOMEM) and otherwise starts a trivial child in place of
`relay run --worker N`.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from relay import server
from relay.config import parse_config

SLEEPER = [sys.executable, "-c", "import time; time.sleep(30)"]
QUITTER = [sys.executable, "-c", "pass"]


@pytest.fixture(autouse=True)
def _signals_restored() -> Iterator[None]:
    """`Supervisor.run` installs its own SIGTERM/SIGINT/SIGHUP handlers in this process."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Every stand-in worker a test starts; any still running after it are killed."""
    children: list[subprocess.Popen[bytes]] = []
    yield children
    for child in children:
        if child.poll() is None:
            child.kill()
        child.wait()


def fake_popen(
    monkeypatch: pytest.MonkeyPatch,
    started: list[subprocess.Popen[bytes]],
    outcome: Callable[[int, int], list[str] | BaseException],
) -> list[int]:
    """Replaces `subprocess.Popen` for the supervisor: `outcome(worker, attempt)` gives
    the command to run for that worker's `attempt`-th start (from 0), or the exception
    to raise. Returns the list of workers asked for, in order."""
    real = subprocess.Popen
    asked: list[int] = []

    def popen(args: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        worker = int(args[args.index("--worker") + 1])
        result = outcome(worker, asked.count(worker))
        asked.append(worker)
        if isinstance(result, BaseException):
            raise result
        child = real(result)
        started.append(child)
        return child

    monkeypatch.setattr("relay.server.subprocess.Popen", popen)
    return asked


def supervisor(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> server.Supervisor:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the workers' socket directory
    config = parse_config({"workers": 2, "shutdown_timeout": 1}, env={})
    sup = server.Supervisor(config, None)
    assert sup.worker_dir is not None and Path(sup.worker_dir).is_dir()
    return sup


def stop_when(sup: server.Supervisor, done: Callable[[], bool], timeout: float) -> threading.Thread:
    """Stops the supervisor (as its SIGTERM handler does) once `done()` or after `timeout`."""

    def watch() -> None:
        deadline = time.monotonic() + timeout
        while not done() and time.monotonic() < deadline:
            time.sleep(0.02)
        sup._stopping = True

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_a_worker_that_fails_to_start_is_retried_until_it_starts(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    started: list[subprocess.Popen[bytes]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """fork/exec failing for worker 1 (at startup, then on its first retries) is logged
    and retried; worker 0 keeps running meanwhile and worker 1 ends up started."""
    caplog.set_level(logging.INFO, logger="relay")

    def outcome(worker: int, attempt: int) -> list[str] | BaseException:
        if worker == 1 and attempt < 3:
            return BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")
        return SLEEPER

    asked = fake_popen(monkeypatch, started, outcome)
    sup = supervisor(monkeypatch, tmp_path)
    up: dict[int, subprocess.Popen[bytes]] = {}

    def both_up() -> bool:
        kids = dict(sup.children)
        if len(kids) == 2 and all(kid.poll() is None for kid in kids.values()):
            up.update(kids)
            return True
        return False

    watcher = stop_when(sup, both_up, timeout=4)
    began = time.monotonic()
    assert sup.run() == 0
    watcher.join()
    assert time.monotonic() - began < 4, "worker 1 was not started"
    assert asked.count(1) == 4 and asked.count(0) == 1  # worker 0 was never restarted
    assert set(up) == {0, 1} and up[0] is started[0] and up[1] is started[1]
    failures = [
        r for r in caplog.records if r.name == "relay" and "could not be started" in r.getMessage()
    ]
    assert len(failures) == 3 and all(r.levelno == logging.ERROR for r in failures)
    assert all("worker 1 " in r.getMessage() for r in failures)
    assert "Resource temporarily unavailable" in failures[0].getMessage()
    assert any(r.getMessage().startswith("worker 1 started") for r in caplog.records)
    # On stop: both workers were stopped and the socket directory removed.
    assert all(child.returncode == -signal.SIGTERM for child in started)
    assert sup.worker_dir is not None and not Path(sup.worker_dir).exists()


def test_a_spawn_that_keeps_failing_backs_off_and_stop_is_still_prompt(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    started: list[subprocess.Popen[bytes]],
) -> None:
    """The retries of a failing spawn are paced as restarts of a dead worker are (a
    few at once, then 8 s, 16 s, ...), not retried in a tight loop; a stop during the
    wait is not held up by it."""

    def outcome(worker: int, attempt: int) -> list[str] | BaseException:
        return OSError(errno.ENOMEM, "Cannot allocate memory") if worker == 1 else SLEEPER

    asked = fake_popen(monkeypatch, started, outcome)
    sup = supervisor(monkeypatch, tmp_path)
    stopped_at: list[float] = []
    began = time.monotonic()

    def after_a_while() -> bool:
        if time.monotonic() - began > 1.5:
            stopped_at.append(time.monotonic())
            return True
        return False

    watcher = stop_when(sup, after_a_while, timeout=3)
    assert sup.run() == 0
    watcher.join()
    assert stopped_at and time.monotonic() - stopped_at[0] < 1
    # The start, then four restarts at once (as for a worker that dies), then 8 s.
    assert asked.count(1) == 5
    assert [child.returncode for child in started] == [-signal.SIGTERM]
    assert sup.worker_dir is not None and not Path(sup.worker_dir).exists()


def test_an_unexpected_error_in_the_run_loop_still_stops_the_workers(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    started: list[subprocess.Popen[bytes]],
) -> None:
    """Worker 0 exits; restarting it raises something the supervisor does not expect.
    The error propagates, but only after worker 1 was stopped and the socket directory
    removed: no orphaned worker."""

    def outcome(worker: int, attempt: int) -> list[str] | BaseException:
        if worker == 0:
            return QUITTER if attempt == 0 else RuntimeError("boom")
        return SLEEPER

    fake_popen(monkeypatch, started, outcome)
    sup = supervisor(monkeypatch, tmp_path)
    watcher = stop_when(sup, lambda: sup._stopping, timeout=4)  # if the loop never raises
    try:
        with pytest.raises(RuntimeError, match="boom"):
            sup.run()
    finally:
        sup._stopping = True
        watcher.join()
    quitter, sleeper = started
    assert quitter.returncode == 0
    assert sleeper.returncode == -signal.SIGTERM, "worker 1 was left running"
    assert sup.worker_dir is not None and not Path(sup.worker_dir).exists()


NOT_STARTED = [sys.executable, "-c", f"raise SystemExit({server.EXIT_NOT_STARTED})"]


def test_a_worker_that_cannot_start_at_first_stops_the_relay(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, started: list[subprocess.Popen[bytes]]
) -> None:
    """Its first process exits with `EXIT_NOT_STARTED`: no retry; the other worker is
    stopped and the supervisor exits with the same status, promptly."""

    def outcome(worker: int, attempt: int) -> list[str] | BaseException:
        return NOT_STARTED if worker == 1 else SLEEPER

    asked = fake_popen(monkeypatch, started, outcome)
    sup = supervisor(monkeypatch, tmp_path)
    watcher = stop_when(sup, lambda: False, timeout=10)  # a safety net only
    began = time.monotonic()
    assert sup.run() == server.EXIT_NOT_STARTED
    assert time.monotonic() - began < 5
    assert asked == [0, 1]
    assert started[0].returncode == -signal.SIGTERM
    assert sup.worker_dir is not None and not Path(sup.worker_dir).exists()
    sup._stopping = True
    watcher.join()


def test_a_worker_that_cannot_start_after_it_ran_is_restarted(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, started: list[subprocess.Popen[bytes]]
) -> None:
    """Once a worker has run, a restart that cannot start is retried like any other exit:
    the relay keeps serving with its other workers."""

    def outcome(worker: int, attempt: int) -> list[str] | BaseException:
        if worker == 1:
            return [QUITTER, NOT_STARTED, NOT_STARTED][attempt] if attempt < 3 else SLEEPER
        return SLEEPER

    asked = fake_popen(monkeypatch, started, outcome)
    sup = supervisor(monkeypatch, tmp_path)
    watcher = stop_when(sup, lambda: asked.count(1) == 4 and len(sup.children) == 2, timeout=5)
    assert sup.run() == 0
    watcher.join()
    assert asked.count(1) == 4 and asked.count(0) == 1
    assert not sup.failed


def test_socket_directories_of_supervisors_gone_are_removed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A SIGKILLed supervisor leaves its directory behind; the next one removes it, and
    leaves those of live supervisors and anything else alone."""
    gone = subprocess.Popen(QUITTER)
    gone.wait()
    dead = tmp_path / f"relay-workers-{gone.pid}-abc"
    alive = tmp_path / f"relay-workers-{os.getpid()}-def"
    other = tmp_path / "relay-workers-notapid-ghi"
    for path in (dead, alive, other):
        path.mkdir()
        (path / "worker-0.sock").write_text("")
    sup = supervisor(monkeypatch, tmp_path)
    assert not dead.exists()
    assert alive.exists() and other.exists()
    assert sup.worker_dir is not None
    assert Path(sup.worker_dir).name.startswith(f"relay-workers-{os.getpid()}-")
    sup._shutdown()
    assert not Path(sup.worker_dir).exists()
