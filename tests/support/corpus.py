"""The real-SDK corpus in `../shared/corpus/` (beside the repository), and its planted secrets."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CORPUS = Path(os.environ.get("RELAY_CORPUS", ROOT.parent / "shared" / "corpus" / "python-sdk"))
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
