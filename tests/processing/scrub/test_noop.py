"""A policy with every switch off is a no-op, and only that policy is.

The ingest path skips the scrubber for such a policy (`pipeline.finish`), so `noop`
must never be true while some switch could still change a byte.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from relay.processing import pipeline
from relay.processing.context import RequestContext
from relay.processing.scrub import compile_scrubber
from relay.protocol.envelope import parse_envelope
from tests.processing.scrub.conftest import OFF, cfg
from tests.support.corpus import ENVELOPES, PLANTED

ALL_OFF: dict[str, Any] = {**OFF, "source_context": "keep", "attachments": "keep"}


def test_every_switch_off_is_noop() -> None:
    assert compile_scrubber(cfg(**ALL_OFF)).noop
    assert compile_scrubber(cfg(**{**ALL_OFF, "source_context": "scrub"})).noop
    assert compile_scrubber(cfg(**{**ALL_OFF, "attachments": "scrub_text"})).noop


@pytest.mark.parametrize(
    "change",
    [
        {"defaults": True},
        {"ip_addresses": True},
        {"emails": True},
        {"secrets": True},
        {"sensitive_fields": ["order_ref"]},
        {"source_context": "drop"},
        {"attachments": "drop"},
        {"pseudonymize": {"fields": ["user.id"], "key": "k"}},
        {
            "pii_config": {
                "applications": {"$string": ["@anything:remove"]},
            }
        },
    ],
    ids=lambda c: next(iter(c)),
)
def test_any_switch_on_is_not_noop(change: dict[str, Any]) -> None:
    assert not compile_scrubber(cfg(**{**ALL_OFF, **change})).noop
    assert not compile_scrubber(None).noop


def _ctx() -> RequestContext:
    return RequestContext(project_id=42, public_key="k")


@pytest.mark.parametrize("path", ENVELOPES, ids=lambda p: p.name)
def test_noop_policy_forwards_items_untouched(path: Any) -> None:
    raw = path.read_bytes()
    envelope = parse_envelope(raw)
    before = [item.payload for item in envelope.items]
    prepared = pipeline.prepare(envelope, _ctx())
    out = pipeline.finish(prepared, scrubber=compile_scrubber(cfg(**ALL_OFF)))
    assert [item.payload for item in out.items] == before


def test_default_policy_still_scrubs_through_finish() -> None:
    path = next(p for p in ENVELOPES if "attachment" in p.name)
    envelope = parse_envelope(path.read_bytes())
    prepared = pipeline.prepare(envelope, _ctx())
    out = pipeline.finish(prepared, scrubber=compile_scrubber(None))
    body = b"".join(item.payload for item in out.items)
    assert not any(secret in body for secret in PLANTED)
    assert orjson.loads(out.items[0].payload).get("_meta")
