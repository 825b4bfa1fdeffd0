"""Release-health sessions, checked as Sentry checks them before it counts them.

Sentry discards a session update (`session` item) or a bucket of session aggregates
(`sessions` item) that it cannot count; forwarded anyway, it would only spend session
quota on the way. The checks, in this order, and the reason a drop gets:

    the payload is Sentry's session protocol        invalid_session
        `started` and `attrs.release` present; each field Sentry knows of its type
        (`sid` a UUID, `did` a string, counts whole and not negative, `attrs.ip_address`
        an IP address or `{{auto}}`, ...); a `sessions` item with no bucket at all
    `attrs.release` is a release Sentry accepts     invalid_release
        at most 200 bytes, not `.`, `..` or `latest` (any case), no `/`, `\\`, control
        character (tab and newlines included) or DEL; an empty one is accepted
    its time is within the window                   timestamp
        `started` and `timestamp` (a session) or each bucket's `started` (aggregates) at
        most MAX_SECS_IN_PAST before and MAX_SECS_IN_FUTURE after the relay received it,
        once moved by the SDK's clock drift (the envelope's `sent_at` against the time
        of receipt, when that is MIN_CLOCK_DRIFT or more, as Sentry corrects it)

An aggregate keeps its buckets in the window (`Verdict.stale` lists the others) and is
dropped whole only when none is left, or for a reason of the whole item. Left to Sentry,
which keeps the session: a status it does not know (counted as errored), an invalid
environment (removed), a `timestamp` before `started` (moved to it). Nothing here
changes a payload; `without_buckets` builds the aggregate to forward instead.

    check(item_type, doc, received_at, sent_at) -> Verdict
    valid_release(release) -> bool
    without_buckets(doc, stale) -> dict
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from relay.processing.context import AUTO_IP
from relay.protocol.envelope import is_event_id

__all__ = [
    "INVALID_RELEASE",
    "INVALID_SESSION",
    "MAX_SECS_IN_FUTURE",
    "MAX_SECS_IN_PAST",
    "MIN_CLOCK_DRIFT",
    "TIMESTAMP",
    "Verdict",
    "check",
    "clock_drift",
    "parse_timestamp",
    "valid_release",
    "without_buckets",
]

#: How old a session may be (Sentry's default `max_session_secs_in_past`: 5 days).
MAX_SECS_IN_PAST: Final = 5 * 24 * 3600
#: How far ahead of the relay's clock it may be (Sentry's `max_secs_in_future`).
MAX_SECS_IN_FUTURE: Final = 60
#: The smallest difference between `sent_at` and the time of receipt Sentry takes for
#: the SDK's clock being off (less is network delay); timestamps are moved by it.
MIN_CLOCK_DRIFT: Final = 55 * 60
#: The longest release Sentry accepts, in UTF-8 bytes.
MAX_RELEASE_BYTES: Final = 200

#: Reasons (outcome `invalid`).
INVALID_SESSION: Final = "invalid_session"
INVALID_RELEASE: Final = "invalid_release"
TIMESTAMP: Final = "timestamp"


@dataclass(frozen=True, slots=True)
class Verdict:
    """Why a session item is dropped whole (`reason`), or which buckets of an aggregate
    are out of the time window (`stale`, indexes into `aggregates`) while the rest is kept.
    Neither: the item is forwarded as it is."""

    reason: str | None = None
    stale: tuple[int, ...] = ()


def check(
    item_type: str, doc: Mapping[str, Any], received_at: float, sent_at: object = None
) -> Verdict:
    """The verdict on a `session` or `sessions` payload (`doc`, parsed) received at
    `received_at` (Unix seconds) in an envelope whose header has `sent_at`."""
    if item_type == "sessions":
        return _check_aggregates(doc, received_at, sent_at)
    return _check_update(doc, received_at, sent_at)


def without_buckets(doc: Mapping[str, Any], stale: Collection[int]) -> dict[str, Any]:
    """`doc` (an aggregate) without the buckets at the indexes `stale`."""
    drop = set(stale)
    buckets = doc.get("aggregates") or []
    return {**doc, "aggregates": [b for i, b in enumerate(buckets) if i not in drop]}


def _check_update(doc: Mapping[str, Any], received_at: float, sent_at: object) -> Verdict:
    if not _UPDATE(doc):
        return Verdict(INVALID_SESSION)
    if not valid_release(doc["attrs"]["release"]):
        return Verdict(INVALID_RELEASE)
    drift = clock_drift(received_at, sent_at)
    started = _seconds(doc["started"]) + drift
    # Without a `timestamp` Sentry takes the time it reads the session, and corrects that
    # for the drift too; one before `started` it moves to `started`.
    stamp = doc.get("timestamp")
    timestamp = (received_at if stamp is None else _seconds(stamp)) + drift
    timestamp = max(timestamp, started)
    if not (_in_window(started, received_at) and _in_window(timestamp, received_at)):
        return Verdict(TIMESTAMP)
    return Verdict()


def _check_aggregates(doc: Mapping[str, Any], received_at: float, sent_at: object) -> Verdict:
    if not _AGGREGATES(doc):
        return Verdict(INVALID_SESSION)
    buckets = doc.get("aggregates") or []
    if not buckets:
        return Verdict(INVALID_SESSION)  # nothing Sentry could count
    if not valid_release(doc["attrs"]["release"]):
        return Verdict(INVALID_RELEASE)
    drift = clock_drift(received_at, sent_at)
    stale = tuple(
        i
        for i, bucket in enumerate(buckets)
        if not _in_window(_seconds(bucket["started"]) + drift, received_at)
    )
    if len(stale) == len(buckets):
        return Verdict(TIMESTAMP)
    return Verdict(None, stale)


def _in_window(seconds: float, received_at: float) -> bool:
    return received_at - seconds <= MAX_SECS_IN_PAST and seconds - received_at <= MAX_SECS_IN_FUTURE


def clock_drift(received_at: float, sent_at: object) -> float:
    """Seconds the SDK's clock is behind the relay's (negative: ahead), by its `sent_at`;
    0 below MIN_CLOCK_DRIFT (whole seconds, as Sentry compares) or without `sent_at`."""
    sent = parse_timestamp(sent_at)
    if sent is None or math.isinf(sent):
        return 0.0
    drift = received_at - sent
    return drift if abs(math.trunc(drift)) >= MIN_CLOCK_DRIFT else 0.0


def valid_release(release: str) -> bool:
    """Whether Sentry accepts `release` as a release name (sessions with another are
    discarded; an event only loses it)."""
    if len(release.encode("utf-8", "surrogatepass")) > MAX_RELEASE_BYTES:
        return False
    if release in (".", "..") or (release.isascii() and release.lower() == "latest"):
        return False
    return _RELEASE_BAD_CHARACTER.search(release) is None


#: What Sentry's API takes in no release or environment name.
_RELEASE_BAD_CHARACTER = re.compile(r"[\\/\x00-\x1f\x7f]")

# Timestamps as Sentry reads a session's: RFC 3339 with a few liberties (a space for the
# `T`, digits not padded, spaces between the parts, `UTC` or an offset without a colon);
# the offset is required.
_TIMESTAMP = re.compile(
    r"""\s*(?P<year>[+-][0-9]+|[0-9]{1,4})\s*-\s*(?P<month>[0-9]{1,2})\s*-\s*(?P<day>[0-9]{1,2})
    [Tt\x20]
    \s*(?P<hour>[0-9]{1,2})\s*:\s*(?P<minute>[0-9]{1,2})\s*:\s*(?P<second>[0-9]{1,2})
    (?:\.(?P<fraction>[0-9]+))?
    \s*(?:(?P<utc>[Zz]|[Uu][Tt][Cc])|(?P<sign>[+\-\u2212])(?P<oh>[0-9]{2})[:\s]*(?P<om>[0-9]{2}))
    \s*""",
    re.VERBOSE,
)


def parse_timestamp(value: object) -> float | None:
    """Unix seconds of a session timestamp, None when Sentry would not read it. A year
    outside 1..9999 reads as minus or plus infinity (far out of any window)."""
    if not isinstance(value, str):
        return None
    m = _TIMESTAMP.fullmatch(value)
    if m is None:
        return None
    year, month, day = int(m["year"]), int(m["month"]), int(m["day"])
    hour, minute, second = int(m["hour"]), int(m["minute"]), int(m["second"])
    if not (1 <= month <= 12 and 1 <= day <= 31 and hour < 24 and minute < 60 and second <= 60):
        return None
    offset = 0
    if m["utc"] is None:
        if int(m["om"]) >= 60:
            return None
        offset = int(m["oh"]) * 3600 + int(m["om"]) * 60
        if offset >= 24 * 3600:
            return None
        if m["sign"] != "+":
            offset = -offset
    if not 1 <= year <= 9999:
        return -math.inf if year < 1 else math.inf
    try:
        moment = datetime(year, month, day, hour, minute, min(second, 59), tzinfo=UTC)
    except ValueError:  # no such day in that month
        return None
    fraction = float("0." + m["fraction"]) if m["fraction"] else 0.0
    if second == 60:  # a leap second
        fraction += 1.0
    return (moment - _EPOCH).total_seconds() + fraction - offset


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _seconds(value: object) -> float:
    seconds = parse_timestamp(value)
    assert seconds is not None  # the schema checked it
    return seconds


# The session protocol as Sentry reads it: each field's check. Fields it does not know
# are ignored; `null` passes only where Sentry takes it for "none".
_Check = Callable[[object], bool]


@dataclass(frozen=True, slots=True)
class _Schema:
    fields: Mapping[str, _Check]
    #: Without these Sentry reads no session; the others may be absent.
    required: tuple[str, ...] = ()

    def __call__(self, value: object) -> bool:
        if not isinstance(value, dict) or any(k not in value for k in self.required):
            return False
        return all(key not in value or ok(value[key]) for key, ok in self.fields.items())


def _is_str(value: object) -> bool:
    return isinstance(value, str)


def _str_or_null(value: object) -> bool:
    return value is None or isinstance(value, str)


def _is_uint(bits: int) -> _Check:
    def check(value: object) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**bits

    return check


def _is_bool(value: object) -> bool:
    return isinstance(value, bool)


def _number_or_null(value: object) -> bool:
    return value is None or (isinstance(value, int | float) and not isinstance(value, bool))


def _is_timestamp(value: object) -> bool:
    return parse_timestamp(value) is not None


def _ip_or_null(value: object) -> bool:
    if value is None or value == AUTO_IP:
        return True
    if not isinstance(value, str):
        return False
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _mechanism(value: object) -> bool:
    # A name Sentry does not know reads as none; only a non-name is wrong.
    return not isinstance(value, bool | int | float | list)


def _list_of(schema: _Schema) -> _Check:
    def check(value: object) -> bool:
        return isinstance(value, list) and all(schema(v) for v in value)

    return check


_ATTRS: Final = _Schema(
    {
        "release": _is_str,
        "environment": _str_or_null,
        "ip_address": _ip_or_null,
        "user_agent": _str_or_null,
    },
    required=("release",),
)

_UPDATE: Final = _Schema(
    {
        "sid": is_event_id,  # a UUID, in any of its spellings
        "did": _str_or_null,
        "seq": _is_uint(64),
        "init": _is_bool,
        "timestamp": _is_timestamp,
        "started": _is_timestamp,
        "duration": _number_or_null,
        "status": _is_str,  # any name: one Sentry does not know counts as errored
        "errors": _is_uint(64),
        "attrs": _ATTRS,
        "abnormal_mechanism": _mechanism,
    },
    required=("started", "attrs"),
)

_BUCKET: Final = _Schema(
    {
        "started": _is_timestamp,
        "did": _str_or_null,
        **{n: _is_uint(32) for n in ("exited", "errored", "abnormal", "unhandled", "crashed")},
    },
    required=("started",),
)

_AGGREGATES: Final = _Schema({"aggregates": _list_of(_BUCKET), "attrs": _ATTRS}, ("attrs",))
