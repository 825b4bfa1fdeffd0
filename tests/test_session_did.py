"""A session's distinct id (`did`) that the detectors flag (an email, say) is forwarded as a
keyed hash of itself when the policy has a key, not as a placeholder: distinct users stay
distinct upstream (crash-free users), the same user keeps one id, and the address never
leaves the relay. Without a key it gets the placeholder, as any other value."""

from __future__ import annotations

import hashlib
import hmac
import re
import uuid
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient

from tests.support.relay import RelayFactory, auth_header
from tests.support.upstream import RecordingUpstream

HEX = re.compile(r"[0-9a-fA-F]{40}|[0-9a-fA-F]{64}")
ALICE = "alice@example.com"
BOB = "bob@example.com"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _session(did: str) -> dict[str, Any]:
    now = _now()
    return {
        "sid": uuid.uuid4().hex,
        "did": did,
        "init": True,
        "started": now,
        "timestamp": now,
        "status": "exited",
        "errors": 0,
        "duration": 1.5,
        "attrs": {"release": "shop@1.4.2", "environment": "production"},
    }


def _aggregates(*dids: str) -> dict[str, Any]:
    started = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:00Z")
    return {
        "aggregates": [{"started": started, "did": did, "exited": 2} for did in dids],
        "attrs": {"release": "shop@1.4.2", "environment": "production"},
    }


def _envelope(item_type: str, payload: dict[str, Any]) -> bytes:
    header = {"sent_at": _now()}
    return b"\n".join(
        [orjson.dumps(header), orjson.dumps({"type": item_type}), orjson.dumps(payload), b""]
    )


async def _send(relay: TestClient, recorder: RecordingUpstream, body: bytes) -> None:
    seen = len(recorder.received)
    resp = await relay.post("/api/42/envelope/", data=body, headers=auth_header())
    assert resp.status == 200
    await recorder.wait_for(seen + 1)


def _forwarded(recorder: RecordingUpstream, item_type: str) -> list[dict[str, Any]]:
    return [orjson.loads(item.payload) for item in recorder.items(item_type)]


def _no_address_upstream(recorder: RecordingUpstream) -> None:
    for received in recorder.received:
        assert b"example.com" not in received.body
        assert b"example.com" not in received.raw


KEY = "a-pseudonym-key-of-32-characters"


@pytest.fixture
async def keyed(relay_factory: RelayFactory) -> TestClient:
    """A relay whose policy has a pseudonymization key."""
    return await relay_factory(policy={"scrubbing": {"pseudonymize": {"key": KEY}}})


async def test_without_a_key_a_flagged_did_gets_the_placeholder(
    relay: TestClient, recorder: RecordingUpstream
) -> None:
    """A digest keyed with nothing could be checked against guessed addresses."""
    await _send(relay, recorder, _envelope("session", _session(ALICE)))
    (session,) = _forwarded(recorder, "session")
    assert session["did"] == "[email]"
    _no_address_upstream(recorder)


async def test_two_email_dids_stay_two_users_and_one_user_keeps_one_id(
    keyed: TestClient, recorder: RecordingUpstream
) -> None:
    relay = keyed
    for did in (ALICE, BOB, ALICE):
        await _send(relay, recorder, _envelope("session", _session(did)))
    first, second, again = (s["did"] for s in _forwarded(recorder, "session"))
    assert HEX.fullmatch(first) and HEX.fullmatch(second)
    assert first != second
    assert again == first
    _no_address_upstream(recorder)


async def test_aggregate_buckets_hash_their_dids_too(
    keyed: TestClient, recorder: RecordingUpstream
) -> None:
    relay = keyed
    await _send(relay, recorder, _envelope("session", _session(ALICE)))
    await _send(relay, recorder, _envelope("sessions", _aggregates(ALICE, BOB, "user-1042")))
    (single,) = _forwarded(recorder, "session")
    (aggregates,) = _forwarded(recorder, "sessions")
    alice, bob, plain = (bucket["did"] for bucket in aggregates["aggregates"])
    assert alice == single["did"]  # one user, one id, whatever the item type
    assert HEX.fullmatch(bob) and bob != alice
    assert plain == "user-1042"  # nothing flagged: kept as sent
    _no_address_upstream(recorder)


async def test_the_hash_is_keyed_with_the_pseudonymization_key(
    relay_factory: RelayFactory, recorder: RecordingUpstream
) -> None:
    relay = await relay_factory(policy={"scrubbing": {"pseudonymize": {"key": KEY}}})
    await _send(relay, recorder, _envelope("session", _session(ALICE)))
    (session,) = _forwarded(recorder, "session")
    expected = hmac.new(KEY.encode(), ALICE.encode(), hashlib.sha256).hexdigest()
    assert session["did"] == expected


async def test_without_a_key_the_hash_method_of_pii_config_is_used(
    relay_factory: RelayFactory, recorder: RecordingUpstream
) -> None:
    relay = await relay_factory(
        policy={"scrubbing": {"pii_config": {"vars": {"hashKey": "salt-of-the-org"}}}}
    )
    await _send(relay, recorder, _envelope("session", _session(ALICE)))
    (session,) = _forwarded(recorder, "session")
    expected = hmac.new(b"salt-of-the-org", ALICE.encode(), hashlib.sha1).hexdigest().upper()
    assert session["did"] == expected


async def test_an_explicit_rule_on_the_did_wins(
    relay_factory: RelayFactory, recorder: RecordingUpstream
) -> None:
    relay = await relay_factory(
        policy={"scrubbing": {"pii_config": {"applications": {"did": ["@email:mask"]}}}}
    )
    await _send(relay, recorder, _envelope("session", _session(ALICE)))
    (session,) = _forwarded(recorder, "session")
    assert session["did"] == "*" * len(ALICE)
