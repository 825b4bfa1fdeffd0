"""The benchmark's traffic: corpus envelopes in a fixed, interleaved mix.

`DEFAULT_MIX` weights the python-sdk corpus roughly as a busy service sends it:
transactions most, then errors and logs, a few check-ins, and some noise that a
filter should drop (a `/healthz` transaction, a `ConnectionResetError`).
"""

from __future__ import annotations

import argparse
import gzip
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CORPUS = REPO.parent / "shared" / "corpus" / "python-sdk"
#: The key and project of the corpus DSN.
CORPUS_KEY = "abc123def4567890abc123def4567890"
CORPUS_PROJECT = 42
SDK_CLIENT = "sentry.python/2.75.0"

DEFAULT_MIX: dict[str, int] = {
    "transaction-checkout": 4,
    "error-payment": 2,
    "log": 2,
    "error-with-attachment": 1,
    "error-connection-reset": 1,
    "transaction-healthz": 1,
    "check-in": 1,
}


@dataclass(frozen=True)
class Body:
    name: str
    raw: bytes
    #: What goes on the wire (gzip-compressed when the run sends gzip, as SDKs do).
    wire: bytes


def traffic_arguments(description: str | None) -> argparse.ArgumentParser:
    """The options both load generators take: target, traffic, connections, timing."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", required=True, help="base URL of the target")
    parser.add_argument("--corpus", default=str(DEFAULT_CORPUS))
    parser.add_argument("--mix", default="", help="name=weight,... (default: corpus.DEFAULT_MIX)")
    parser.add_argument("--encoding", choices=("gzip", "identity"), default="gzip")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--duration", type=float, default=15.0)
    parser.add_argument("--project", type=int, default=CORPUS_PROJECT)
    parser.add_argument("--key", default=CORPUS_KEY)
    return parser


def envelope_path(project: int) -> str:
    """The envelope endpoint's path for `project`."""
    return f"/api/{project}/envelope/"


def request_headers(key: str, *, gzip_bodies: bool) -> dict[str, str]:
    """The headers the SDK sends with an envelope (besides Host and Content-Length)."""
    headers = {
        "Content-Type": "application/x-sentry-envelope",
        "User-Agent": SDK_CLIENT,
        "X-Sentry-Auth": f"Sentry sentry_key={key}, sentry_version=7, sentry_client={SDK_CLIENT}",
    }
    if gzip_bodies:
        headers["Content-Encoding"] = "gzip"
    return headers


def parse_mix(spec: str | None) -> dict[str, int]:
    """`name=weight,name=weight` (weight defaults to 1); None or "" is `DEFAULT_MIX`."""
    if not spec:
        return dict(DEFAULT_MIX)
    mix: dict[str, int] = {}
    for part in spec.split(","):
        name, _, weight = part.strip().partition("=")
        mix[name.removesuffix(".envelope")] = int(weight or 1)
    return mix


def load_corpus(directory: Path) -> dict[str, bytes]:
    files = sorted(directory.glob("*.envelope"))
    if not files:
        raise FileNotFoundError(f"no *.envelope files in {directory}")
    return {f.stem: f.read_bytes() for f in files}


def sequence(directory: Path, mix: dict[str, int], *, gzip_bodies: bool) -> list[Body]:
    """One cycle of the mix, interleaved (smooth weighted round robin), ready to send."""
    corpus = load_corpus(directory)
    missing = [name for name in mix if name not in corpus]
    if missing:
        raise KeyError(f"not in {directory}: {', '.join(missing)} (have {', '.join(corpus)})")
    bodies = {
        name: Body(
            name,
            corpus[name],
            gzip.compress(corpus[name], 6, mtime=0) if gzip_bodies else corpus[name],
        )
        for name in mix
    }
    total = sum(mix.values())
    current = dict.fromkeys(mix, 0)
    out: list[Body] = []
    for _ in range(total):
        for name, weight in mix.items():
            current[name] += weight
        pick = max(current, key=lambda n: current[n])
        current[pick] -= total
        out.append(bodies[pick])
    return out
