"""Errors -> HTTP, in one place.

    ApiError                      (status, detail, causes, headers)
    ├── BadRequest        400     malformed body or envelope, an envelope dsn that is not
    │                             a DSN or names another project
    ├── Unauthorized      401     missing, malformed or conflicting auth, bad key
    ├── Forbidden         403     unknown project or key, CORS origin
    ├── RequestTimeout    408     the client did not send its body in time
    ├── PayloadTooLarge   413     body or decompressed body over the limits
    ├── UnsupportedMedia  415     unknown Content-Encoding
    ├── TooManyRequests   429     rate limited (Retry-After, X-Sentry-Rate-Limits)
    └── ServiceUnavailable 503    outbox/spool full, draining

Bodies are `{"detail": "...", "causes": [...]}` as Sentry answers.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping

import orjson
from aiohttp import web

from relay.logs import log_unexpected
from relay.web.request import IngestRequest

log = logging.getLogger("relay.web")


class ApiError(Exception):
    status = 500

    def __init__(
        self, detail: str, causes: list[str] | None = None, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.causes = causes or []
        self.headers = dict(headers or {})

    def response(self) -> web.Response:
        return error_response(self.status, self.detail, self.causes, self.headers)


class BadRequest(ApiError):
    status = 400


class Unauthorized(ApiError):
    status = 401


class Forbidden(ApiError):
    status = 403


class RequestTimeout(ApiError):
    status = 408


class PayloadTooLarge(ApiError):
    status = 413


class UnsupportedMedia(ApiError):
    status = 415


class TooManyRequests(ApiError):
    status = 429


class ServiceUnavailable(ApiError):
    status = 503


def error_response(
    status: int,
    detail: str,
    causes: list[str] | None = None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    body = orjson.dumps({"detail": detail, "causes": causes or []})
    hdrs = {"X-Sentry-Error": detail.replace("\r", " ").replace("\n", " ")[:200], **(headers or {})}
    return web.Response(status=status, body=body, content_type="application/json", headers=hdrs)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_to_response(request: IngestRequest, exc: Exception) -> web.StreamResponse:
    """ApiError -> its response; aiohttp's HTTP errors -> JSON; anything else -> 500, logged.

    Call it from an `except` block (the 500 is logged with the traceback). Redirects and
    other non-error `HTTPException`s are raised again for aiohttp to answer.
    """
    if isinstance(exc, ApiError):
        return exc.response()
    if isinstance(exc, web.HTTPException):
        if exc.status >= 400:
            return error_response(
                exc.status,
                exc.reason or "error",
                headers={
                    k: v for k, v in exc.headers.items() if k.lower() in ("allow", "retry-after")
                },
            )
        raise exc
    log_unexpected(log, "unhandled error in %s %s", request.method, request.path)
    return error_response(500, "internal error")
