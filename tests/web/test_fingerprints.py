"""Fingerprint rules and message templates on events forwarded through the relay."""

from __future__ import annotations

from typing import Any

import orjson

from tests.support.corpus import CORPUS
from tests.support.relay import auth_header
from tests.support.upstream import RecordingUpstream

RULES = """
# group every connection reset together
error.type:ConnectionResetError -> connection-reset, {{ transaction }} title="Connection reset"
error.type:PaymentError error.value:"*declined*" -> payment-declined
"""


async def test_forwarded_events_carry_the_rule_fingerprint(
    relay_factory: Any, recorder: RecordingUpstream
) -> None:
    relay = await relay_factory(policy={"fingerprinting": RULES})
    for name in ("error-connection-reset", "error-with-attachment"):
        resp = await relay.post(
            "/api/42/envelope/",
            data=(CORPUS / f"{name}.envelope").read_bytes(),
            headers=auth_header(),
        )
        assert resp.status == 200
    await recorder.wait_for(2)
    events = [orjson.loads(i.payload) for i in recorder.items("event")]
    by_type = {e["exception"]["values"][-1]["type"]: e for e in events}
    reset = by_type["ConnectionResetError"]
    assert reset["fingerprint"][0] == "connection-reset"
    assert reset["title"] == "Connection reset"
    assert by_type["PaymentError"]["fingerprint"] == ["payment-declined"]


async def test_message_templates_group_variable_messages(
    relay_factory: Any, recorder: RecordingUpstream
) -> None:
    relay = await relay_factory(policy={"normalize_messages": True})
    for user in (123, 456):
        body = (
            b'{}\n{"type":"event"}\n'
            + orjson.dumps({"message": f"user {user} failed to log in"})
            + b"\n"
        )
        assert (
            await relay.post("/api/42/envelope/", data=body, headers=auth_header())
        ).status == 200
    await recorder.wait_for(2)
    prints = [orjson.loads(i.payload)["fingerprint"] for i in recorder.items("event")]
    assert prints[0] == prints[1]
    assert "123" not in str(prints[0])
