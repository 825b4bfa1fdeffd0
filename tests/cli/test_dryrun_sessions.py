"""`relay scrub` on a session aggregate with buckets too old for Sentry: the item is
forwarded without them, and the report says so (how many buckets, and why)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from relay.cli import main
from relay.protocol.envelope import make_envelope

DAY = 24 * 3600


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@pytest.fixture
def aggregate_file(tmp_path: Path) -> Path:
    now = time.time()
    fresh = {"started": _iso(now - 60), "did": "user-7", "exited": 3}
    old = {"started": _iso(now - 6 * DAY), "did": "user-7", "exited": 2}
    doc = {"aggregates": [fresh, old], "attrs": {"release": "shop@1.4.2"}}
    envelope = make_envelope({}, [({"type": "sessions"}, orjson.dumps(doc))])
    path = tmp_path / "sessions.envelope"
    path.write_bytes(envelope.serialize())
    return path


def test_the_report_says_which_buckets_are_dropped(
    aggregate_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["scrub", str(aggregate_file)]) == 0
    out = capsys.readouterr().out
    assert "item 0 (sessions): forward (1 bucket dropped — invalid: timestamp)\n" in out
    # The payload shown is what would be forwarded: the fresh bucket alone.
    assert "scrubbed payload:" in out
    assert '"exited": 3' in out and '"exited": 2' not in out


def test_the_json_report_says_the_same(
    aggregate_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["scrub", "--json", str(aggregate_file)]) == 0
    (report,) = orjson.loads(capsys.readouterr().out)
    assert report["decision"] == "forward (1 bucket dropped — invalid: timestamp)"
    assert [b["exited"] for b in report["payload"]["aggregates"]] == [3]
