"""The layer around every handler: errors to JSON, CORS for browsers, request metrics."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from relay.app import create_app
from tests.support.relay import make_config


@pytest.fixture
async def client(aiohttp_client: Any, upstream_url: str) -> TestClient:
    app = create_app(make_config(upstream_url))

    async def boom(request: web.Request) -> web.Response:
        raise RuntimeError("a bug")

    async def moved(request: web.Request) -> web.Response:
        raise web.HTTPFound("/elsewhere")

    app.router.add_post("/api/{project_id}/boom/", boom, name="boom")
    app.router.add_get("/api/moved/", moved)
    return await aiohttp_client(app)  # type: ignore[no-any-return]


async def test_an_unhandled_error_is_a_logged_json_500(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    resp = await client.post("/api/42/boom/", headers={"Origin": "https://shop.example.com"})
    assert resp.status == 500
    assert await resp.json() == {"detail": "internal error", "causes": []}
    assert resp.headers["X-Sentry-Error"] == "internal error"
    assert resp.headers["Access-Control-Allow-Origin"] == "https://shop.example.com"
    assert "unhandled error in POST /api/42/boom/" in caplog.text
    metrics = await (await client.get("/metrics")).text()
    assert 'relay_requests_total{endpoint="boom",status="500"} 1.0' in metrics


async def test_http_errors_are_json_and_redirects_pass(client: TestClient) -> None:
    missing = await client.get("/api/42/nothing-here/")
    assert missing.status in (404, 405)
    assert "detail" in await missing.json()
    moved = await client.get("/api/moved/", allow_redirects=False)
    assert moved.status == 302
    assert moved.headers["Location"] == "/elsewhere"
