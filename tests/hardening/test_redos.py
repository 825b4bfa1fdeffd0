"""ReDoS: user-supplied patterns (PII rules, filter and fingerprint globs, allowed origins)
run in linear time, or `check-config` refuses them.

The classic catastrophic pattern `(a+)+$` against `"a" * n + "!"` takes exponential time
in a backtracking engine; here it must finish in well under a second, for n = 50 and for
inputs thousands of times longer.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient

from relay.config import parse_config
from relay.policy.compile import validate_policies
from relay.processing.glob import GlobSet
from relay.processing.scrub.rules import compile_regex
from tests.support.relay import KEY, RelayFactory, auth_header
from tests.support.upstream import RecordingUpstream

CATASTROPHIC = ["(a+)+$", "(a|a)+$", "(a|aa)+$", "(.*a){20}$", "^(a?){30}a{30}$", "(\\w+\\s?)+$"]
EVIL_INPUTS = ["a" * 50 + "!", "a" * 100_000 + "!", ("a " * 20_000) + "!"]
BOUND_S = 0.5


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def pii_policy(pattern: str) -> dict[str, Any]:
    return {
        "scrubbing": {
            "pii_config": {
                "rules": {
                    "evil": {
                        "type": "pattern",
                        "pattern": pattern,
                        "redaction": {"method": "replace", "text": "[evil]"},
                    }
                },
                "applications": {"$string": ["evil"]},
            }
        }
    }


@pytest.mark.parametrize("pattern", CATASTROPHIC)
def test_user_patterns_run_in_linear_time(pattern: str) -> None:
    regex = compile_regex(pattern)
    for text in EVIL_INPUTS:
        assert timed(lambda text=text: regex.search(text)) < BOUND_S, (pattern, len(text))


@pytest.mark.parametrize("pattern", CATASTROPHIC)
def test_catastrophic_patterns_pass_check_config_and_stay_fast_in_the_relay(
    pattern: str,
) -> None:
    config = parse_config({"policy": pii_policy(pattern)}, env={})
    assert validate_policies(config) == []


async def test_a_catastrophic_pii_rule_through_the_relay(
    relay_factory: RelayFactory, recorder: RecordingUpstream
) -> None:
    relay: TestClient = await relay_factory(policy=pii_policy("(a+)+$"))
    for text in [*EVIL_INPUTS, "a" * 50]:
        event = orjson.dumps({"message": text, "extra": {"k": text}, "tags": {"t": text[:200]}})
        body = b'{}\n{"type":"event"}\n' + event + b"\n"
        start = time.perf_counter()
        resp = await relay.post("/api/42/envelope/", data=body, headers=auth_header(KEY))
        assert resp.status == 200
        assert time.perf_counter() - start < 1.0, len(text)
    await recorder.wait_for(4)
    # The rule did apply where it matches.
    last = orjson.loads(recorder.items("event")[-1].payload)
    assert "[evil]" in orjson.dumps(last).decode()


@pytest.mark.parametrize(
    "pattern",
    [
        "(a+)\\1",  # backreference
        "(?=a)a",  # lookahead
        "(?<=a)b",  # lookbehind
        "(?>a+)",  # atomic group
        "a{1000}{1000}{1000}",  # too large for the engine's memory budget
        "(",
    ],
)
def test_patterns_a_linear_engine_cannot_run_are_refused(pattern: str) -> None:
    config = parse_config({"policy": pii_policy(pattern)}, env={})
    problems = validate_policies(config)
    assert [p.path for p in problems] == ["policy.scrubbing.pii_config.rules.evil.pattern"], (
        problems
    )
    with pytest.raises(ValueError):
        compile_regex(pattern)


def test_redact_pair_key_patterns_are_linear_too() -> None:
    config = parse_config(
        {
            "policy": {
                "scrubbing": {
                    "pii_config": {
                        "rules": {
                            "pair": {
                                "type": "redact_pair",
                                "keyPattern": "(a+)+$",
                                "redaction": {"method": "remove"},
                            }
                        },
                        "applications": {"$object": ["pair"]},
                    }
                }
            }
        },
        env={},
    )
    assert validate_policies(config) == []
    regex = compile_regex("(a+)+$")
    assert timed(lambda: regex.search("a" * 100_000 + "!")) < BOUND_S


GLOB_BOMBS = ["*a*a*a*a*a*a*a*a*a*a*a*a*!", "{a,a}{a,a}{a,a}{a,a}{a,a}*!", "*?*?*?*?*?*?*?*?*!"]


@pytest.mark.parametrize("glob", GLOB_BOMBS)
def test_globs_run_in_linear_time(glob: str) -> None:
    globs = GlobSet([glob, "*b*"])
    for text in EVIL_INPUTS:
        assert timed(lambda text=text: globs.match(text)) < BOUND_S, (glob, len(text))


async def test_filter_fingerprint_and_origin_globs_through_the_relay(
    relay_factory: RelayFactory, recorder: RecordingUpstream
) -> None:
    glob = GLOB_BOMBS[0]
    relay: TestClient = await relay_factory(
        policy={
            "filters": {"error_messages": [glob], "releases": [glob]},
            "sampling": [{"id": "s", "match": {"message": glob}, "rate": 1.0}],
            "fingerprinting": f'message:"{glob}" -> evil',
        },
        projects=[{"id": 42, "keys": [KEY], "allowed_origins": [f"https://{glob}.example"]}],
    )
    text = "a" * 200_000
    event = orjson.dumps(
        {
            "message": text,
            "release": text[:190],
            "exception": {"values": [{"type": "E", "value": text}]},
        }
    )
    body = b'{}\n{"type":"event"}\n' + event + b"\n"
    start = time.perf_counter()
    resp = await relay.post("/api/42/envelope/", data=body, headers=auth_header(KEY))
    assert resp.status == 200
    assert time.perf_counter() - start < 1.0
    # The origin allowlist is matched against a header the client chooses.
    origin = "https://" + "a" * 7000 + ".example"
    start = time.perf_counter()
    resp = await relay.post(
        "/api/42/envelope/", data=body, headers={**auth_header(KEY), "Origin": origin}
    )
    assert resp.status == 403
    assert time.perf_counter() - start < 1.0
    await recorder.wait_for(1)
