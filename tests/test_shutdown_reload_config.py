"""Config reload in a running app: a refused reload says why, an unexpected failure is
refused like an invalid file, and the keys a reload cannot apply are named (and only
those)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient

from relay.keys import CONFIG, METRICS, REGISTRY
from relay.services import reload
from relay.services.reload import reload_config
from tests.support.relay import KEY, auth_header

ENVELOPE = b'{"event_id":"' + b"a" * 32 + b'"}\n{"type":"event"}\n{"message":"hi"}\n'


def app_of(relay: TestClient) -> web.Application:
    assert relay.app is not None
    return relay.app


def write(path: Path, upstream_url: str, **extra: Any) -> Path:
    data = {
        "upstream": {
            "url": upstream_url,
            "retry_base_s": 0.01,
            "retry_max_s": 0.05,
            "timeout_s": 5,
        },
        "projects": [{"id": 42, "keys": [KEY]}],
        "shutdown_timeout": 5,
        **extra,
    }
    path.write_text(yaml.safe_dump(data))
    return path


def reloads(app: web.Application, result: str) -> float:
    return float(app[METRICS].config_reloads.labels(result)._value.get())


async def test_a_refused_reload_says_why_in_the_log_line(
    relay: TestClient, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The default log format is text, which shows no `extra` fields: the problems are
    in the message itself."""
    app = app_of(relay)
    path = tmp_path / "relay.yml"
    path.write_text("projects: [{id: 42, keys: oops}]\nworkers: many\n")
    before = app[REGISTRY].current
    with caplog.at_level(logging.ERROR, logger="relay.reload"):
        assert not reload_config(app, path)
    (line,) = [r.getMessage() for r in caplog.records if r.name == "relay.reload"]
    assert line.startswith("config reload refused; the previous policy stays in force: ")
    assert "projects[0].keys" in line and "workers" in line
    assert app[REGISTRY].current is before
    assert reloads(app, "invalid") == 1


async def test_a_config_file_gone_is_refused_and_said(
    relay: TestClient, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    app = app_of(relay)
    with caplog.at_level(logging.ERROR, logger="relay.reload"):
        assert not reload_config(app, tmp_path / "gone.yml")
    assert "cannot read config" in caplog.records[-1].getMessage()
    assert reloads(app, "invalid") == 1


async def test_a_failure_building_the_new_policy_keeps_the_old_one_and_counts(
    relay: TestClient,
    tmp_path: Path,
    upstream_url: str,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Not raised out of the SIGHUP handler (where nothing counts it): refused as an
    invalid file is, so `RelayConfigReloadRefused` fires."""
    app = app_of(relay)
    path = write(tmp_path / "relay.yml", upstream_url)

    def broken(config: Any) -> Any:
        raise RuntimeError("secret-looking text from the config")

    monkeypatch.setattr(reload, "PolicyRegistry", broken)
    before = app[REGISTRY].current
    with caplog.at_level(logging.ERROR, logger="relay.reload"):
        assert not reload_config(app, path)
    assert app[REGISTRY].current is before
    assert reloads(app, "invalid") == 1 and reloads(app, "ok") == 0
    (line,) = [r.getMessage() for r in caplog.records if r.name == "relay.reload"]
    assert "config reload refused" in line and "RuntimeError" in line
    assert "secret-looking" not in line
    resp = await relay.post("/api/42/envelope/", data=ENVELOPE, headers=auth_header())
    assert resp.status == 200


async def test_keys_that_need_a_restart_are_named_and_those_applied_are_not(
    relay: TestClient, tmp_path: Path, upstream_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    app = app_of(relay)
    started = app[CONFIG]
    path = write(
        tmp_path / "relay.yml",
        upstream_url,
        listen={"port": started.listen.port + 1, "trusted_proxies": ["10.0.0.0/8"]},
        log={"level": "debug"},
        shutdown_timeout=60,
        admin={"token": "t" * 32},
    )
    with caplog.at_level(logging.INFO, logger="relay.reload"):
        assert reload_config(app, path)
    said = [r.getMessage() for r in caplog.records if r.name == "relay.reload"]
    needing = {
        text.split("'")[1] for text in said if text.endswith("takes effect only after a restart")
    }
    assert needing == {"listen.port", "log", "shutdown_timeout"}
    assert said[-1].endswith("not applied until a restart: log, shutdown_timeout, listen.port")
    # What a reload applies is in force: the trusted proxies and the admin token.
    registry = app[REGISTRY].current
    assert [str(n) for n in registry.trusted_proxies] == ["10.0.0.0/8"]
    assert registry.config.admin.token is not None


async def test_a_reload_changing_nothing_that_needs_a_restart_says_nothing_of_it(
    relay: TestClient, tmp_path: Path, upstream_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    app = app_of(relay)
    path = write(tmp_path / "relay.yml", upstream_url)
    with caplog.at_level(logging.INFO, logger="relay.reload"):
        assert reload_config(app, path)
    said = [r.getMessage() for r in caplog.records if r.name == "relay.reload"]
    assert len(said) == 1 and said[0].startswith("config reloaded: revision ")
    assert "restart" not in said[0]
