"""Secrets never show: DSN secret keys, the admin token, the Redis password and the
pseudonymization key appear in no log line (text or JSON), no error response, no
`/metrics` output, and no `relay check-config` output, valid or invalid."""

from __future__ import annotations

import asyncio
import io
import logging
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from aiohttp.test_utils import TestClient

from relay.app import create_app
from relay.cli import main as cli_main
from relay.logs import JsonFormatter
from tests.hardening.conftest import GOOD_ENVELOPE
from tests.support.redis_server import RedisServer, free_port
from tests.support.relay import KEY, OTHER_KEY, auth_header, make_config
from tests.support.upstream import RecordingUpstream, Reply

DSN_SECRET = "dsnsecretQ7x9w2"
SHADOW_SECRET = "shadowsecretK3p8"
ADMIN_TOKEN = "admintokenZ5r1m4"
REDIS_PASSWORD = "redispassV8n2c6"
PSEUDO_KEY = "pseudokeyH4j7t1-long-enough"
SDK_SECRET = "sdksecretM2b5v9"
SECRETS = [DSN_SECRET, SHADOW_SECRET, ADMIN_TOKEN, REDIS_PASSWORD, PSEUDO_KEY, SDK_SECRET]


def _last_json(seen: list[str]) -> str:
    return next(text for text in reversed(seen) if text.startswith("{"))


def leaked(text: str | bytes) -> list[str]:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return [s for s in SECRETS if s in text]


@pytest.fixture
def redis_with_password() -> Iterator[RedisServer]:
    server = RedisServer().start()
    with socket.create_connection(("127.0.0.1", server.port), timeout=2) as conn:
        conn.sendall(f"CONFIG SET requirepass {REDIS_PASSWORD}\r\n".encode())
        assert conn.recv(16).startswith(b"+OK")
    yield server
    server.cleanup()


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """Everything logged, at debug level, through the relay's JSON formatter."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.setLevel(logging.DEBUG)
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield stream
    root.removeHandler(handler)
    root.setLevel(old_level)


def secret_config(host: str, redis_port: int) -> dict[str, Any]:
    return {
        "projects": [
            {
                "id": 42,
                "keys": [KEY],
                "upstream_dsn": f"http://{'d' * 32}:{DSN_SECRET}@{host}/4500",
            },
            {"id": 43, "keys": [OTHER_KEY]},
        ],
        "admin": {"token": ADMIN_TOKEN},
        "redis": {"url": f"redis://:{REDIS_PASSWORD}@127.0.0.1:{redis_port}/0"},
        "policy": {
            "quotas": [
                {
                    "id": "q",
                    "categories": ["error"],
                    "scope": "project",
                    "limit": 1000,
                    "window": 60,
                }
            ],
            "scrubbing": {"pseudonymize": {"fields": ["user.id"], "key": PSEUDO_KEY}},
            "shadow": {"dsn": f"http://{'e' * 32}:{SHADOW_SECRET}@{host}/4501"},
            "filters": {"error_messages": ["*drop me*"]},
        },
        "log": {"level": "debug", "format": "json"},
    }


async def test_secrets_stay_out_of_logs_errors_and_metrics(
    aiohttp_server: Any,
    aiohttp_client: Any,
    redis_with_password: RedisServer,
    caplog: pytest.LogCaptureFixture,
    json_log: io.StringIO,
) -> None:
    caplog.set_level(logging.DEBUG)
    upstream = RecordingUpstream()
    server = await aiohttp_server(upstream.app)
    host = f"127.0.0.1:{server.port}"
    data = secret_config(host, redis_with_password.port)
    config = make_config(
        f"http://{host}",
        **{k: v for k, v in data.items() if k != "log"},
        upstream={"max_attempts": 2, "retry_base_s": 0.01, "outage_after": 100},
    )
    relay: TestClient = await aiohttp_client(create_app(config))
    seen: list[str] = []

    async def call(method: str, path: str, **kwargs: Any) -> int:
        resp = await relay.request(method, path, **kwargs)
        seen.append(await resp.text())
        seen.extend(f"{k}: {v}" for k, v in resp.headers.items())
        return resp.status

    sdk_auth = {
        "X-Sentry-Auth": f"Sentry sentry_key={KEY}, sentry_secret={SDK_SECRET}, sentry_version=7"
    }
    assert await call("POST", "/api/42/envelope/", data=GOOD_ENVELOPE, headers=sdk_auth) == 200
    dropped = GOOD_ENVELOPE.replace(b"well behaved", b"please drop me")
    assert await call("POST", "/api/42/envelope/", data=dropped, headers=auth_header()) == 200
    # Errors of every kind.
    assert await call("POST", "/api/42/envelope/", data=GOOD_ENVELOPE) == 401
    assert await call("POST", "/api/43/envelope/", data=GOOD_ENVELOPE, headers=sdk_auth) == 403
    assert await call("POST", "/api/42/envelope/", data=b"{", headers=sdk_auth) == 400
    bad_dsn = b'{"dsn":"http://' + KEY.encode() + b":" + SDK_SECRET.encode() + b'@h:x/42"}\n'
    assert await call("POST", "/api/42/envelope/", data=bad_dsn) == 400
    assert await call("GET", "/api/relay/usage/", headers={"Authorization": "Bearer nope"}) == 401
    assert (
        await call("GET", "/api/relay/usage/", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        == 200
    )
    # The limiter really talks to the password-protected Redis.
    usage = orjson.loads(_last_json(seen))
    assert any(row["used"] >= 1 for row in usage["usage"]), usage
    # Upstream trouble: 500s (retried, then given up), a 429, a 403.
    upstream.answer(Reply(500), Reply(500), Reply(429, {"Retry-After": "1"}), Reply(403))
    for _ in range(3):
        await call("POST", "/api/42/envelope/", data=GOOD_ENVELOPE, headers=auth_header())
    await asyncio.sleep(0.5)
    # Redis goes away: the limiter logs and counts its errors.
    redis_with_password.stop()
    await call("POST", "/api/42/envelope/", data=GOOD_ENVELOPE, headers=auth_header())
    assert await call("GET", "/metrics") == 200
    await call("GET", "/readyz")

    assert leaked("\n".join(seen)) == []
    assert leaked(caplog.text) == []
    for record in caplog.records:
        assert leaked(repr(record.__dict__)) == []
    assert leaked(json_log.getvalue()) == []
    assert json_log.getvalue(), "the JSON log should have recorded something"
    # The upstream got its own DSN's secret (it needs it), and only in the auth header.
    assert upstream.received
    for received in upstream.received:
        for name, value in received.headers.items():
            if name.lower() != "x-sentry-auth":
                assert leaked(value) == [], name
        assert SDK_SECRET.encode() not in received.body
        assert SHADOW_SECRET.encode() not in received.body or received.path.startswith("/api/4501/")


def _check_config(
    tmp_path: Path, data: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> tuple[int, str]:
    path = tmp_path / "relay.yml"
    path.write_text(yaml.safe_dump(data))
    code = cli_main(["check-config", str(path)])
    out = capsys.readouterr()
    return code, out.out + out.err


def test_check_config_output_never_shows_secrets(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = secret_config("sentry.example.com", free_port())
    good["upstream"] = {
        "url": "https://sentry.example.com",
        "proxy": f"http://egress:{DSN_SECRET}@proxy.internal:3128",
    }
    code, output = _check_config(tmp_path, good, capsys)
    assert code == 0, output
    assert leaked(output) == []

    # Invalid elsewhere: every problem is printed, the secrets are not.
    bad = secret_config("sentry.example.com", free_port())
    bad["listen"] = {"port": 0}
    bad["workers"] = 0
    code, output = _check_config(tmp_path, bad, capsys)
    assert code == 1 and "listen.port" in output
    assert leaked(output) == []

    # Invalid exactly where the secrets are.
    cases: list[dict[str, Any]] = [
        {"projects": [{"id": 1, "upstream_dsn": f"https://{'d' * 32}:{DSN_SECRET}"}]},
        {"projects": [{"id": 1, "upstream_dsn": f"https://{'d' * 32}:{DSN_SECRET}/1"}]},
        {"projects": [{"id": 1, "upstream_dsn": f"https://k:{DSN_SECRET}@[h/1"}]},
        {"projects": [{"id": 1, "upstream_dsn": f"ftp://k:{DSN_SECRET}@h/1"}]},
        {"projects": [{"id": 1, "upstream_dsn": f"https://k:{DSN_SECRET}@h:{DSN_SECRET}/1"}]},
        {"policy": {"shadow": {"dsn": f"https://k:{SHADOW_SECRET}@h/x"}}},
        {"policy": {"shadow": {"dsn": f"https://k:{SHADOW_SECRET}"}}},
        {"redis": {"url": f"http://:{REDIS_PASSWORD}@127.0.0.1:6379/0"}},
        {"redis": {"url": f"redis://:{REDIS_PASSWORD}@127.0.0.1:6379/0", "on_error": "maybe"}},
        {"admin": {"token": [ADMIN_TOKEN]}},
        {"admin": {"token": ADMIN_TOKEN, "tokne": ADMIN_TOKEN}},
        {"upstream": {"url": f"ftp://u:{DSN_SECRET}@h"}},
        {"upstream": {"url": f"https://user:{DSN_SECRET}@h"}},
        {"upstream": {"proxy": f"socks5://u:{DSN_SECRET}@proxy.internal:1080"}},
        {"upstream": {"proxy": f"http://u:{DSN_SECRET}@proxy.internal:port"}},
        {"upstream": {"proxy": f"http://u:{DSN_SECRET}@proxy.internal:3128/path"}},
        {"upstream": {"proxy": [f"http://u:{DSN_SECRET}@proxy.internal:3128"]}},
        {"policy": {"scrubbing": {"pseudonymize": {"fields": ["user.id"], "key": 5}}}},
        {
            "policy": {
                "scrubbing": {"pseudonymize": {"fields": ["$$bad(", "user.id"], "key": PSEUDO_KEY}}
            }
        },
    ]
    for data in cases:
        code, output = _check_config(tmp_path, data, capsys)
        assert code == 1, (data, output)
        assert leaked(output) == [], output


def test_secret_values_do_not_show_in_config_reprs() -> None:
    config = make_config(
        "http://127.0.0.1:1",
        admin={"token": ADMIN_TOKEN},
        redis={"url": f"redis://:{REDIS_PASSWORD}@127.0.0.1:1/0"},
        policy={"scrubbing": {"pseudonymize": {"fields": ["user.id"], "key": PSEUDO_KEY}}},
        upstream={"proxy": f"http://u:{DSN_SECRET}@proxy.internal:3128"},
    )
    assert leaked(repr(config.upstream)) == []
    assert leaked(repr(config.admin)) == []
    assert leaked(repr(config.redis)) == []
    assert leaked(repr(config.policy)) == []


def test_unexpected_errors_are_logged_by_type_and_place_never_by_message(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import logging

    from relay.logs import log_unexpected

    def lookup(event: dict[str, str]) -> str:
        return event["alice@example.com"]

    with caplog.at_level(logging.ERROR, logger="relay.test"):
        try:
            lookup({})
        except KeyError:
            log_unexpected(logging.getLogger("relay.test"), "handling %s failed", "an envelope")
    (record,) = caplog.records
    text = record.getMessage()
    assert text.startswith("handling an envelope failed [KeyError at test_secrets_hygiene.py:")
    assert " lookup < test_secrets_hygiene.py:" in text  # innermost frame first
    assert record.exc_info is None
    assert "alice@example.com" not in caplog.text
