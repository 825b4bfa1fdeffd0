"""Admin routes: quota usage. They need `admin.token` (compared in constant time).

An address whose requests keep failing authentication is locked out for a while
(`relay.web.lockout`): its admin requests get 429 with `Retry-After`, a right token too.
"""

from __future__ import annotations

import hmac
import logging
from typing import Any

import orjson
from aiohttp import web

from relay.keys import LIMITER, REGISTRY
from relay.policy.registry import Denied, PolicyRegistry
from relay.processing.filters import resolve_client_ip
from relay.processing.quotas import CompiledQuotas, Scoping
from relay.services.limiter import LimiterUnavailable, UsageRow
from relay.web.errors import Forbidden, ServiceUnavailable, TooManyRequests, Unauthorized
from relay.web.lockout import ADMIN_LOCKOUT, AdminLockout, client_key

log = logging.getLogger("relay.web")


def check_admin(request: web.Request) -> None:
    registry = request.app[REGISTRY].current
    token = registry.config.admin.token
    if token is None or not token.reveal():
        raise Forbidden("admin endpoints are disabled: set admin.token")
    lockout = request.app[ADMIN_LOCKOUT]
    key = client_key(
        resolve_client_ip(
            request.remote, request.headers.get("X-Forwarded-For"), registry.trusted_proxies
        )
    )
    wait = lockout.retry_after(key)
    if wait is not None:
        # Before the token is looked at: a right one is refused too.
        raise TooManyRequests(
            "too many failed admin authentications from this address",
            headers={"Retry-After": str(wait)},
        )
    given = request.headers.get("Authorization", "")
    scheme, _, value = given.partition(" ")
    # A header's bytes beyond UTF-8 come as surrogates: compared as the bytes they were.
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        value.strip().encode("utf-8", "surrogateescape"), token.reveal().encode()
    ):
        if lockout.failed(key):
            log.warning(
                "admin: %d failed authentications from %s within %ds: its admin requests"
                " are refused for %ds",
                lockout.max_failures,
                key,
                lockout.window,
                lockout.lockout,
            )
        raise Unauthorized("admin token required (Authorization: Bearer <token>)")


def usage_scopes(registry: PolicyRegistry) -> list[tuple[Scoping, CompiledQuotas]]:
    """One (scoping, quotas) per configured project and key, plus the org policy."""
    scopes: list[tuple[Scoping, CompiledQuotas]] = []
    for project in registry.config.projects:
        found = registry.resolve(project.id, project.keys[0] if project.keys else "-")
        if isinstance(found, Denied):
            continue
        quotas = found.policy.quotas
        for key in project.keys or ["-"]:
            scopes.append((Scoping(project.id, key), quotas))
    if not scopes and registry.org_policy.quotas:
        scopes.append((Scoping(0, "-"), registry.org_policy.quotas))
    return scopes


def row_to_json(row: UsageRow) -> dict[str, Any]:
    return {
        "kind": row.kind,
        "id": row.id,
        "scope": row.scope,
        "scope_id": row.scope_id,
        "category": row.category,
        "categories": list(row.categories),
        "used": row.used if row.spend is None else row.spend,
        "limit": row.limit if row.amount is None else row.amount,
        "window_end": row.window_end,
        "dry_run": row.dry_run,
        "currency": row.currency,
        "active": row.active,
    }


async def usage(request: web.Request) -> web.Response:
    check_admin(request)
    limiter = request.app[LIMITER]
    try:
        rows = await limiter.usage(usage_scopes(request.app[REGISTRY].current))
    except LimiterUnavailable as exc:
        raise ServiceUnavailable(f"usage is unavailable: {exc}") from None
    return web.Response(
        body=orjson.dumps({"usage": [row_to_json(r) for r in rows]}),
        content_type="application/json",
    )


def add_routes(app: web.Application) -> None:
    app[ADMIN_LOCKOUT] = AdminLockout()
    app.router.add_get("/api/relay/usage/", usage)
    app.router.add_get("/api/relay/usage", usage)
