"""Every metric the Grafana dashboard and the Prometheus alerts use exists in `/metrics`.

The relay runs with a spool, Redis, quotas, spike protection and a shadow project, and
gets some traffic (accepted, filtered and mirrored), so that every family it can export
is present in the scrape.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import orjson
import yaml
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from relay.app import create_app
from tests.deploy.conftest import DEPLOY
from tests.support.redis_server import RedisServer
from tests.support.relay import auth_header, make_config
from tests.support.upstream import RecordingUpstream

SUFFIXES = ("_bucket", "_sum", "_count")
NAME_RE = re.compile(r"\b(relay_[a-z0-9_]+)\b")


def _dashboard_exprs() -> list[str]:
    dashboard = json.loads((DEPLOY / "grafana" / "relay.json").read_text())
    exprs: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("expr", "definition") and isinstance(value, str):
                    exprs.append(value)
                elif key == "query" and isinstance(value, str | dict):
                    walk({"expr": value} if isinstance(value, str) else value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(dashboard)
    return exprs


def _alert_exprs() -> list[str]:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


def _referenced(exprs: list[str]) -> set[str]:
    return {name for expr in exprs for name in NAME_RE.findall(expr)}


def _event(error_type: str) -> bytes:
    payload = {
        "exception": {"values": [{"type": error_type, "value": "boom"}]},
        "platform": "python",
    }
    return b'{}\n{"type":"event"}\n' + orjson.dumps(payload) + b"\n"


async def _relay(
    aiohttp_client: Any, aiohttp_server: Any, redis_server: RedisServer, tmp_path: Path
) -> tuple[TestClient[Any, Any], RecordingUpstream]:
    recorder = RecordingUpstream()
    server = await aiohttp_server(recorder.app)
    url = str(server.make_url("")).rstrip("/")
    config = make_config(
        url,
        redis={"url": redis_server.url, "prefix": f"deploy-{tmp_path.name}"},
        spool={"path": str(tmp_path / "spool"), "durable": False},
        policy={
            "filters": {"error_types": ["NoiseError"]},
            "quotas": [
                {
                    "id": "errors-daily",
                    "categories": ["error"],
                    "scope": "project",
                    "limit": 100,
                    "window": "day",
                }
            ],
            "spike_protection": {"enabled": True, "categories": ["error"]},
            "shadow": {"dsn": f"http://{'e' * 32}@{url.split('//', 1)[1]}/7"},
        },
    )
    client = await aiohttp_client(create_app(config))
    return client, recorder


async def _families(client: TestClient[Any, Any]) -> tuple[set[str], set[str]]:
    resp = await client.get("/metrics")
    assert resp.status == 200
    text = await resp.text()
    families: set[str] = set()
    samples: set[str] = set()
    for family in text_string_to_metric_families(text):
        families.add(family.name)
        samples.update(sample.name for sample in family.samples)
    return families, samples


def _exists(name: str, families: set[str], samples: set[str]) -> bool:
    if name in families or name in samples:
        return True
    if name.endswith("_total") and name.removesuffix("_total") in families:
        return True
    return any(name.endswith(s) and name.removesuffix(s) in families for s in SUFFIXES)


async def test_dashboard_and_alerts_reference_only_exported_metrics(
    aiohttp_client: Any, aiohttp_server: Any, redis_server: RedisServer, tmp_path: Path
) -> None:
    client, recorder = await _relay(aiohttp_client, aiohttp_server, redis_server, tmp_path)
    for error_type in ("ValueError", "NoiseError"):
        resp = await client.post(
            "/api/42/envelope/", data=_event(error_type), headers=auth_header()
        )
        assert resp.status == 200
    await recorder.wait_for(2)  # the accepted event, and the shadow copy of the filtered one
    for _ in range(100):
        families, samples = await _families(client)
        if "relay_shadow_deliveries_total" in samples:
            break
        await asyncio.sleep(0.05)

    referenced = _referenced(_dashboard_exprs()) | _referenced(_alert_exprs())
    missing = sorted(n for n in referenced if not _exists(n, families, samples))
    assert missing == []

    # the families the brief of the dashboard names are all exported, with samples
    for name in (
        "relay_items_total",
        "relay_request_duration_seconds_bucket",
        "relay_upstream_up",
        "relay_spool_bytes",
        "relay_spool_oldest_seconds",
        "relay_quota_used",
        "relay_quota_limit",
        "relay_spike_active",
        "relay_redis_errors_total",
        "relay_shadow_deliveries_total",
    ):
        assert name in samples, name
        assert name in referenced, name


async def test_every_exported_family_is_on_the_dashboard(
    aiohttp_client: Any, aiohttp_server: Any, redis_server: RedisServer, tmp_path: Path
) -> None:
    """A new metric shows up here until someone decides where it goes."""
    client, _ = await _relay(aiohttp_client, aiohttp_server, redis_server, tmp_path)
    families, _ = await _families(client)
    shown = _referenced(_dashboard_exprs())
    shown_families = {n.removesuffix("_total") for n in shown} | {
        n.removesuffix(s) for n in shown for s in SUFFIXES if n.endswith(s)
    }
    relay_families = {f for f in families if f.startswith("relay_")}
    not_shown = sorted(relay_families - shown_families)
    assert not_shown == []
