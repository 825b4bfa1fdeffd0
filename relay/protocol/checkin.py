"""Cron check-ins sent over plain HTTP, without an SDK, as an envelope.

Sentry's Crons HTTP API: `GET` or `POST /api/{project_id}/cron/{monitor_slug}/{sentry_key}/`
(or without the key in the path, with it in a header or the query), so that a job can
report with a `curl` one-liner. The check-in comes in one of two shapes, as Sentry reads
them:

- the query: `status` (required), `check_in_id` (a UUID, to close a check-in opened with
  `in_progress`), `environment`, `duration` (seconds);
- a JSON object body (`Content-Type: application/json`): a check-in as SDKs send it in a
  `check_in` envelope item (`status` required; `monitor_config` creates or updates the
  monitor). The slug in the path wins over one in the body.

Either becomes one `check_in` item, so that it goes through the pipeline as an SDK's
check-in does. A status Sentry does not know is sent as `unknown`, and a missing
`check_in_id` as the nil UUID (a check-in of its own), as Sentry's Relay does.

    CheckInError(ValueError)   not a check-in (answer 400)
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping
from typing import Any

import orjson

from relay.protocol.envelope import MAX_JSON_DEPTH, Envelope, json_exceeds_depth, make_envelope

__all__ = [
    "STATUSES",
    "CheckInError",
    "check_in_envelope",
    "check_in_from_json",
    "check_in_from_query",
]

#: Check-in statuses Sentry knows; any other is `unknown`.
STATUSES = frozenset({"ok", "error", "in_progress", "missed", "unknown"})
#: The id of a check-in that names none: Sentry makes it a check-in of its own.
NIL_ID = uuid.UUID(int=0).hex


class CheckInError(ValueError):
    """The request does not describe a check-in."""


def _status(value: object) -> str:
    if not isinstance(value, str):
        raise CheckInError("a check-in needs a `status` (ok, error or in_progress)")
    return value if value in STATUSES else "unknown"


def _check_in_id(value: object) -> str:
    if value is None:
        return NIL_ID
    if not isinstance(value, str):
        raise CheckInError("invalid check_in_id: not a UUID")
    try:
        return uuid.UUID(value.strip()).hex
    except ValueError:
        raise CheckInError("invalid check_in_id: not a UUID") from None


def _duration(value: object) -> float | int:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise CheckInError("invalid duration: not a number of seconds")
    return value


def check_in_from_query(monitor_slug: str, query: Mapping[str, str]) -> dict[str, Any]:
    """The check-in a query string describes (`?status=ok&check_in_id=...`)."""
    check_in: dict[str, Any] = {
        "check_in_id": _check_in_id(query.get("check_in_id")),
        "monitor_slug": monitor_slug,
        "status": _status(query.get("status")),
    }
    environment = query.get("environment")
    if environment is not None:
        check_in["environment"] = environment
    duration = query.get("duration")
    if duration is not None:
        try:
            seconds = float(duration)
        except ValueError:
            raise CheckInError("invalid duration: not a number of seconds") from None
        check_in["duration"] = _duration(seconds)
    return check_in


def check_in_from_json(monitor_slug: str, body: bytes) -> dict[str, Any]:
    """The check-in of a JSON body, its slug the path's. Other fields are kept as sent."""
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise CheckInError(f"invalid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise CheckInError("a check-in must be a JSON object")
    if json_exceeds_depth(body):
        raise CheckInError(f"invalid JSON: nested more than {MAX_JSON_DEPTH} levels deep")
    value["status"] = _status(value.get("status"))
    value["check_in_id"] = _check_in_id(value.get("check_in_id"))
    value["monitor_slug"] = monitor_slug
    environment = value.get("environment")
    if environment is not None and not isinstance(environment, str):
        raise CheckInError("invalid environment: not a string")
    if value.get("duration") is not None:
        _duration(value["duration"])
    return value


def check_in_envelope(check_in: Mapping[str, Any]) -> Envelope:
    """An envelope with the one `check_in` item (its own new envelope event id)."""
    item = {"type": "check_in", "content_type": "application/json"}
    return make_envelope({"event_id": uuid.uuid4().hex}, [(item, orjson.dumps(check_in))])
