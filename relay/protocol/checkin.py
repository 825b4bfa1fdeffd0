"""Cron check-ins sent over plain HTTP, without an SDK, as an envelope.

Sentry's Crons HTTP API: `GET` or `POST /api/{project_id}/cron/{monitor_slug}/{sentry_key}/`
(or without the key in the path, with it in a header or the query), so that a job can
report with a `curl` one-liner. The check-in comes in one of two shapes, as Sentry reads
them:

- the query: `status` (required), `check_in_id` (a UUID, to close a check-in opened with
  `in_progress`), `environment`, `duration` (seconds);
- a JSON object body (`Content-Type: application/json`): a check-in as SDKs send it in a
  `check_in` envelope item (`status` required; `monitor_config` creates or updates the
  monitor). The slug in the path wins over one in the body. Its fields are checked as
  Sentry reads them (`monitor_config.schedule`, the counts, `contexts.trace.trace_id`).

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


#: `monitor_config.schedule.unit` of an interval schedule.
INTERVAL_UNITS = frozenset({"year", "month", "week", "day", "hour", "minute"})
#: `monitor_config` fields that are counts (minutes, check-ins): unsigned integers.
_CONFIG_COUNTS = ("checkin_margin", "max_runtime", "failure_issue_threshold", "recovery_threshold")
#: `monitor_config` fields that are text.
_CONFIG_TEXTS = ("timezone", "owner")
_U64_MAX = 2**64 - 1


def _unsigned(value: object, where: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _U64_MAX:
        raise CheckInError(f"invalid {where}: not a whole number of 0 or more")


def _schedule(value: object) -> None:
    if not isinstance(value, dict):
        raise CheckInError("invalid monitor_config: `schedule` must be an object")
    kind = value.get("type")
    if kind == "crontab":
        if not isinstance(value.get("value"), str):
            raise CheckInError("invalid monitor_config.schedule: a crontab `value` is text")
    elif kind == "interval":
        _unsigned(value.get("value"), "monitor_config.schedule.value")
        if value.get("unit") not in INTERVAL_UNITS:
            units = ", ".join(sorted(INTERVAL_UNITS))
            raise CheckInError(f"invalid monitor_config.schedule: `unit` must be one of {units}")
    else:
        raise CheckInError("invalid monitor_config.schedule: `type` must be crontab or interval")


def _monitor_config(value: object) -> None:
    """The monitor an SDK's check-in creates or updates, read as Sentry reads it: a
    `schedule` (`{"type": "crontab", "value": "0 * * * *"}` or `{"type": "interval",
    "value": 2, "unit": "hour"}`) and optional counts and texts. Other keys are kept."""
    if not isinstance(value, dict):
        raise CheckInError("invalid monitor_config: not an object")
    if "schedule" not in value:
        raise CheckInError("invalid monitor_config: it needs a `schedule`")
    _schedule(value["schedule"])
    for name in _CONFIG_COUNTS:
        if value.get(name) is not None:
            _unsigned(value[name], f"monitor_config.{name}")
    for name in _CONFIG_TEXTS:
        if value.get(name) is not None and not isinstance(value[name], str):
            raise CheckInError(f"invalid monitor_config.{name}: not a string")


def _contexts(value: object) -> None:
    """Sentry reads one context of a check-in: `trace`, whose `trace_id` is a UUID."""
    if not isinstance(value, dict):
        raise CheckInError("invalid contexts: not an object")
    trace = value.get("trace")
    if trace is None:
        return
    if not isinstance(trace, dict):
        raise CheckInError("invalid contexts.trace: not an object")
    trace_id = trace.get("trace_id")
    try:
        if not isinstance(trace_id, str):
            raise ValueError
        uuid.UUID(trace_id)
    except ValueError:
        raise CheckInError("invalid contexts.trace.trace_id: not a trace id") from None


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
    """The check-in of a JSON body, its slug the path's. Its fields are read as Sentry
    reads them, so that one Sentry would refuse is refused here (400) and not answered
    202 to be dropped further on; other fields are kept as sent."""
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise CheckInError(f"invalid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise CheckInError("a check-in must be a JSON object")
    if json_exceeds_depth(body):
        raise CheckInError(f"invalid JSON: nested more than {MAX_JSON_DEPTH} levels deep")
    slug = value.get("monitor_slug")
    if slug is not None and not isinstance(slug, str):
        raise CheckInError("invalid monitor_slug: not a string")
    value["status"] = _status(value.get("status"))
    value["check_in_id"] = _check_in_id(value.get("check_in_id"))
    value["monitor_slug"] = monitor_slug
    environment = value.get("environment")
    if environment is not None and not isinstance(environment, str):
        raise CheckInError("invalid environment: not a string")
    if value.get("duration") is not None:
        _duration(value["duration"])
    if value.get("monitor_config") is not None:
        _monitor_config(value["monitor_config"])
    if value.get("contexts") is not None:
        _contexts(value["contexts"])
    return value


def check_in_envelope(check_in: Mapping[str, Any]) -> Envelope:
    """An envelope with the one `check_in` item (its own new envelope event id)."""
    item = {"type": "check_in", "content_type": "application/json"}
    return make_envelope({"event_id": uuid.uuid4().hex}, [(item, orjson.dumps(check_in))])
