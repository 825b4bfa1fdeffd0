"""Config hardening: `upstream.url` with a user or password is refused (the relay never
sends them), DSNs stay out of config reprs but for their host and project, and a
`unix://` Redis URL is checked as redis-py reads it."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import yaml

from relay.config import (
    ConfigError,
    ListenConfig,
    PolicyConfig,
    ProjectConfig,
    RedisConfig,
    Secret,
    default_config,
    load_config,
    parse_config,
)
from relay.config.noise import ShadowConfig
from relay.policy.targets import resolve_target
from relay.protocol.dsn import Dsn
from relay.services.limiter.redis import connect
from tests.hardening.test_secrets_hygiene import _check_config
from tests.support.redis_server import RedisServer, free_port

PASSWORD = "pAsS4upstr3am"


def _problems(data: dict[str, Any], env: dict[str, str] | None = None) -> list[str]:
    try:
        parse_config(data, env=env or {})
    except ConfigError as err:
        return [str(p) for p in err.problems]
    return []


# -- upstream.url with a user or password ----------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        f"https://relay:{PASSWORD}@sentry.example.com",
        f"https://relay:{PASSWORD}@sentry.example.com:8443/prefix/",
        f"http://{PASSWORD}@127.0.0.1:9000",
        f"https://:{PASSWORD}@sentry.example.com",
        "https://relay:p%2Fw%3Fx%23y@sentry.example.com",
        "https://@sentry.example.com",
    ],
)
def test_check_config_refuses_credentials_in_upstream_url(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], url: str
) -> None:
    code, output = _check_config(tmp_path, {"upstream": {"url": url}}, capsys)
    assert code == 1, output
    assert "upstream.url: has a user or password, which the relay never sends upstream" in output
    assert "upstream_dsn" in output  # says how to authenticate instead
    assert PASSWORD not in output
    assert "p%2Fw" not in output and "p/w" not in output


def test_credentials_from_the_environment_are_refused_too() -> None:
    env = {"RELAY_UPSTREAM_URL": f"https://relay:{PASSWORD}@sentry.example.com"}
    with pytest.raises(ConfigError) as caught:
        default_config(env=env)
    assert [p.path for p in caught.value.problems] == ["upstream.url"]
    assert PASSWORD not in str(caught.value)


def test_load_config_refuses_credentials_in_upstream_url(tmp_path: Path) -> None:
    path = tmp_path / "relay.yml"
    path.write_text(yaml.safe_dump({"upstream": {"url": f"https://u:{PASSWORD}@h.example"}}))
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    assert [p.path for p in caught.value.problems] == ["upstream.url"]
    assert PASSWORD not in str(caught.value)


def test_relay_run_does_not_start_with_credentials_in_upstream_url(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "RELAY_UPSTREAM_URL": f"https://relay:{PASSWORD}@sentry.example.com",
        "RELAY_LISTEN_PORT": str(free_port()),
    }
    env.pop("RELAY_CONFIG", None)
    done = subprocess.run(
        [sys.executable, "-m", "relay", "run"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1, done.stderr
    assert "upstream.url: has a user or password" in done.stderr
    assert PASSWORD not in done.stdout + done.stderr


@pytest.mark.parametrize(
    "url",
    [
        "https://sentry.example.com",
        "https://sentry.example.com/prefix/",
        "http://127.0.0.1:9000",
        "https://sentry.example.com/path@with-at",  # an '@' in the path is no userinfo
        "file://./data/outbox",
    ],
)
def test_upstream_urls_without_credentials_still_pass(url: str) -> None:
    assert _problems({"upstream": {"url": url}}) == []


def test_dsn_keys_are_what_is_sent_and_stay_accepted() -> None:
    """A DSN's user part is its key, sent in `X-Sentry-Auth`: not refused like the URL's."""
    upstream_dsn = f"https://{'d' * 32}:{PASSWORD}@o1.ingest.sentry.io/4500"
    config = parse_config(
        {
            "upstream": {"url": "https://sentry.example.com"},
            "projects": [{"id": 42, "upstream_dsn": upstream_dsn}],
            "policy": {"shadow": {"dsn": f"https://{'e' * 32}@sentry.example.com/43"}},
        },
        env={},
    )
    target = resolve_target(config.upstream.url, config.projects[0].upstream_dsn, 42, "k")
    header = target.auth_header()
    assert f"sentry_key={'d' * 32}" in header and f"sentry_secret={PASSWORD}" in header


# -- DSNs in config reprs ----------------------------------------------------------------

PUBLIC = "a1b2c3d4e5f60718293a4b5c6d7e8f90"
SECRET = "s3cr3tDsnK3yZ9"
SHADOW_PUBLIC = "f0e1d2c3b4a5968778695a4b3c2d1e0f"


def _dsn_config() -> Any:
    return parse_config(
        {
            "projects": [
                {
                    "id": 42,
                    "keys": ["abc123"],
                    "upstream_dsn": f"https://{PUBLIC}:{SECRET}@o1.ingest.sentry.io:8443/p/4500",
                    "policy": {"shadow": {"dsn": f"http://{SHADOW_PUBLIC}@shadow.internal/7"}},
                }
            ],
            "policy": {"shadow": {"dsn": f"https://{SHADOW_PUBLIC}:{SECRET}@shadow.internal/43"}},
        },
        env={},
    )


def _leaks(text: str) -> list[str]:
    return [s for s in (PUBLIC, SECRET, SHADOW_PUBLIC) if s in text]


def test_config_reprs_show_dsns_without_their_keys() -> None:
    config = _dsn_config()
    project = config.projects[0]
    for obj in (config, project, config.policy, config.policy.shadow, project.policy):
        assert _leaks(repr(obj)) == [], repr(obj)
        assert _leaks(str(obj)) == [], str(obj)
    assert "upstream_dsn='https://***@o1.ingest.sentry.io:8443/p/4500'" in repr(project)
    assert "dsn='http://***@shadow.internal/7'" in repr(project)
    assert repr(config.policy.shadow).startswith(
        "ShadowConfig(dsn='https://***@shadow.internal/43', reasons=["
    )
    assert _leaks(repr(list(project.__rich_repr__()))) == []


def test_the_values_and_equality_are_as_configured() -> None:
    config = _dsn_config()
    project = config.projects[0]
    assert project.upstream_dsn == f"https://{PUBLIC}:{SECRET}@o1.ingest.sentry.io:8443/p/4500"
    assert config.policy.shadow is not None
    assert config.policy.shadow.dsn == f"https://{SHADOW_PUBLIC}:{SECRET}@shadow.internal/43"
    assert config == _dsn_config()
    assert project != msgspec.structs.replace(project, upstream_dsn="https://k@other.example/1")
    assert msgspec.structs.asdict(project)["upstream_dsn"] == project.upstream_dsn


def test_a_dsn_field_that_holds_no_dsn_shows_nothing_of_it() -> None:
    project = ProjectConfig(id=1, upstream_dsn=f"{PUBLIC}:{SECRET}")
    shadow = ShadowConfig(dsn=f"https://{SHADOW_PUBLIC}@host-without-project")
    assert "upstream_dsn='***'" in repr(project) and _leaks(repr(project)) == []
    assert "dsn='***'" in repr(shadow) and _leaks(repr(shadow)) == []
    assert "upstream_dsn=None" in repr(ProjectConfig(id=1))


def test_other_sections_keep_msgspecs_repr() -> None:
    for obj in (ListenConfig(), PolicyConfig(), default_config(env={})):
        assert repr(obj) == msgspec.Struct.__repr__(obj)


def test_the_masked_form_comes_from_dsn_and_its_other_forms_stay() -> None:
    dsn = Dsn.parse(f"https://{PUBLIC}:{SECRET}@[::1]:9000/x/42")
    assert dsn.masked() == "https://***@[::1]:9000/x/42"
    assert str(dsn) == f"https://{PUBLIC}:{SECRET}@[::1]:9000/x/42"
    assert dsn.redacted() == f"https://{PUBLIC[:6]}…@[::1]:9000/x/42"


# -- unix:// Redis URLs ------------------------------------------------------------------

SOCKET_PASSWORD = "s0ck/pw?x#y"
SOCKET_PASSWORD_IN_URL = "s0ck%2Fpw%3Fx%23y"


@pytest.fixture(scope="module")
def socket_redis() -> Iterator[tuple[RedisServer, str]]:
    """A real redis-server on a Unix socket (and loopback TCP), with a password."""
    server = RedisServer(extra_args=["--requirepass", SOCKET_PASSWORD])
    path = server.dir / "redis.sock"
    server.extra_args += ["--unixsocket", str(path), "--unixsocketperm", "700"]
    server.start()
    yield server, str(path)
    server.cleanup()


async def _ping(url: str, mode: str = "standalone") -> None:
    client, helpers = connect(RedisConfig(url=Secret(url), mode=mode))
    try:
        assert await client.ping()
    finally:
        await client.aclose()
        for helper in helpers:
            await helper.aclose()


@pytest.mark.parametrize(
    ("authority", "query"),
    [
        ("", ""),
        ("", "?db=2"),
        ("", "?db=1&client_name=relay"),
        ("", "?protocol=3"),
        ("", "?socket_timeout=1.5"),
        ("localhost", ""),
    ],
)
async def test_usable_unix_urls_pass_and_reach_redis(
    socket_redis: tuple[RedisServer, str], authority: str, query: str
) -> None:
    _, path = socket_redis
    url = f"unix://:{SOCKET_PASSWORD_IN_URL}@{authority}{path}{query}"
    assert _problems({"redis": {"url": url}}) == []
    await _ping(url)


@pytest.mark.parametrize(
    ("url", "mode", "why"),
    [
        ("unix://", "standalone", "has no socket path"),
        ("unix:///", "standalone", "has no socket path"),
        ("unix://:{pw}@", "standalone", "has no socket path"),
        ("unix://:{pw}@{rel}", "standalone", "a unix:// URL names no host or port"),
        ("unix://:{pw}@{path}?sokcet_timeout=1", "standalone", "redis-py takes no option sokcet"),
        ("unix://:{pw}@{path}?timeout=3", "standalone", "redis-py takes no option timeout"),
        (
            "unix://:{pw}@{path}?ssl_check_hostname=true",
            "standalone",
            "redis-py takes no option ssl_check_hostname",
        ),
        (
            "unix://:{pw}@{path}?db=two",
            "standalone",
            "redis-py refuses its options: Invalid value for 'db'",
        ),
        ("unix://:{pw}@{path}?protocol=5", "standalone", "redis-py refuses its options: protocol"),
        ("unix://:{pw}@{path}?retry=x", "standalone", "redis-py cannot make a connection"),
        ("unix://:{pw}@{path}?db=-1", "standalone", "the database (?db=) is less than 0"),
        ("unix://:{pw}@{path}", "cluster", "mode: cluster takes redis:// or rediss://"),
    ],
)
async def test_unix_urls_redis_py_cannot_use_are_refused(
    socket_redis: tuple[RedisServer, str], url: str, mode: str, why: str
) -> None:
    _, path = socket_redis
    url = url.format(pw=SOCKET_PASSWORD_IN_URL, path=path, rel=path.lstrip("/"))
    problems = _problems({"redis": {"url": url, "mode": mode}})
    assert len(problems) == 1 and problems[0].startswith(f"redis.url: {why}"), problems
    # What the refusal spares: redis-py fails with it, at the start or at the first command.
    with pytest.raises(Exception):  # noqa: B017 (each fails in its own way)
        await _ping(url, mode)


async def test_a_unix_url_naming_a_host_is_refused_as_redis_py_would_ignore_it(
    socket_redis: tuple[RedisServer, str],
) -> None:
    _, path = socket_redis
    url = f"unix://:{SOCKET_PASSWORD_IN_URL}@redis.internal:6379{path}"
    problems = _problems({"redis": {"url": url}})
    assert problems == [
        "redis.url: a unix:// URL names no host or port (redis-py ignores them): the socket's"
        " path follows unix:// (unix:///run/redis/redis.sock) (a '/', '?' or '#' in the"
        " password must be percent-encoded)"
    ]
    await _ping(url)  # redis-py reaches the local socket, not the host the URL names


@pytest.mark.parametrize(
    "url",
    [
        "unix://:s0ck/Qz9@/run/redis.sock",
        "unix://:s0ck?Qz9=1@/run/redis.sock",
        "unix://:s0ck#Qz9@/run/redis.sock",
        "unix://relay:s0ck/Qz9@/run/redis.sock?db=1",
    ],
)
def test_a_unix_url_with_an_unencoded_password_is_refused_without_quoting_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], url: str
) -> None:
    code, output = _check_config(tmp_path, {"redis": {"url": url}}, capsys)
    assert code == 1, output
    assert "redis.url: a unix:// URL names no host or port" in output
    assert "percent-encoded" in output
    assert "s0ck" not in output and "Qz9" not in output, output


# -- redis:// and rediss:// query options -------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379/0?socket_timeout=1&health_check_interval=5",
        "rediss://cache.internal:6380/0?ssl_cert_reqs=none",
        "redis://cache.internal:6379",
    ],
)
def test_tcp_urls_with_options_redis_py_takes_pass(url: str) -> None:
    assert _problems({"redis": {"url": url}}) == []


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("redis://h:6379/0?sokcet_timeout=1", "redis-py takes no option sokcet_timeout for a TCP"),
        (
            "rediss://h:6380/0?ssl_cert_reqz=none",
            "redis-py takes no option ssl_cert_reqz for a TLS",
        ),
        ("redis://h/0?db=x", "redis-py refuses its options: Invalid value for 'db'"),
        ("redis://h/0?health_check_interval=x", "redis-py refuses its options: Invalid value"),
    ],
)
def test_tcp_urls_with_options_redis_py_refuses_are_refused(url: str, why: str) -> None:
    (problem,) = _problems({"redis": {"url": url}})
    assert problem.startswith(f"redis.url: {why}"), problem


def test_an_option_that_may_be_a_piece_of_the_password_is_not_named() -> None:
    # `1?secret=part` is the password: unencoded, its `?` starts the query.
    (problem,) = _problems({"redis": {"url": "redis://u:1?secret=part@cache.internal"}})
    assert "secret" not in problem and "part" not in problem
    assert "must be percent-encoded" in problem
