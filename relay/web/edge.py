"""The one layer around every handler, for aiohttp's routes and the fast path alike.

Errors become JSON answers, browsers get CORS headers (on errors too), the request's
share of the body budget is given back, and ingest requests are counted and timed.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from aiohttp import web

from relay.keys import BODY_BUDGET, METRICS
from relay.web.cors import add_cors_headers
from relay.web.errors import Handler, error_to_response
from relay.web.request import IngestRequest

R = TypeVar("R", bound=IngestRequest)


async def answer(
    request: R, handler: Callable[[R], Awaitable[web.StreamResponse]], label: str | None
) -> web.StreamResponse:
    """`handler`'s answer to `request`, or the error's; counted under `label` (an
    endpoint's name) unless it is None."""
    start = time.perf_counter()
    status = 500
    try:
        try:
            response = await handler(request)
        except Exception as exc:
            response = error_to_response(request, exc)
        add_cors_headers(request, response)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        request.app[BODY_BUDGET].release(request)
        if label is not None:
            request.app[METRICS].count_request(label, status, time.perf_counter() - start)


#: Route names whose endpoint is counted under another name.
_LABELS = {"cron_key": "cron", "cron_key_slash": "cron"}


def _endpoint_label(request: web.Request) -> str | None:
    """The ingest endpoint's name for /api/ requests (the relay's own /api/relay/ aside)."""
    path = request.path
    if not path.startswith("/api/") or path.startswith("/api/relay/"):
        return None
    name = request.match_info.route.name
    if not name:
        return "other"
    # The cron endpoint takes the key in the path or not: one endpoint, one label.
    return _LABELS.get(name) or name.removesuffix("_slash")


@web.middleware
async def edge_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    return await answer(request, handler, _endpoint_label(request))
