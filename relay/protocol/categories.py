"""Data categories, and how much each envelope item counts in which category.

Follows Sentry's counting: attachments count their bytes (at least one: an empty
attachment still meets an exhausted byte quota) and one `attachment_item`, a transaction
also counts `1 + len(spans)` spans, a `sessions` item counts each aggregate bucket, a log
item counts its `item_count` (and its bytes, at least one, in `log_byte`). User reports
count as `feedback`, as user feedback does; NEL reports as `error`, as Sentry bills them;
profile chunks of UI platforms as `profile_chunk_ui`. Item types Sentry does not know
count in no category: no quota limits them (their outcomes are reported under
`unknown`).

Which item is the envelope's event (`creates_event`) is decided per envelope, in
`relay.processing.pipeline.prepare`: a native crash report without an event item counts
one `error` there.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class DataCategory(StrEnum):
    DEFAULT = "default"
    ERROR = "error"
    TRANSACTION = "transaction"
    SECURITY = "security"
    ATTACHMENT = "attachment"
    ATTACHMENT_ITEM = "attachment_item"
    SESSION = "session"
    PROFILE = "profile"
    PROFILE_CHUNK = "profile_chunk"
    PROFILE_CHUNK_UI = "profile_chunk_ui"
    REPLAY = "replay"
    MONITOR = "monitor"
    SPAN = "span"
    LOG_ITEM = "log_item"
    LOG_BYTE = "log_byte"
    FEEDBACK = "feedback"
    TRACE_METRIC = "trace_metric"
    UNKNOWN = "unknown"


#: Other names Sentry accepts for a category (in quota configs): Sentry's own name of
#: the `feedback` category is `user_report_v2`.
CATEGORY_ALIASES: dict[str, str] = {"user_report_v2": DataCategory.FEEDBACK.value}


def canonical_category(name: str) -> str:
    """`name`, or the category it is another name for."""
    return CATEGORY_ALIASES.get(name, name)


_PRIMARY: dict[str, DataCategory] = {
    "event": DataCategory.ERROR,
    "transaction": DataCategory.TRANSACTION,
    "security": DataCategory.SECURITY,
    "raw_security": DataCategory.SECURITY,
    "nel": DataCategory.ERROR,
    "attachment": DataCategory.ATTACHMENT,
    "session": DataCategory.SESSION,
    "sessions": DataCategory.SESSION,
    "profile": DataCategory.PROFILE,
    "profile_chunk": DataCategory.PROFILE_CHUNK,
    # The item type Sentry's Android SDK 8.10-8.11 sends for UI profile chunks.
    "profile_chunk_ui": DataCategory.PROFILE_CHUNK_UI,
    "replay_event": DataCategory.REPLAY,
    "replay_recording": DataCategory.REPLAY,
    "replay_video": DataCategory.REPLAY,
    "check_in": DataCategory.MONITOR,
    "span": DataCategory.SPAN,
    "otel_span": DataCategory.SPAN,
    "log": DataCategory.LOG_ITEM,
    "otel_log": DataCategory.LOG_ITEM,
    "feedback": DataCategory.FEEDBACK,
    "user_report": DataCategory.FEEDBACK,
    "trace_metric": DataCategory.TRACE_METRIC,
    "unreal_report": DataCategory.ERROR,
}

#: Item types that are the envelope's event (Sentry's `Item::creates_event`): the first
#: one an envelope has is limited as its event, and takes the dependents with it.
EVENT_ITEM_TYPES = frozenset(
    {"event", "transaction", "security", "raw_security", "nel", "feedback", "unreal_report"}
)

#: `attachment_type`s of an attachment that is a native crash (or its event payload):
#: it creates the envelope's event (Sentry's `Item::creates_event`).
CRASH_ATTACHMENT_TYPES = frozenset(
    {
        "event.minidump",
        "event.applecrashreport",
        "event.payload",
        "event.breadcrumbs",
        "playstation.prosperodump",
    }
)


def is_crash_report(item_type: str, headers: dict[str, Any]) -> bool:
    """An attachment that creates the envelope's event (a minidump, an Apple crash report,
    an event payload of a native SDK, ...)."""
    if item_type != "attachment":
        return False
    kind = headers.get("attachment_type")
    return isinstance(kind, str) and kind in CRASH_ATTACHMENT_TYPES


#: Platforms whose profile chunks are UI profiles (Sentry's `ProfileType::from_platform`).
UI_PROFILE_PLATFORMS = frozenset({"cocoa", "android", "javascript"})

_NONE: frozenset[str] = frozenset()
_SPAN = frozenset({DataCategory.SPAN.value})
_ATTACHMENT = frozenset({DataCategory.ATTACHMENT.value, DataCategory.ATTACHMENT_ITEM.value})


def exempt_categories(item_type: str, headers: dict[str, Any]) -> frozenset[str]:
    """The categories an item counts in whose rejection does not drop it. A transaction
    counts its spans too, but a span quota limits standalone spans only: Sentry keeps the
    transaction (and names `span` in the rate limits it answers). A crash report counts
    as an attachment, but an attachment quota never drops it: it makes the event."""
    if item_type == "transaction":
        return _SPAN
    if is_crash_report(item_type, headers):
        return _ATTACHMENT
    return _NONE


#: Items that carry no billable data of their own and are never rate limited.
UNCOUNTED_TYPES = frozenset({"client_report", "statsd", "metric_buckets", "metric_meta"})

#: Item types whose payload is one JSON event that the pipeline processes.
EVENT_TYPES = frozenset({"event", "transaction", "security", "nel", "feedback", "user_report"})


def primary_category(item_type: str, headers: dict[str, Any] | None = None) -> DataCategory:
    """The category an item is reported under in outcomes and metrics (`headers`: a
    profile chunk's `platform` makes it a UI one)."""
    if item_type == "profile_chunk" and headers is not None:
        return _chunk_category(headers)
    return _PRIMARY.get(
        item_type,
        DataCategory.UNKNOWN if item_type not in UNCOUNTED_TYPES else DataCategory.DEFAULT,
    )


def _chunk_category(headers: dict[str, Any]) -> DataCategory:
    """`profile_chunk_ui` for a chunk whose `platform` header names a UI platform, else
    `profile_chunk` (also without the header: Sentry counts such a chunk nowhere until
    it has read its payload; here a `profile_chunk` quota still limits it)."""
    platform = headers.get("platform")
    if isinstance(platform, str) and platform in UI_PROFILE_PLATFORMS:
        return DataCategory.PROFILE_CHUNK_UI
    return DataCategory.PROFILE_CHUNK


#: The most one item counts for (its `item_count` header, a session aggregate's counts:
#: the client's numbers, summed into counters, outcomes and client reports, which must
#: stay within 64 bits).
MAX_ITEM_COUNT = 2**32 - 1


def _item_count(headers: dict[str, Any]) -> int:
    count = headers.get("item_count")
    if isinstance(count, int) and not isinstance(count, bool) and count > 0:
        return min(count, MAX_ITEM_COUNT)
    return 1


def item_quantities(
    item_type: str, headers: dict[str, Any], payload_len: int, event: dict[str, Any] | None = None
) -> list[tuple[DataCategory, int]]:
    """Every (category, quantity) this item counts for, for quotas and outcomes.

    `event` is the parsed payload when the caller has it (transactions: span count;
    sessions: aggregate count); without it a transaction counts one span.
    """
    if item_type in UNCOUNTED_TYPES or item_type not in _PRIMARY:
        return []
    if item_type == "attachment":
        return [(DataCategory.ATTACHMENT, max(payload_len, 1)), (DataCategory.ATTACHMENT_ITEM, 1)]
    if item_type == "transaction":
        spans = 0
        if event is not None and isinstance(event.get("spans"), list):
            spans = len(event["spans"])
        return [(DataCategory.TRANSACTION, 1), (DataCategory.SPAN, 1 + spans)]
    if item_type in ("log", "otel_log"):
        return [
            (DataCategory.LOG_ITEM, _item_count(headers)),
            (DataCategory.LOG_BYTE, max(payload_len, 1)),
        ]
    if item_type in ("span", "otel_span"):
        return [(DataCategory.SPAN, _item_count(headers))]
    if item_type == "trace_metric":
        return [(DataCategory.TRACE_METRIC, _item_count(headers))]
    if item_type == "profile_chunk":
        return [(_chunk_category(headers), 1)]
    if item_type == "sessions" and event is not None:
        # As Sentry counts session aggregates: one per bucket (not per session in it).
        aggregates = event.get("aggregates")
        if isinstance(aggregates, list):
            return [(DataCategory.SESSION, min(max(len(aggregates), 1), MAX_ITEM_COUNT))]
    return [(primary_category(item_type), 1)]
