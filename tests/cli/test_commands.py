"""The `relay` command: check-config, and run on embedded defaults (a real process)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from relay.cli import main
from tests.support.corpus import CORPUS
from tests.support.redis_server import free_port

VALID = """
listen: {host: 127.0.0.1, port: 3001}
upstream: {url: "https://sentry.example.com", timeout_s: 5s}
limits: {max_request_bytes: 20MiB}
admin: {token: "${ADMIN_TOKEN:-changeme}"}
projects:
  - id: 42
    keys: ["abc123def4567890abc123def4567890"]
    upstream_dsn: "https://0123456789abcdef0123456789abcdef@o1.ingest.sentry.io/4500000000000001"
"""

INVALID = """
listen: {port: 3001, hots: x}
upstream: {url: "ftp://nope"}
limits: {max_request_bytes: lots}
projects:
  - id: 42
    keys: ["abc123def4567890abc123def4567890"]
  - id: 43
    upstream_dsn: "https://sentry.example.com/43"
    polcy: {}
"""


def test_check_config_valid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "relay.yml"
    path.write_text(VALID)
    assert main(["check-config", str(path)]) == 0
    assert "ok" in capsys.readouterr().out


def test_check_config_names_the_proxy_but_not_its_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "relay.yml"
    path.write_text(
        "upstream:\n  url: https://sentry.example.com\n"
        "  proxy: http://egress:hunter2@proxy.internal:3128\n"
    )
    assert main(["check-config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "upstream https://sentry.example.com (through the proxy proxy.internal:3128)" in out
    assert "hunter2" not in out


def test_check_config_reports_every_problem_with_its_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "relay.yml"
    path.write_text(INVALID)
    assert main(["check-config", str(path)]) == 1
    err = capsys.readouterr().err
    assert "listen.hots: unknown key (did you mean 'host'?)" in err
    assert "limits.max_request_bytes:" in err
    assert "projects[1].polcy: unknown key (did you mean 'policy'?)" in err


def test_check_config_semantic_problems(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "relay.yml"
    path.write_text(
        INVALID.replace("hots: x", "host: 127.0.0.1")
        .replace("lots", "1MiB")
        .replace("    polcy: {}\n", "")
    )
    assert main(["check-config", str(path)]) == 1
    err = capsys.readouterr().err
    assert "upstream.url: must start with http://, https:// or file://" in err
    assert "projects[1].upstream_dsn: not a valid DSN" in err


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://", "has no host"),
        ("https://sentry.example.com:99999/", "has a host or port that cannot be one"),
        ("https://sentry..example.com/", "has a host name that cannot be one"),
    ],
)
def test_check_config_refuses_an_upstream_url_no_request_can_be_sent_to(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], url: str, why: str
) -> None:
    path = tmp_path / "relay.yml"
    path.write_text(f"upstream:\n  url: {url}\n")
    assert main(["check-config", str(path)]) == 1
    assert f"upstream.url: {why}" in capsys.readouterr().err


def test_check_config_yaml_syntax_and_missing_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "relay.yml"
    path.write_text("listen: {port: 3000\n")
    assert main(["check-config", str(path)]) == 1
    assert "invalid YAML" in capsys.readouterr().err
    assert main(["check-config", str(tmp_path / "missing.yml")]) == 1
    assert "cannot read config" in capsys.readouterr().err


def _wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "relay exited early"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.05)
    raise AssertionError("relay did not become ready")


def test_run_on_embedded_defaults_writes_outbox_and_stops_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "RELAY_LISTEN_PORT": str(port)}
    env.pop("RELAY_CONFIG", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "relay", "run"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        _wait_for_port(port, proc)
        body = (CORPUS / "error-payment.envelope").read_bytes()
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/api/42/envelope/?sentry_key=abc123def4567890abc123def4567890",
            data=body,
            method="POST",
        )
        with urllib.request.urlopen(req, timeout=5) as resp:
            assert resp.status == 200
        outbox = tmp_path / "data" / "outbox"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not list(outbox.glob("*.envelope")):
            time.sleep(0.05)
        files = list(outbox.glob("*.envelope"))
        assert len(files) == 1
        assert b"d126124bf5f742bd90ebbe97ed5df3ff" in files[0].read_bytes()
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err.decode()
    text = out.decode()
    assert f"127.0.0.1:{port}" in text
    assert f"example DSN: http://abc123def4567890abc123def4567890@127.0.0.1:{port}/42" in text


@pytest.mark.parametrize("backlog", [0, 70000])
def test_check_config_listen_backlog_bounds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], backlog: int
) -> None:
    path = tmp_path / "relay.yml"
    path.write_text(f"listen:\n  backlog: {backlog}\n")
    assert main(["check-config", str(path)]) == 1
    assert "listen.backlog: must be between 1 and 65535" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["0", "2h"])
def test_check_config_listen_keepalive_timeout_bounds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str
) -> None:
    path = tmp_path / "relay.yml"
    path.write_text(f"listen:\n  keepalive_timeout_s: {value}\n")
    assert main(["check-config", str(path)]) == 1
    err = capsys.readouterr().err
    assert "listen.keepalive_timeout_s: must be more than 0 and at most 3600 seconds" in err
