"""Ingest endpoints: envelope, store, security, minidump, cron check-ins, attachments.

Cheap checks first (auth from headers, project and key, origin), then the body
(size- and time-capped, decompressed with a cap), then `Ingest.submit`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import uuid
from collections.abc import Mapping
from functools import partial

import orjson
from aiohttp import web
from multidict import MultiDict

from relay.keys import BODY_BUDGET, INGEST, OUTBOX, REGISTRY, STATE
from relay.outcomes import Outcome, OutcomeKind, Reason
from relay.policy.registry import Denied, ProjectPolicy
from relay.processing.context import RequestContext
from relay.processing.filters import resolve_client_ip
from relay.processing.minidump import is_raw_upload, prepare_minidump_upload, wrap_raw_upload
from relay.protocol.attachment_upload import attachments_envelope
from relay.protocol.auth import Auth, AuthError, extract_auth, is_valid_public_key
from relay.protocol.checkin import (
    CheckInError,
    check_in_envelope,
    check_in_from_json,
    check_in_from_query,
)
from relay.protocol.dsn import Dsn, InvalidDsn
from relay.protocol.envelope import Envelope, EnvelopeError, parse_envelope
from relay.protocol.multipart import MultipartError
from relay.protocol.ratelimit_header import format_rate_limits
from relay.protocol.security import SecurityReportError, security_report_envelopes
from relay.protocol.store import (
    StoreError,
    decode_store_body,
    normalize_event_id,
    store_to_envelope,
)
from relay.services.ingest import IngestResult, Received, sdk_headers, upload_quantities
from relay.services.outbox import OutboxEntry, OutboxFull
from relay.web.body import BodyBudget, read_body
from relay.web.errors import (
    ApiError,
    BadRequest,
    Forbidden,
    PayloadTooLarge,
    ServiceUnavailable,
    TooManyRequests,
    Unauthorized,
    UnsupportedMedia,
)
from relay.web.request import IngestRequest

#: Seconds an SDK is asked to wait when the relay is full or draining.
OVERLOAD_RETRY_AFTER = "5"
#: The client a check-in sent without an SDK (no `sentry_client`) is forwarded as, as
#: Sentry names it.
HTTP_CHECK_IN_CLIENT = "relay-http"
#: Item types that belong to an event (the event itself, or what is attached to or turned
#: into one): an envelope holding one of them and no `event_id` header is given a new id,
#: as Sentry gives it, sent on in the header and answered as `{"id": ...}`.
EVENT_ID_ITEM_TYPES = frozenset(
    {
        "event",
        "transaction",
        "security",
        "raw_security",
        "attachment",
        "form_data",
        "unreal_report",
        "user_report",
        "feedback",
        "replay_event",
        "profile",
    }
)


def _project_id(request: IngestRequest) -> int:
    raw = request.match_info["project_id"]
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest("invalid project id") from None
    if not 0 < value < 2**63:
        raise BadRequest("invalid project id")
    return value


def _auth(
    request: IngestRequest,
    envelope_dsn: str | None = None,
    *,
    allow_envelope: bool = False,
    query: Mapping[str, str] | None = None,
) -> Auth:
    try:
        return extract_auth(
            request.headers,
            request.query if query is None else query,
            envelope_dsn,
            allow_envelope=allow_envelope,
        )
    except AuthError as exc:
        if exc.status == 401:
            raise Unauthorized(str(exc)) from None
        raise BadRequest(str(exc)) from None


def _resolve(request: IngestRequest, project_id: int, auth: Auth) -> ProjectPolicy:
    found = request.app[REGISTRY].current.resolve(project_id, auth.public_key)
    if isinstance(found, Denied):
        raise Forbidden(found.value)
    if not found.origin_allowed(request.headers.get("Origin")):
        raise Forbidden("origin not allowed for this project")
    return found


def _authorized(request: IngestRequest) -> tuple[int, Auth, ProjectPolicy]:
    """Readiness, project id, auth from headers or query, and the project's policy."""
    _check_ready(request)
    project_id = _project_id(request)
    auth = _auth(request)
    return project_id, auth, _resolve(request, project_id, auth)


def _check_ready(request: IngestRequest) -> None:
    if request.app[STATE].draining:
        raise ServiceUnavailable(
            "the relay is shutting down", headers={"Retry-After": OVERLOAD_RETRY_AFTER}
        )


def _budget(request: IngestRequest) -> BodyBudget:
    """The app's body budget, at the limit of the current (possibly reloaded) config."""
    budget = request.app[BODY_BUDGET]
    budget.limit = request.app[REGISTRY].current.config.limits.max_inflight_body_bytes
    return budget


async def _read(request: IngestRequest, *, keep_gzip: bool) -> tuple[bytes, bytes | None]:
    """The body under the current limits (and the gzip bytes as received, if asked)."""
    limits = request.app[REGISTRY].current.config.limits
    return await read_body(
        request,
        max_bytes=limits.max_request_bytes,
        max_decompressed=limits.max_decompressed_bytes,
        timeout=limits.read_timeout_s,
        keep_gzip=keep_gzip,
        budget=_budget(request),
    )


async def _body(request: IngestRequest) -> bytes:
    return (await _read(request, keep_gzip=False))[0]


def _context(request: IngestRequest, project_id: int, auth: Auth) -> RequestContext:
    return RequestContext(
        project_id=project_id,
        public_key=auth.public_key,
        client_ip=resolve_client_ip(
            request.remote,
            request.headers.get("X-Forwarded-For"),
            request.app[REGISTRY].current.trusted_proxies,
        ),
        user_agent=request.headers.get("User-Agent"),
        sdk_client=auth.client,
    )


def _respond(result: IngestResult) -> web.Response:
    headers: dict[str, str] | None = None
    if result.rate_limits:
        headers = {"X-Sentry-Rate-Limits": format_rate_limits(result.rate_limits)}
        headers["Retry-After"] = str(
            max(1, int(max(r.retry_after for r in result.rate_limits) + 0.999))
        )
    if result.overloaded:
        raise ServiceUnavailable(
            "the relay's outbox is full", headers={"Retry-After": OVERLOAD_RETRY_AFTER}
        )
    if result.all_rate_limited and result.store_unavailable:
        # 429, not 503: the items were dropped with an outcome (`rate_limited`), and an
        # SDK counts its own loss on a 5xx (sentry-python: `network_error`), not on a 429.
        raise TooManyRequests(
            "quotas cannot be checked right now", headers=headers or {"Retry-After": "1"}
        )
    if result.all_rate_limited:
        raise TooManyRequests(
            "event submission rejected with_reason: rate limited", headers=headers
        )
    if result.all_invalid and result.too_large:
        raise PayloadTooLarge("the event is too large")
    # Items that do not parse are answered 200 with their `invalid` outcome, as Sentry
    # answers them: a 400 would have the SDK count them lost a second time.
    return web.Response(
        # No id (sessions, client reports, ...): `{}`, as Sentry answers, not `{"id": null}`.
        body=orjson.dumps({"id": result.event_id} if result.event_id else {}),
        content_type="application/json",
        headers=headers,
    )


async def _submit(
    request: IngestRequest,
    envelope: Envelope,
    project_id: int,
    auth: Auth,
    project: ProjectPolicy,
    received: Received | None = None,
) -> web.Response:
    ctx = _context(request, project_id, auth)
    result = await request.app[INGEST].submit(envelope, ctx, project, received)
    return _respond(result)


async def envelope_endpoint(request: IngestRequest) -> web.Response:
    app = request.app
    _check_ready(request)
    project_id = _project_id(request)
    header_auth: Auth | None = None
    project: ProjectPolicy | None = None
    try:
        header_auth = _auth(request)
        project = _resolve(request, project_id, header_auth)
    except Unauthorized:
        pass  # tunnel mode: the key may be in the envelope header
    body, gzipped = await _read(request, keep_gzip=True)
    try:
        envelope = parse_envelope(
            body, max_items=app[REGISTRY].current.config.limits.max_envelope_items
        )
    except EnvelopeError as exc:
        raise BadRequest(f"invalid envelope: {exc}") from None
    dsn = envelope.headers.get("dsn")
    dsn_text = dsn if isinstance(dsn, str) else None
    if header_auth is None:
        auth = _auth(request, dsn_text, allow_envelope=True)
    else:
        # The request's own auth decides; an envelope dsn naming another key is a bad
        # envelope (400, as Sentry answers), not missing or bad auth (401).
        auth = header_auth
        if dsn_text is not None and _dsn_key(dsn_text) != auth.public_key:
            raise BadRequest(
                "conflicting authentication: the envelope dsn and the request disagree"
            )
    if dsn_text is not None:
        # Whatever the auth came from, an envelope naming another project is refused (as
        # Sentry does): its data would land in, and be scrubbed by the policy of, the URL's.
        _check_dsn_project(dsn_text, project_id)
    if project is None:
        project = _resolve(request, project_id, auth)
    _ensure_event_id(envelope)
    received = Received(body, gzipped) if gzipped is not None else None
    return await _submit(request, envelope, project_id, auth, project, received)


def _ensure_event_id(envelope: Envelope) -> None:
    if envelope.event_id is None and any(  # absent or `null`
        item.type in EVENT_ID_ITEM_TYPES for item in envelope.items
    ):
        envelope.set_header("event_id", uuid.uuid4().hex)


def _parse_dsn(dsn: str) -> Dsn:
    try:
        return Dsn.parse(dsn)
    except InvalidDsn:
        raise BadRequest("invalid dsn in the envelope header") from None


def _dsn_key(dsn: str) -> str:
    return _parse_dsn(dsn).public_key


def _check_dsn_project(dsn: str, project_id: int) -> None:
    if _parse_dsn(dsn).project_id != str(project_id):
        raise BadRequest("the envelope dsn names another project than the URL")


async def store_endpoint(request: IngestRequest) -> web.Response:
    project_id, auth, project = _authorized(request)
    body = await _body(request)
    if request.content_type == "application/x-sentry-envelope":
        # Sentry accepts envelopes on the store endpoint too.
        try:
            envelope = parse_envelope(
                body, max_items=request.app[REGISTRY].current.config.limits.max_envelope_items
            )
        except EnvelopeError as exc:
            raise BadRequest(f"invalid envelope: {exc}") from None
        _ensure_event_id(envelope)
        return await _submit(request, envelope, project_id, auth, project)
    try:
        event = decode_store_body(
            body,
            max_decompressed=request.app[REGISTRY].current.config.limits.max_decompressed_bytes,
        )
    except StoreError as exc:
        if getattr(exc, "too_large", False):
            raise PayloadTooLarge(str(exc)) from None
        raise BadRequest(f"invalid event: {exc}") from None
    event_id = event.get("event_id") if isinstance(event.get("event_id"), str) else None
    try:
        envelope = store_to_envelope(event, event_id=event_id)
    except StoreError as exc:
        raise BadRequest(f"invalid event: {exc}") from None
    return await _submit(request, envelope, project_id, auth, project)


async def security_endpoint(request: web.Request) -> web.Response:
    project_id, auth, project = _authorized(request)
    body = await _body(request)
    try:
        envelopes = security_report_envelopes(
            body, request.headers.get("Content-Type"), request.query
        )
    except SecurityReportError as exc:
        if exc.status == 415:
            raise UnsupportedMedia(str(exc)) from None
        raise BadRequest(f"invalid security report: {exc}") from None
    response = web.Response(body=b"{}", content_type="application/json")
    for envelope in envelopes:
        response = await _submit(request, envelope, project_id, auth, project)
    return response


async def minidump_endpoint(request: web.Request) -> web.Response:
    """Forwarded as a multipart upload, re-authenticated for the upstream. The binary parts
    (the minidump, attachments) go as received; the event fields the SDK sends beside them
    (`sentry` JSON, `sentry[...]` form fields, text parts) are scrubbed first."""
    project_id, auth, project = _authorized(request)
    body = await _body(request)
    if not body:
        raise BadRequest("empty minidump upload")
    content_type = request.headers.get("Content-Type", "")
    if not (content_type.isascii() and content_type.isprintable()):
        # It is forwarded as it is: it must be a header the upstream request can carry.
        raise BadRequest("the Content-Type of a minidump upload must be printable ASCII")
    if is_raw_upload(content_type):
        try:
            body, content_type = wrap_raw_upload(body)
        except MultipartError as exc:
            raise BadRequest(f"invalid minidump upload: {exc}") from None
    ingest = request.app[INGEST]
    prepare = partial(prepare_minidump_upload, body, content_type, project.policy.scrubber)
    try:
        if ingest.offload is not None and ingest.offload.wants(len(body)):
            body, event_id = await ingest.offload.call(prepare)  # off the loop (`offload`)
        else:
            body, event_id = prepare()
    except MultipartError as exc:
        raise BadRequest(f"invalid minidump upload: {exc}") from None
    # As Sentry answers: the id as text, a hyphenated UUID, which crash reporters expect.
    answer = web.Response(text=str(uuid.UUID(event_id)), content_type="text/plain")
    target = project.target(auth.public_key)
    ctx = _context(request, project_id, auth)
    admission = await ingest.admit_upload(ctx, project.policy, target, len(body))
    if admission.store_unavailable:
        raise ServiceUnavailable("quotas cannot be checked right now", headers={"Retry-After": "1"})
    if not admission.admitted:
        return answer  # dropped with an outcome; never 429: crash reporters retry at once
    user_agent, client = sdk_headers(project.policy, ctx)
    entry = OutboxEntry(
        target=target,
        body=body,
        project_id=project_id,
        quantities=upload_quantities(len(body)),
        event_id=event_id,
        endpoint="minidump",
        content_type=content_type,
        app_key=auth.public_key,
        user_agent=user_agent,
        client=client,
    )
    try:
        await request.app[OUTBOX].put(entry)
    except OutboxFull:
        await ingest.refund(admission.counted)  # the SDK sends it again
        for category, quantity in upload_quantities(len(body)):
            ingest.outcomes.emit(
                Outcome(OutcomeKind.INTERNAL, Reason.OUTBOX_FULL, category, quantity, project_id)
            )
        raise ServiceUnavailable(
            "the relay's outbox is full", headers={"Retry-After": OVERLOAD_RETRY_AFTER}
        ) from None
    return answer


def _cron_auth(request: IngestRequest) -> Auth:
    """As for the other endpoints, with one more source: the key in the path
    (`/cron/<slug>/<key>/`), which must agree with any other."""
    path_key = request.match_info.get("sentry_key")
    if path_key is None:
        return _auth(request)
    if not is_valid_public_key(path_key):
        raise Unauthorized("invalid sentry_key")
    query_key = request.query.get("sentry_key")
    if query_key is not None and query_key != path_key:
        raise Unauthorized("conflicting authentication")
    query: MultiDict[str] = MultiDict(request.query)
    if query_key is None:
        query["sentry_key"] = path_key
    return _auth(request, query=query)


async def cron_endpoint(request: IngestRequest) -> web.Response:
    """A cron check-in over plain HTTP (`relay.protocol.checkin`), sent on as a `check_in`
    item. Answered 202 with no body, as Sentry answers, also when a quota drops it: a
    job's `curl` does not back off, and the drop has its outcome."""
    _check_ready(request)
    project_id = _project_id(request)
    auth = _cron_auth(request)
    project = _resolve(request, project_id, auth)
    slug = request.match_info["monitor_slug"]
    try:
        if request.content_type == "application/json":
            check_in = check_in_from_json(slug, await _body(request))
        else:
            check_in = check_in_from_query(slug, request.query)
    except CheckInError as exc:
        raise BadRequest(f"invalid check-in: {exc}") from None
    if auth.client is None:
        auth = dataclasses.replace(auth, client=HTTP_CHECK_IN_CLIENT)
    with contextlib.suppress(TooManyRequests):  # never 429, as Sentry: see above
        await _submit(request, check_in_envelope(check_in), project_id, auth, project)
    return web.Response(status=202)


async def attachments_endpoint(request: IngestRequest) -> web.Response:
    """Files for an event sent before (`relay.protocol.attachment_upload`), sent on as
    `attachment` items of that event. Answered 201 with no body, as Sentry answers."""
    project_id, auth, project = _authorized(request)
    event_id = normalize_event_id(request.match_info["event_id"])
    if event_id is None:
        raise BadRequest("invalid event id")
    body = await _body(request)
    try:
        envelope = attachments_envelope(
            body,
            request.headers.get("Content-Type"),
            event_id,
            max_items=request.app[REGISTRY].current.config.limits.max_envelope_items,
        )
    except MultipartError as exc:
        raise BadRequest(f"invalid attachment upload: {exc}") from None
    answer = await _submit(request, envelope, project_id, auth, project)
    limits = {
        k: v for k, v in answer.headers.items() if k in ("X-Sentry-Rate-Limits", "Retry-After")
    }
    return web.Response(status=201, headers=limits)


def add_routes(app: web.Application) -> None:
    from relay.web.cors import preflight

    for name, handler in (
        ("envelope", envelope_endpoint),
        ("store", store_endpoint),
        ("security", security_endpoint),
        # Sentry's other paths for browser reports (CSP, and the Reporting API's NEL).
        ("csp-report", security_endpoint),
        ("nel", security_endpoint),
        ("minidump", minidump_endpoint),
    ):
        for path in (f"/api/{{project_id}}/{name}/", f"/api/{{project_id}}/{name}"):
            app.router.add_post(
                path, handler, name=f"{name}{'_slash' if path.endswith('/') else ''}"
            )
            app.router.add_route("OPTIONS", path, preflight)
    # Sentry's Crons HTTP API: GET or POST, the key in the path or as for the others.
    cron = "/api/{project_id}/cron/{monitor_slug}"
    for name, path in (
        ("cron", cron),
        ("cron_slash", f"{cron}/"),
        ("cron_key", f"{cron}/{{sentry_key}}"),
        ("cron_key_slash", f"{cron}/{{sentry_key}}/"),
    ):
        for method in ("GET", "POST"):
            app.router.add_route(method, path, cron_endpoint, name=name)
        app.router.add_route("OPTIONS", path, preflight)
    attachments = "/api/{project_id}/events/{event_id}/attachments"
    app.router.add_post(f"{attachments}/", attachments_endpoint, name="attachments_slash")
    app.router.add_post(attachments, attachments_endpoint, name="attachments")
    app.router.add_route("OPTIONS", f"{attachments}/", preflight)
    app.router.add_route("OPTIONS", attachments, preflight)


__all__ = ["ApiError", "add_routes"]
