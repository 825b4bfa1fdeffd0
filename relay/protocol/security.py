"""Browser security reports (`POST /api/{project_id}/security/`) as envelopes.

Bodies Sentry accepts on this endpoint, and the envelope item each becomes:

- `{"csp-report": {...}}` (CSP `report-uri`, `application/csp-report`) -> `raw_security`
- Expect-CT `{"expect-ct-report": ...}`, HPKP `{"known-pins": ...}`, Expect-Staple
  `{"expect-staple-report": ...}` -> `raw_security` (the upstream decides what it keeps)
- the Reporting API (`application/reports+json`): a JSON list of reports. A
  `csp-violation` report -> `raw_security`, a `network-error` report (NEL) -> `nel`;
  other report types (deprecation, intervention, crash, ...) carry nothing Sentry
  ingests and are skipped.

The item payload is the report JSON as the browser sent it (the whole report
for the Reporting API). `?sentry_release=` and `?sentry_environment=` become the
`raw_security` item headers `sentry_release` / `sentry_environment`, which Sentry
applies to the event it builds.

Sentry processes one event-like item per envelope, so each report of a batch
gets an envelope of its own: use `security_report_envelopes`. Since each becomes
its own upstream request, a batch holds at most `MAX_REPORTS` reports, and JSON
nested deeper than `MAX_JSON_DEPTH` is refused.

    SecurityReportError(ValueError)   .status: 415 wrong content type, 400 not a report
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

import orjson

from relay.protocol.envelope import (
    MAX_JSON_DEPTH,
    Envelope,
    json_exceeds_depth,
    make_envelope,
)

__all__ = [
    "MAX_REPORTS",
    "SECURITY_CONTENT_TYPES",
    "SecurityReportError",
    "security_report_envelopes",
    "security_report_to_envelope",
]

#: Media types Sentry accepts on the security endpoint.
SECURITY_CONTENT_TYPES = frozenset(
    {
        "application/json",
        "application/csp-report",
        "application/expect-ct-report",
        "application/expect-ct-report+json",
        "application/expect-staple-report",
        "application/reports+json",
    }
)

#: Most reports accepted in one Reporting API batch (each is forwarded on its own).
MAX_REPORTS = 100

_LEGACY_KEYS = ("csp-report", "expect-ct-report", "known-pins", "expect-staple-report")


class SecurityReportError(ValueError):
    """The body is not a security report Sentry accepts; `status` is the HTTP answer."""

    def __init__(self, message: str, *, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def _media_type(content_type: str | None) -> str:
    if content_type is None:
        return ""
    return content_type.split(";", 1)[0].strip().lower()


def _new_envelope(item_type: str, payload: bytes, extra: Mapping[str, str]) -> Envelope:
    headers: dict[str, Any] = {"type": item_type, "content_type": "application/json"}
    headers.update(extra)
    return make_envelope({"event_id": uuid.uuid4().hex}, [(headers, payload)])


def security_report_envelopes(
    body: bytes, content_type: str | None, query: Mapping[str, str]
) -> list[Envelope]:
    """One envelope per report in the body (empty when a batch holds nothing Sentry keeps).

    `content_type` is the request's Content-Type header; `query` its query
    parameters (`sentry_release`, `sentry_environment` are applied). Raises
    SecurityReportError (415 for a media type Sentry refuses, 400 for junk).
    """
    media = _media_type(content_type)
    if media not in SECURITY_CONTENT_TYPES:
        raise SecurityReportError(
            f"unsupported content type for security reports: {content_type!r}", status=415
        )
    if not body.strip():
        raise SecurityReportError("empty body")
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise SecurityReportError(f"invalid JSON: {exc}") from None
    if json_exceeds_depth(body):
        raise SecurityReportError(f"invalid JSON: nested more than {MAX_JSON_DEPTH} levels deep")

    extra = {
        name: query[name] for name in ("sentry_release", "sentry_environment") if query.get(name)
    }

    if isinstance(value, dict):
        if any(key in value for key in _LEGACY_KEYS):
            return [_new_envelope("raw_security", body.strip(), extra)]
        value = [value]  # one Reporting API report, not wrapped in a list
    if not isinstance(value, list):
        raise SecurityReportError("not a security report")
    if len(value) > MAX_REPORTS:
        raise SecurityReportError(f"too many reports in one request (more than {MAX_REPORTS})")

    envelopes: list[Envelope] = []
    for report in value:
        if not isinstance(report, dict) or not isinstance(report.get("type"), str):
            raise SecurityReportError("not a security report: a report without a type")
        if not isinstance(report.get("body"), dict):
            raise SecurityReportError("not a security report: a report without a body")
        report_type = report["type"]
        if report_type == "csp-violation":
            envelopes.append(_new_envelope("raw_security", orjson.dumps(report), extra))
        elif report_type == "network-error":
            envelopes.append(_new_envelope("nel", orjson.dumps(report), {}))
    return envelopes


def security_report_to_envelope(
    body: bytes, content_type: str | None, query: Mapping[str, str]
) -> Envelope:
    """The envelope for a body holding exactly one report Sentry keeps.

    Same arguments and errors as `security_report_envelopes`; a batch of several
    reports (or of none Sentry keeps) raises SecurityReportError, as no single
    envelope can carry it.
    """
    envelopes = security_report_envelopes(body, content_type, query)
    if len(envelopes) != 1:
        raise SecurityReportError(
            f"the body holds {len(envelopes)} reports; use security_report_envelopes"
        )
    return envelopes[0]
