"""`relay usage`: quota, budget and spike usage per scope.

With `redis` configured the counters are read from Redis directly (they are
shared by every replica). Without it they live inside the running relay, which
is asked over HTTP (`GET /api/relay/usage/`, needs `admin.token`), directly: never
through a proxy the environment names (`http_proxy`), which would see the token.
"""

from __future__ import annotations

import asyncio
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import orjson

from relay.config import Config, RedisConfig
from relay.policy.registry import PolicyRegistry
from relay.protocol.url import local_authority
from relay.services.limiter import LimiterUnavailable, create_limiter
from relay.web.admin import row_to_json, usage_scopes


async def _from_redis(config: Config, redis: RedisConfig) -> list[dict[str, Any]]:
    limiter = create_limiter(redis)
    try:
        rows = await limiter.usage(usage_scopes(PolicyRegistry(config)))
    except LimiterUnavailable as exc:
        cause = f" ({exc.__cause__})" if exc.__cause__ is not None and str(exc.__cause__) else ""
        where = _where(redis.url.reveal())
        raise RuntimeError(
            f"cannot read the counters from Redis at {where}: {exc}{cause}"
        ) from None
    finally:
        await limiter.close()
    return [row_to_json(r) for r in rows]


def _where(url: str) -> str:
    """A Redis URL to print: no credentials, no query (it can hold `password=`)."""
    parts = urllib.parse.urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _counted(config: Config) -> bool:
    """Whether any quota, budget or spike protection applies: something to show."""
    return any(quotas for _, quotas in usage_scopes(PolicyRegistry(config)))


def usage_url(host: str, port: int) -> str:
    """The running relay's usage endpoint, for `listen.host` and `listen.port`."""
    return f"http://{local_authority(host, port)}/api/relay/usage/"


def _from_http(config: Config) -> list[dict[str, Any]]:
    token = config.admin.token
    if token is None or not token.reveal():
        raise RuntimeError(
            "counters live in the running relay: set admin.token to read them over HTTP"
        )
    url = usage_url(config.listen.host, config.listen.port)
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token.reveal()}"})
    # Straight to the relay: urllib would send the token through an `http_proxy` of the
    # environment otherwise.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=5) as resp:
            body = resp.read()
    except urllib.error.HTTPError as exc:
        raise RuntimeError(f"the relay at {url} answered {exc.code}") from None
    except urllib.error.URLError as exc:
        raise RuntimeError(f"cannot reach the relay at {url}: {exc.reason}") from None
    except OSError as exc:
        raise RuntimeError(f"cannot reach the relay at {url}: {exc}") from None
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        data = None
    rows = data.get("usage") if isinstance(data, dict) else None
    if not isinstance(rows, list) or not all(
        isinstance(r, dict) and r.keys() >= _ROW_KEYS for r in rows
    ):
        raise RuntimeError(f"what answers at {url} is not a relay's usage endpoint")
    return rows


#: What every usage row holds (`relay.web.admin.row_to_json`).
_ROW_KEYS = frozenset(
    {"kind", "id", "scope", "scope_id", "category", "categories", "used", "limit"}
    | {"window_end", "dry_run", "currency", "active"}
)


def _money(value: float) -> str:
    """An amount as budgets count it (to a billionth): two decimals at least, and every
    one that is not 0 (0.001 must not read 0.00)."""
    whole, _, fraction = f"{value:.9f}".partition(".")
    fraction = fraction.rstrip("0")
    return f"{whole}.{fraction.ljust(2, '0')}"


def _format(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no quotas, budgets or spike protection configured"
    header = ("kind", "id", "scope", "scope id", "category", "used", "limit", "window ends")
    lines = [header]
    for r in rows:
        end = r["window_end"]
        ends = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(end)) if end else "-"
        used = (
            f"{_money(r['used'])} {r['currency'] or ''}".strip()
            if r["kind"] == "budget"
            else str(r["used"])
        )
        limit = (
            f"{_money(r['limit'])} {r['currency'] or ''}".strip()
            if r["kind"] == "budget"
            else str(r["limit"])
        )
        flags = (
            " (dry run)"
            if r["dry_run"]
            else (" (active)" if r["active"] and r["kind"] == "spike" else "")
        )
        cat = r["category"] or ";".join(r["categories"]) or "all"
        lines.append(
            (r["kind"], r["id"] + flags, r["scope"], r["scope_id"], cat, used, limit, ends)
        )
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(str(v).ljust(w) for v, w in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def print_usage(config: Config, *, as_json: bool = False) -> int:
    try:
        if not _counted(config):
            rows = []  # nothing counts: no need to reach Redis or the relay
        elif config.redis is not None:
            rows = asyncio.run(_from_redis(config, config.redis))
        else:
            rows = _from_http(config)
    except (LimiterUnavailable, RuntimeError) as exc:
        print(f"relay usage: {exc}", file=sys.stderr)
        return 1
    print(
        orjson.dumps({"usage": rows}, option=orjson.OPT_INDENT_2).decode()
        if as_json
        else _format(rows)
    )
    return 0
