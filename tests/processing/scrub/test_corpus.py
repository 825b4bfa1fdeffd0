"""The real-SDK corpus: no planted secret survives the default policy."""

from __future__ import annotations

from pathlib import Path

import pytest

from relay.processing.scrub import compile_scrubber
from relay.protocol.envelope import parse_envelope

CORPUS = Path("/work/shared/corpus/python-sdk")
ENVELOPES = sorted(CORPUS.glob("*.envelope"))

#: Every secret planted in the corpus (see its README), as it appears in the bytes.
PLANTED = [
    b"hunter2",
    b"s3cr3t-value",
    b"9f8e7d6c5b4a39281706f5e4d3c2b1a0",
    b"sk_live_51HqLyjWDarjtT1zdp7dc",
    b"Pa55w0rd!",
    b"pa55@",
    b"eyJhbGciOiJIUzI1NiJ9",
    b"c2lnbmF0dXJl",
    b"4111 1111 1111 1111",
    b"4111-1111-1111-1111",
    b"4111111111111111",
    b"DE89 3704 0044 0532 0130 00",
    b"0f8fad5b-d9cb-469f-a165-70867728950e",
    b"alice.smith@example.com",
    b"bob@example.org",
    b"carol@example.com",
    b"dave@example.com",
    b"203.0.113.77",
    b"198.51.100.23",
    b"192.0.2.10",
]
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
