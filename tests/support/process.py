"""Run `relay run` as a real process (for signals, workers and crash tests)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from tests.support.redis_server import free_port


class RelayProcess:
    def __init__(
        self, tmp: Path, config: dict[str, Any], open_files: tuple[int, int] | None = None
    ) -> None:
        """`open_files`: start the relay with these soft and hard limits of open files
        (a hard limit of 0: the one this process has)."""
        self.open_files = open_files
        self.port = free_port()
        listen = {**config.get("listen", {}), "host": "127.0.0.1", "port": self.port}
        config = {**config, "listen": listen}
        self.config_path = tmp / "relay.yml"
        self.write_config(config)
        self.pid_file = tmp / "relay.pid"
        self.cwd = tmp
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = tmp / "relay.log"

    def write_config(self, config: dict[str, Any]) -> None:
        self.config_path.write_text(yaml.safe_dump(config))

    def start(self, timeout: float = 20) -> RelayProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    *self._launcher(),
                    "-m",
                    "relay",
                    "run",
                    "--config",
                    str(self.config_path),
                    "--pid-file",
                    str(self.pid_file),
                ],
                cwd=self.cwd,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"relay exited: {self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/readyz", timeout=1) as resp:
                    if resp.status == 200:
                        return self
            except OSError:
                time.sleep(0.05)
        raise AssertionError("relay did not become ready")

    def _launcher(self) -> list[str]:
        """The interpreter, first lowering the soft open files limit if asked to."""
        if self.open_files is None:
            return [sys.executable]
        soft, hard = self.open_files
        lower = (
            "import os, resource, sys; "
            f"hard = {hard} or resource.getrlimit(resource.RLIMIT_NOFILE)[1]; "
            f"resource.setrlimit(resource.RLIMIT_NOFILE, ({soft}, hard)); "
            "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])"
        )
        return [sys.executable, "-c", lower]

    def open_files_limit(self) -> tuple[int, int]:
        """The relay process's soft and hard open files limits, as the kernel reports."""
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/limits").read_text().splitlines():
            if line.startswith("Max open files"):
                soft, hard = line.split()[3:5]
                return int(soft), int(hard)
        raise AssertionError("no open files limit in /proc")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def children(self) -> list[int]:
        assert self.proc is not None
        path = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        return [int(p) for p in path.read_text().split()]

    def stop(self, timeout: float = 20) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        code = self.proc.returncode
        self.proc = None
        return code

    def kill(self) -> None:
        """SIGKILL the relay (and its workers)."""
        if self.proc is None:
            return
        try:
            kids = self.children()
        except OSError:
            kids = []
        for pid in [self.proc.pid, *kids]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        self.proc = None
