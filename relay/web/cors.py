"""CORS for browser SDKs, as Sentry answers it."""

from __future__ import annotations

from aiohttp import web

from relay.web.request import IngestRequest

ALLOW_HEADERS = ", ".join(
    [
        "x-sentry-auth",
        "x-requested-with",
        "x-forwarded-for",
        "origin",
        "referer",
        "accept",
        "content-type",
        "authentication",
        "authorization",
        "content-encoding",
        "transfer-encoding",
        "sentry-trace",
        "baggage",
    ]
)
EXPOSE_HEADERS = "x-sentry-error, x-sentry-rate-limits, retry-after"


def cors_headers(request: IngestRequest | web.Request) -> dict[str, str]:
    origin = request.headers.get("Origin")
    return {
        "Access-Control-Allow-Origin": origin or "*",
        "Access-Control-Expose-Headers": EXPOSE_HEADERS,
        "Vary": "Origin",
    }


async def preflight(request: web.Request) -> web.Response:
    headers = cors_headers(request)
    headers.update(
        {
            "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
            "Access-Control-Allow-Headers": ALLOW_HEADERS,
            "Access-Control-Max-Age": "3600",
        }
    )
    return web.Response(status=200, headers=headers)


def add_cors_headers(request: IngestRequest, response: web.StreamResponse) -> None:
    """CORS headers on every ingest (/api/) answer to a browser (a request with an
    `Origin`), errors included. Server-side SDKs send no `Origin` and get none, and the
    relay's own endpoints (/api/relay/: usage, health) get none either: no web page
    needs to read them."""
    path = request.path
    if (
        "Origin" in request.headers
        and path.startswith("/api/")
        and not path.startswith("/api/relay/")
        and request.method != "OPTIONS"
    ):
        response.headers.update(cors_headers(request))
