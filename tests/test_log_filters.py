"""Inbound filters on log and span containers, one record at a time, as Sentry filters them.

A container (`{"items": [...]}`) keeps the records no filter drops: its payload is
rewritten, its `item_count` and quota quantities follow. The records a filter drops get
one `filtered` outcome with the filter's reason, counted in `log_item` (or `span`) and,
for logs, reported in `log_byte` as Sentry counts a log's size.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import msgspec
import orjson
import pytest

from relay.cli import main
from relay.config.noise import FiltersConfig
from relay.keys import INGEST
from relay.outcomes import OutcomeKind
from relay.processing import pipeline
from relay.processing.context import RequestContext
from relay.processing.filters import compile_filters
from relay.protocol.envelope import Envelope, make_envelope
from tests.support.relay import RelayFactory, auth_header
from tests.support.upstream import RecordingUpstream

CTX = RequestContext(42, "abc", "203.0.113.9", "sentry.python/2.76.0")
LOG_HEADERS = {"type": "log", "content_type": "application/vnd.sentry.items.log+json"}
SPAN_HEADERS = {"type": "span", "content_type": "application/vnd.sentry.items.span.v2+json"}
IE8 = "Mozilla/4.0 (compatible; MSIE 8.0; Windows NT 6.1; Trident/4.0)"
CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36"
)
GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"


def _attr(value: Any) -> dict[str, Any]:
    kind = {str: "string", bool: "boolean", int: "integer", float: "double"}[type(value)]
    return {"type": kind, "value": value}


def _log(body: str, release: str | None = None, **attributes: Any) -> dict[str, Any]:
    attrs = {key.replace("__", "."): _attr(value) for key, value in attributes.items()}
    if release is not None:
        attrs["sentry.release"] = _attr(release)
    return {"timestamp": 1_795_313_236.5, "level": "info", "body": body, "attributes": attrs}


def _span(name: str, segment: str) -> dict[str, Any]:
    return {
        "trace_id": "86f2111e292348f990b40c2f7ff035f3",
        "span_id": "b" * 16,
        "name": name,
        "status": "ok",
        "start_timestamp": 1_795_313_236.0,
        "end_timestamp": 1_795_313_236.5,
        "attributes": {"sentry.segment.name": _attr(segment)},
    }


def _envelope(records: list[Any], headers: dict[str, Any] = LOG_HEADERS, **meta: Any) -> Envelope:
    container = {**meta, "items": records}
    item_headers = {**headers, "item_count": len(records)}
    return make_envelope({}, [(item_headers, orjson.dumps(container))])


def _filters(**config: Any) -> Any:
    return compile_filters(msgspec.convert(config, FiltersConfig), None)


def _records(payload: bytes) -> list[Any]:
    records = orjson.loads(payload)["items"]
    assert isinstance(records, list)
    return records


def _size(body: str, attributes: dict[str, str]) -> int:
    """A log's `log_byte` for string attributes only, counted by hand."""
    return len(body.encode()) + sum(
        len(k.encode()) + len(v.encode()) for k, v in attributes.items()
    )


# --- the pipeline --------------------------------------------------------------------------


def test_records_of_a_filtered_release_leave_the_container() -> None:
    envelope = _envelope(
        [_log("paid", "1.0-rc1"), _log("shipped", "2.0"), _log("refunded ✓", "1.0-rc1")],
        version=2,
    )
    prepared = pipeline.prepare(envelope, CTX, filters=_filters(releases=["1.0-*"]))

    (kept,) = prepared.kept
    assert [r["body"] for r in _records(kept.item.payload)] == ["shipped"]
    assert orjson.loads(kept.item.payload)["version"] == 2  # the container's own fields stay
    assert kept.item.headers["item_count"] == 1
    assert kept.quantities == [("log_item", 1), ("log_byte", len(kept.item.payload))]

    (drop,) = prepared.dropped
    assert not drop.dry_run
    assert (drop.outcome.kind, drop.outcome.reason, drop.outcome.rule) == (
        OutcomeKind.FILTERED,
        "release-version",
        "1.0-*",
    )
    assert (drop.outcome.category, drop.outcome.quantity) == ("log_item", 2)
    log_bytes = _size("paid", {"sentry.release": "1.0-rc1"}) + _size(
        "refunded ✓", {"sentry.release": "1.0-rc1"}
    )
    assert drop.report == [("log_item", 2), ("log_byte", log_bytes)]
    # The dropped records are an item of their own: what the shadow copy and `relay scrub`
    # read, never forwarded.
    assert [r["body"] for r in _records(drop.work.item.payload)] == ["paid", "refunded ✓"]
    assert drop.work.item.headers["item_count"] == 2
    assert envelope.items == [kept.item, drop.work.item]
    assert pipeline.finish(prepared, scrubber=None).items == [kept.item]


def test_a_container_whose_every_record_is_filtered_is_dropped_whole() -> None:
    envelope = _envelope([_log("a", "1.0"), _log("b", "2.0"), _log("c")])
    (item,) = envelope.items
    prepared = pipeline.prepare(envelope, CTX, filters=_filters(client_ips=["203.0.113.0/24"]))
    assert prepared.kept == []
    (drop,) = prepared.dropped
    assert drop.work.item is item  # as it came: all three records
    assert (drop.outcome.reason, drop.outcome.quantity) == ("ip-address", 3)
    log_bytes = _size("a", {"sentry.release": "1.0"}) + _size("b", {"sentry.release": "2.0"}) + 1
    assert drop.report == [("log_item", 3), ("log_byte", log_bytes)]


def test_records_dropped_by_different_filters_get_an_outcome_each() -> None:
    envelope = _envelope(
        [
            _log("old", "1.0-rc1"),
            _log("ie", "2.0", user_agent__original=IE8),
            _log("bot", "2.0", user_agent__original=GOOGLEBOT),
            _log("named", "2.0", browser__name="IE", browser__version="9.0.1"),
            _log("legacy name", "2.0", sentry__browser__name="IE", sentry__browser__version="7"),
            _log("chrome", "2.0", user_agent__original=CHROME),
        ]
    )
    filters = _filters(releases=["1.0-*"], legacy_browsers=True, web_crawlers=True)
    prepared = pipeline.prepare(envelope, CTX, filters=filters)
    (kept,) = prepared.kept
    assert [r["body"] for r in _records(kept.item.payload)] == ["chrome"]
    assert kept.item.headers["item_count"] == 1
    got = {
        (d.outcome.reason, d.outcome.rule): [r["body"] for r in _records(d.work.item.payload)]
        for d in prepared.dropped
    }
    assert got == {
        ("release-version", "1.0-*"): ["old"],
        ("legacy-browsers", "default"): ["ie", "named", "legacy name"],
        ("web-crawlers", "Googlebot"): ["bot"],
    }


def test_a_dry_run_filter_keeps_the_records_and_reports_them() -> None:
    envelope = _envelope([_log("a", "1.0-rc1"), _log("b", "2.0"), _log("c", "1.0-rc2")])
    (item,) = envelope.items
    payload = item.payload
    filters = _filters(releases={"globs": ["1.0-*"], "mode": "dry_run"})
    prepared = pipeline.prepare(envelope, CTX, filters=filters)
    (kept,) = prepared.kept
    assert kept.item is item and item.payload == payload  # forwarded as sent
    (drop,) = prepared.dropped
    assert drop.dry_run and (drop.outcome.reason, drop.outcome.quantity) == ("release-version", 2)
    assert [r["body"] for r in _records(drop.work.item.payload)] == ["a", "c"]


def test_filters_sentry_does_not_apply_to_logs_leave_them_alone() -> None:
    """No environment filter reads logs (Sentry has none), and the others read what a log
    has not: exceptions, log messages, user IPs, URLs."""
    record = _log("Connection reset by peer", "1.0", sentry__environment="local")
    record["attributes"]["user.ip_address"] = _attr("127.0.0.1")
    envelope = _envelope([record])
    (item,) = envelope.items
    payload = item.payload
    filters = _filters(
        environments=["local"], error_messages=["*reset*"], localhost=True, browser_extensions=True
    )
    assert not filters.reads_records("log")
    prepared = pipeline.prepare(envelope, CTX, filters=filters)
    assert [w.item for w in prepared.kept] == [item] and item.payload == payload
    assert prepared.dropped == []


@pytest.mark.parametrize(
    ("meta", "inferred"),
    [
        ({}, True),
        ({"version": 1}, True),
        ({"version": 2}, False),
        ({"version": 2, "ingest_settings": {"infer_user_agent": "never"}}, False),
        ({"version": 2, "ingest_settings": {"infer_user_agent": "auto"}}, True),
    ],
)
def test_the_requests_user_agent_stands_in_where_the_container_lets_it(
    meta: dict[str, Any], inferred: bool
) -> None:
    """A record naming no user agent or browser has the request's, as Sentry infers it for
    containers of version 1 and for those asking for it (`infer_user_agent: auto`)."""
    ctx = RequestContext(42, "abc", "203.0.113.9", GOOGLEBOT)
    named = _log("named", sentry__browser__name="Chrome", sentry__browser__version="131.0")
    envelope = _envelope([_log("plain"), named], **meta)
    prepared = pipeline.prepare(envelope, ctx, filters=_filters(web_crawlers=True))
    (kept,) = prepared.kept
    assert [r["body"] for r in _records(kept.item.payload)] == (
        ["named"] if inferred else ["plain", "named"]
    )
    assert [d.outcome.reason for d in prepared.dropped] == (["web-crawlers"] if inferred else [])


def test_span_records_of_a_health_check_segment_are_dropped() -> None:
    """Spans are filtered one by one too, their segment name as the transaction name: the
    health-check filter (on by default) drops a health check's spans."""
    records = [_span("db.query", "GET /healthz"), _span("http.server", "GET /checkout")]
    standalone = orjson.dumps(_span("db.query", "GET /healthz"))
    envelope = make_envelope(
        {},
        [
            ({**SPAN_HEADERS, "item_count": 2}, orjson.dumps({"items": records})),
            ({"type": "span"}, standalone),
        ],
    )
    prepared = pipeline.prepare(envelope, CTX, filters=_filters())
    container, single = prepared.kept
    assert [r["name"] for r in _records(container.item.payload)] == ["http.server"]
    assert container.item.headers["item_count"] == 1
    assert container.quantities == [("span", 1)]
    assert single.item.payload == standalone  # no container: forwarded as sent
    (drop,) = prepared.dropped
    assert (drop.outcome.reason, drop.outcome.rule) == ("health-check", "*/healthz")
    assert (drop.outcome.category, drop.outcome.quantity, drop.report) == ("span", 1, [("span", 1)])


def test_a_log_item_that_is_no_container_is_forwarded_as_sent() -> None:
    bodies = [b"not json", b'{"items": "none"}', b"[1, 2]"]
    envelope = make_envelope({}, [({**LOG_HEADERS, "item_count": 1}, body) for body in bodies])
    prepared = pipeline.prepare(envelope, CTX, filters=_filters(client_ips=["0.0.0.0/0"]))
    assert [w.item.payload for w in prepared.kept] == bodies
    assert prepared.dropped == []


def test_log_byte_size_counts_as_sentry_does() -> None:
    """The body's and every attribute key's UTF-8 bytes, a string value's UTF-8 bytes, 8 for
    a number, 1 for a boolean, nothing for null or a missing value, and what an array or
    object holds (object keys included); at least 1."""
    record = {
        "body": "naïve",  # 6
        "level": "warn",  # not counted, nor are other fields
        "attributes": {
            "é": {"type": "string", "value": "日本"},  # 2 + 6
            "count": {"type": "integer", "value": 18446744073709551615},  # 5 + 8
            "ratio": {"type": "double", "value": 0.5},  # 5 + 8
            "ok": {"type": "boolean", "value": False},  # 2 + 1
            "gone": {"type": "string", "value": None},  # 4
            "bare": {"type": "string"},  # 4
            "odd": "not an attribute object",  # 3
            "deep": {"type": "object", "value": {"ab": [1, "xyz", True, {"c": 2.5}]}},
            # 4 + (2 + 8 + 3 + 1 + (1 + 8))
        },
    }
    size = pipeline.log_byte_size
    assert size(record) == 6 + 8 + 13 + 13 + 3 + 4 + 4 + 3 + 27
    assert size({}) == 1
    assert size({"body": "", "attributes": {}}) == 1
    assert size("not a log") == 1


# --- through the relay ---------------------------------------------------------------------

FILTERED = [_log("paid", "1.0-rc1"), _log("shipped", "2.0"), _log("refunded", "1.0-rc1")]
FILTERED_BYTES = _size("paid", {"sentry.release": "1.0-rc1"}) + _size(
    "refunded", {"sentry.release": "1.0-rc1"}
)


async def test_the_upstream_gets_only_the_kept_records(
    relay_factory: RelayFactory, recorder: RecordingUpstream
) -> None:
    relay = await relay_factory(
        policy={"filters": {"releases": ["1.0-*"]}}, upstream={"client_reports_interval": 100}
    )
    body = _envelope(FILTERED, version=2).serialize()
    resp = await relay.post("/api/42/envelope/", data=body, headers=auth_header())
    assert resp.status == 200
    await recorder.wait_for(1)
    (item,) = recorder.envelopes[0].items
    assert item.type == "log" and item.headers["item_count"] == 1
    assert [r["body"] for r in _records(item.payload)] == ["shipped"]

    metrics = await (await relay.get("/metrics")).text()
    assert (
        'relay_items_total{category="log_item",outcome="filtered",reason="release-version"} 1.0'
        in metrics
    )
    assert 'relay_item_quantity_total{category="log_item",outcome="filtered"} 2.0' in metrics
    pending = [dict(counts) for counts in relay.app[INGEST].client_reports._counts.values()]
    assert pending == [
        {
            ("filtered_events", "release-version", "log_item"): 2,
            ("filtered_events", "release-version", "log_byte"): FILTERED_BYTES,
        }
    ]


async def test_the_shadow_project_gets_the_filtered_records_alone(
    aiohttp_server: Any, recorder: RecordingUpstream, relay_factory: RelayFactory
) -> None:
    shadow = RecordingUpstream()
    host = str((await aiohttp_server(shadow.app)).make_url("")).rstrip("/").split("//", 1)[1]
    relay = await relay_factory(
        policy={
            "filters": {"releases": ["1.0-*"]},
            "shadow": {"dsn": f"http://{'e' * 32}@{host}/7", "reasons": ["filtered"]},
        }
    )
    body = _envelope(FILTERED).serialize()
    assert (await relay.post("/api/42/envelope/", data=body, headers=auth_header())).status == 200
    await recorder.wait_for(1)
    await shadow.wait_for(1)
    await asyncio.sleep(0.05)
    assert [r["body"] for r in _records(recorder.envelopes[0].items[0].payload)] == ["shipped"]
    (copy,) = shadow.envelopes[0].items
    assert copy.headers["item_count"] == 2
    assert [r["body"] for r in _records(copy.payload)] == ["paid", "refunded"]


def test_relay_scrub_reports_the_records_it_would_drop(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "relay.yml"
    config.write_text('policy:\n  filters:\n    releases: ["1.0-*"]\n')
    path = tmp_path / "logs.envelope"
    path.write_bytes(_envelope(FILTERED).serialize())
    assert main(["scrub", "--config", str(config), str(path)]) == 0
    out = capsys.readouterr().out
    assert "item 0 (log): forward\n" in out
    assert "item 1 (log): drop — filtered: release-version (rule 1.0-*)\n" in out
    assert '"shipped"' in out and '"paid"' not in out
