"""`relay scrub` and `relay usage` on real files, a real Redis address and a real HTTP server."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from relay.cli import main
from tests.support.corpus import ENVELOPES, PLANTED
from tests.support.redis_server import free_port

QUOTA = """
policy:
  quotas:
    - {id: errors, categories: [error], scope: project, limit: 10, window: 60}
"""


def _relay(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "relay", *args], input=stdin, capture_output=True, timeout=60
    )


# --- relay scrub ------------------------------------------------------------------------


@pytest.mark.parametrize("envelope", ENVELOPES, ids=lambda p: p.name)
@pytest.mark.parametrize("as_json", [False, True])
def test_scrub_prints_no_planted_secret(envelope: Path, as_json: bool) -> None:
    done = _relay("scrub", *(["--json"] if as_json else []), "-", stdin=envelope.read_bytes())
    assert done.returncode == 0, done.stderr
    for secret in PLANTED:
        assert secret not in done.stdout, secret


def test_scrub_json_never_shows_an_unreadable_item(tmp_path: Path) -> None:
    # A recording that is neither JSON nor zlib: dropped unread, so nothing of it is shown.
    path = tmp_path / "replay.envelope"
    path.write_bytes(
        b'{}\n{"type":"replay_recording"}\nfrom bob@example.org card 4111111111111111\n'
    )
    done = _relay("scrub", "--json", str(path))
    assert done.returncode == 0, done.stderr
    assert b"invalid_payload" in done.stdout
    assert b"bob@example.org" not in done.stdout
    assert b"4111111111111111" not in done.stdout


@pytest.fixture
def small_limit(tmp_path: Path) -> Path:
    config = tmp_path / "relay.yml"
    config.write_text("limits: {max_decompressed_bytes: 1KiB}\n")
    return config


def test_scrub_refuses_a_file_larger_than_the_relay_takes(
    tmp_path: Path, small_limit: Path
) -> None:
    event = tmp_path / "event.json"
    event.write_bytes(b'{"message": "%s"}' % (b"x" * 2048))
    done = _relay("scrub", "--config", str(small_limit), str(event))
    assert done.returncode == 1
    assert done.stdout == b""
    err = done.stderr.decode()
    assert err.count("\n") == 1 and "max_decompressed_bytes" in err and "Traceback" not in err


def test_scrub_reads_no_further_than_the_limit(small_limit: Path) -> None:
    # An endless input (a device, a pipe that never ends) is not read into memory whole.
    done = _relay("scrub", "--config", str(small_limit), "/dev/zero")
    assert done.returncode == 1
    assert b"max_decompressed_bytes" in done.stderr


def test_scrub_refuses_large_standard_input(small_limit: Path) -> None:
    done = _relay("scrub", "--config", str(small_limit), "-", stdin=b" " * 4096 + b"{}")
    assert done.returncode == 1
    assert b"max_decompressed_bytes" in done.stderr


# --- relay usage ------------------------------------------------------------------------


def test_usage_without_quotas_needs_neither_redis_nor_a_token(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("RELAY_CONFIG", raising=False)
    assert main(["usage"]) == 0
    assert "no quotas, budgets or spike protection configured" in capsys.readouterr().out


def test_usage_with_redis_down_says_where_not_the_password(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    config = tmp_path / "relay.yml"
    config.write_text(
        f'redis: {{url: "redis://:s3cret-pw@127.0.0.1:{port}/0?password=s3cret-q"}}\n' + QUOTA
    )
    done = _relay("usage", "--config", str(config))
    assert done.returncode == 1
    assert done.stdout == b""
    err = done.stderr.decode()
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"Redis at redis://127.0.0.1:{port}/0" in err
    assert "s3cret" not in err


async def test_usage_when_something_else_answers(
    aiohttp_server: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    answers = [
        web.Response(text="<html>hello</html>", content_type="text/html"),
        web.json_response({"other": 1}),
        web.json_response({"usage": [{"kind": "quota"}]}),
    ]

    async def handler(request: web.Request) -> web.StreamResponse:
        return answers.pop(0)

    app = web.Application()
    app.router.add_get("/api/relay/usage/", handler)
    server = await aiohttp_server(app)
    config = tmp_path / "relay.yml"
    config.write_text(
        f'listen: {{host: 127.0.0.1, port: {server.port}}}\nadmin: {{token: "t0ken"}}\n' + QUOTA
    )
    for _ in range(3):
        assert await asyncio.to_thread(main, ["usage", "--config", str(config)]) == 1
        err = capsys.readouterr().err
        assert "is not a relay's usage endpoint" in err, err
