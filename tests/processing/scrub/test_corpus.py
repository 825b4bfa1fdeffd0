"""The real-SDK corpus: no planted secret survives the default policy."""

from __future__ import annotations

from pathlib import Path

import pytest

from relay.processing.scrub import compile_scrubber
from relay.protocol.envelope import parse_envelope
from tests.support.corpus import CORPUS, ENVELOPES, PLANTED

#: What must still be there (ids, releases, versions, module and function names, paths).
KEPT = [
    b"shop@1.4.2",
    b"86f2111e292348f990b40c2f7ff035f3",
    b"2.75.0",
    b"/srv/shop/app/checkout.py",
    b'"function":"charge"',
    b'"lineno":21',
]


def test_corpus_is_present() -> None:
    assert len(ENVELOPES) == 7


@pytest.mark.parametrize("path", ENVELOPES, ids=lambda p: p.name)
def test_no_planted_secret_survives(path: Path) -> None:
    raw = path.read_bytes()
    env = parse_envelope(raw)
    report = compile_scrubber(None).scrub_envelope(env)
    out = env.serialize()
    leaked = [s for s in PLANTED if s in out]
    assert leaked == []
    assert parse_envelope(out).event_id == env.event_id
    if any(s in raw for s in PLANTED):
        assert report.redactions
    assert not any(r.rule == "" for r in report.redactions)


def test_known_good_values_survive() -> None:
    raw = (CORPUS / "error-with-attachment.envelope").read_bytes()
    env = parse_envelope(raw)
    compile_scrubber(None).scrub_envelope(env)
    out = env.serialize()
    for value in KEPT:
        assert value in out, value


def test_report_never_carries_values() -> None:
    env = parse_envelope((CORPUS / "error-with-attachment.envelope").read_bytes())
    report = compile_scrubber(None).scrub_envelope(env)
    text = repr(report.redactions).encode()
    assert [s for s in PLANTED if s in text] == []
