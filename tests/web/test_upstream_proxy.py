"""A relay configured with `upstream.proxy` (and `ca_file`, `no_proxy`): the real SDK's
events reach the upstream through a real forward proxy; the config is checked, shown
without its password, and a reload that changes it says a restart is needed."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import sentry_sdk
import trustme
import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient

from relay.config import ConfigError, Secret, parse_config
from relay.keys import CONFIG
from relay.server import banner
from relay.services.reload import reload_config
from relay.services.upstream_http import UpstreamHttp
from tests.support.http_proxy import HttpProxy
from tests.support.relay import KEY, RelayFactory, make_config
from tests.support.upstream import RecordingUpstream


@pytest.fixture
async def proxy() -> AsyncIterator[HttpProxy]:
    server = await HttpProxy().start()
    yield server
    await server.close()


@pytest.fixture
def sdk_off() -> Iterator[None]:
    yield
    client = sentry_sdk.get_client()
    if client.is_active():
        client.close(timeout=2)


async def test_sdk_events_reach_the_upstream_through_the_proxy(
    relay_factory: RelayFactory,
    proxy: HttpProxy,
    recorder: RecordingUpstream,
    upstream_url: str,
    sdk_off: None,
) -> None:
    relay = await relay_factory(upstream={"proxy": proxy.url})
    sentry_sdk.init(
        dsn=f"http://{KEY}@127.0.0.1:{relay.port}/42",
        default_integrations=False,
        auto_enabling_integrations=False,
    )
    sentry_sdk.capture_message("payment failed for card 4111 1111 1111 1111")
    await asyncio.to_thread(sentry_sdk.flush, 5)
    await recorder.wait_for(1)
    (event,) = recorder.items("event")
    assert "4111 1111 1111 1111" not in event.payload.decode()  # scrubbed on the way
    (asked,) = proxy.asked
    assert asked.method == "POST"
    assert asked.target.startswith(f"{upstream_url}/api/42/envelope/")


async def test_no_proxy_keeps_a_host_off_the_proxy(
    relay_factory: RelayFactory, proxy: HttpProxy, recorder: RecordingUpstream
) -> None:
    relay = await relay_factory(upstream={"proxy": proxy.url, "no_proxy": "127.0.0.1"})
    body = b'{}\n{"type":"event"}\n{"message":"hello"}\n'
    resp = await relay.post(
        "/api/42/envelope/", data=body, headers={"X-Sentry-Auth": f"Sentry sentry_key={KEY}"}
    )
    assert resp.status == 200
    await recorder.wait_for(1)
    assert proxy.asked == [] and proxy.connections == 0


def test_proxy_no_proxy_and_ca_file_are_checked(tmp_path: Path) -> None:
    not_pem = tmp_path / "ca.pem"
    not_pem.write_text("not a certificate\n")
    with pytest.raises(ConfigError) as caught:
        make_config(
            "https://sentry.example.com",
            upstream={
                "proxy": "socks5://proxy.internal:1080",
                "no_proxy": "sentry.example.com, host:8080",
                "ca_file": str(not_pem),
            },
        )
    problems = {p.path: p.message for p in caught.value.problems}
    assert problems["upstream.proxy"].startswith("must start with http:// or https://")
    assert "'host:8080' is not a host name" in problems["upstream.no_proxy"]
    assert problems["upstream.ca_file"].startswith("cannot load CA certificates from it")
    with pytest.raises(ConfigError, match=r"upstream\.ca_file: cannot load CA certificates"):
        make_config("https://h", upstream={"ca_file": str(tmp_path / "missing.pem")})


def test_an_empty_proxy_is_none_as_from_an_unset_environment_variable() -> None:
    config = make_config("https://sentry.example.com", upstream={"proxy": "", "no_proxy": ""})
    assert not config.upstream.proxy
    assert UpstreamHttp.from_config(config.upstream).proxy is None
    assert "through the proxy" not in banner(config)


def test_the_environment_proxy_variables_through_the_config() -> None:
    data = {"upstream": {"proxy": "${HTTPS_PROXY:-}", "no_proxy": "${NO_PROXY:-}"}}
    unset = parse_config(data, env={})
    assert UpstreamHttp.from_config(unset.upstream).proxy is None
    env = {"HTTPS_PROXY": "http://proxy.internal:3128", "NO_PROXY": "localhost,10.0.0.0/8"}
    proxy = UpstreamHttp.from_config(parse_config(data, env=env).upstream).proxy
    assert proxy is not None and proxy.shown == "proxy.internal:3128"
    assert proxy.bypasses("localhost") and proxy.bypasses("10.1.2.3")
    assert not proxy.bypasses("sentry.io")


def test_the_client_and_the_banner_from_the_config() -> None:
    config = make_config(
        "https://sentry.example.com",
        upstream={"proxy": "http://egress:hunter2@proxy.internal:3128", "no_proxy": ["internal"]},
    )
    assert config.upstream.proxy == Secret("http://egress:hunter2@proxy.internal:3128")
    http = UpstreamHttp.from_config(config.upstream)
    assert http.proxy is not None
    assert (http.proxy.host, http.proxy.port, http.proxy.names) == (
        "proxy.internal",
        3128,
        ("internal",),
    )
    text = banner(config)
    assert "upstream: https://sentry.example.com (through the proxy proxy.internal:3128)" in text
    assert "hunter2" not in text


async def test_ca_file_is_trusted_besides_the_system_store(
    aiohttp_server: Any, tmp_path: Path
) -> None:
    async def ok(_: web.Request) -> web.Response:
        return web.Response(status=200)

    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_context)
    app = web.Application()
    app.router.add_post("/api/42/envelope/", ok)
    server = await aiohttp_server(app, ssl=server_context)
    ca_file = tmp_path / "internal-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    url = f"https://localhost:{server.port}/api/42/envelope/"
    with_ca = UpstreamHttp.from_config(
        make_config(url, upstream={"ca_file": str(ca_file)}).upstream
    )
    without = UpstreamHttp.from_config(make_config(url).upstream)
    try:
        assert (await with_ca.post(url, b"x", {}, 5)).status == 200
        with pytest.raises(OSError, match="CERTIFICATE_VERIFY_FAILED"):
            await without.post(url, b"x", {}, 5)
    finally:
        await with_ca.close()
        await without.close()


async def test_a_reload_that_changes_the_proxy_says_it_needs_a_restart(
    relay: TestClient, tmp_path: Path, caplog: pytest.LogCaptureFixture, upstream_url: str
) -> None:
    app = relay.app
    assert app is not None
    path = tmp_path / "relay.yml"
    data = {
        "upstream": {"url": upstream_url, "proxy": "http://proxy.internal:3128", "timeout_s": 7},
        "projects": [{"id": 42, "keys": [KEY]}],
    }
    path.write_text(yaml.safe_dump(data))
    with caplog.at_level(logging.WARNING, logger="relay.reload"):
        assert reload_config(app, path)
    said = {r.getMessage() for r in caplog.records}
    assert "config reload: a change of 'upstream.proxy' takes effect only after a restart" in said
    assert (
        "config reload: a change of 'upstream.timeout_s' takes effect only after a restart" in said
    )
    assert not any("upstream.url" in text for text in said)
    assert app[CONFIG].upstream.proxy is None  # the one the relay started with
