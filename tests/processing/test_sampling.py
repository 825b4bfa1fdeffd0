from __future__ import annotations

import random
import uuid
from typing import Any

import orjson

from relay.config import parse_config
from relay.config.noise import SamplingRule
from relay.processing.sampling import (
    SampleDecision,
    compile_sampling,
    sample_key,
    sample_value,
    validate_sampling,
)
from relay.protocol.envelope import parse_envelope
from tests.support.corpus import CORPUS


def ids(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [uuid.UUID(int=rng.getrandbits(128), version=4).hex for _ in range(n)]


def corpus(name: str) -> tuple[dict[str, Any], str, dict[str, Any]]:
    envelope = parse_envelope((CORPUS / f"{name}.envelope").read_bytes())
    item = envelope.items[0]
    return envelope.headers, item.type, orjson.loads(item.payload)


RESET = SamplingRule(id="noisy-resets", match={"error.type": "ConnectionResetError"}, rate=0.01)


def reset_event(event_id: str) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "exception": {"values": [{"type": "ConnectionResetError", "value": "x"}]},
    }


def test_one_percent_rule_keeps_about_one_percent() -> None:
    sampler = compile_sampling([RESET])
    decisions = [sampler.decide(reset_event(i), "event", {}) for i in ids(10_000, seed=1)]
    assert all(d is not None and d.rule == "noisy-resets" and d.rate == 0.01 for d in decisions)
    kept = sum(1 for d in decisions if d is not None and d.keep)
    # Binomial(10000, 0.01): mean 100, standard deviation ~10.
    assert 60 <= kept <= 140, kept


def test_independent_samplers_agree_on_every_id() -> None:
    rules = [RESET, SamplingRule(match={"level": "warning"}, rate=0.3)]
    first = compile_sampling(list(rules))
    second = compile_sampling(
        [SamplingRule(**{f: getattr(r, f) for f in r.__struct_fields__}) for r in rules]
    )
    for event_id in ids(10_000, seed=2):
        event = reset_event(event_id)
        assert first.decide(event, "event", {}) == second.decide(dict(event), "event", {})
        warning = {"event_id": event_id, "level": "warning", "message": "m"}
        assert first.decide(warning, "event", {}) == second.decide(dict(warning), "event", {})


def test_value_is_uniform_and_stable() -> None:
    assert sample_value("event:abc") == sample_value("event:abc")
    values = [sample_value(f"event:{i}") for i in ids(10_000, seed=3)]
    assert all(0.0 <= v < 1.0 for v in values)
    assert 0.45 < sum(values) / len(values) < 0.55
    below = sum(1 for v in values if v < 0.25)
    assert 2300 < below < 2700


def test_transactions_are_sampled_per_trace() -> None:
    sampler = compile_sampling([SamplingRule(match={"event.type": "transaction"}, rate=0.5)])
    for trace_id in ids(200, seed=4):
        decisions = set()
        for event_id in ids(5, seed=int(trace_id[:8], 16)):
            event = {
                "type": "transaction",
                "event_id": event_id,
                "contexts": {"trace": {"trace_id": trace_id}},
            }
            decision = sampler.decide(event, "transaction", {"trace": {"trace_id": trace_id}})
            assert decision is not None
            decisions.add(decision.keep)
            # Without the envelope header, the event's trace context decides the same.
            assert sampler.decide(event, "transaction", {}) == decision
        assert len(decisions) == 1


def test_sample_keys() -> None:
    headers, item_type, event = corpus("transaction-healthz")
    assert sample_key(event, item_type, headers) == "trace:402dfcda3724462c808b5d7dd8bdbd6b"
    headers, item_type, event = corpus("error-connection-reset")
    assert sample_key(event, item_type, headers) == "event:fe4272fa94e54186acc6e75b1bb21a2c"
    assert sample_key({}, "event", {"event_id": "ABC-def"}) == "event:abcdef"
    assert sample_key({"type": "transaction"}, "transaction", {"event_id": "e1"}) == "event:e1"
    assert sample_key({}, "event", {}) is None


def test_corpus_events() -> None:
    drop_resets = compile_sampling(
        [SamplingRule(id="resets", match={"error.type": "ConnectionResetError"}, rate=0.0)]
    )
    headers, item_type, event = corpus("error-connection-reset")
    assert drop_resets.decide(event, item_type, headers) == SampleDecision(
        False, "resets", 0.0, False
    )
    headers, item_type, event = corpus("error-with-attachment")
    assert drop_resets.decide(event, item_type, headers) is None


def test_nested_rates_are_consistent() -> None:
    low = compile_sampling([SamplingRule(rate=0.05)])
    high = compile_sampling([SamplingRule(rate=0.5)])
    for event_id in ids(2000, seed=5):
        event = {"event_id": event_id, "message": "m"}
        d_low, d_high = low.decide(event, "event", {}), high.decide(event, "event", {})
        assert d_low is not None and d_high is not None
        if d_low.keep:
            assert d_high.keep


def test_rate_bounds() -> None:
    for event_id in ids(200, seed=6):
        event = {"event_id": event_id, "message": "m"}
        assert compile_sampling([SamplingRule(rate=0.0)]).decide(event, "event") == SampleDecision(
            False, "sampling[0]", 0.0, False
        )
        assert compile_sampling([SamplingRule(rate=1.0)]).decide(event, "event") == SampleDecision(
            True, "sampling[0]", 1.0, False
        )


def test_matching_and_rule_order() -> None:
    rules = [
        SamplingRule(id="eu", match={"tags.region": ["eu-*", "uk-*"], "!level": "fatal"}, rate=0.0),
        SamplingRule(id="all", rate=1.0),
    ]
    project = [SamplingRule(match={"logger": "never-reached"}, rate=0.0)]
    sampler = compile_sampling(rules, project)
    assert len(sampler) == 3
    eu = {"event_id": "1", "tags": {"region": "uk-south"}, "level": "error", "message": "m"}
    assert sampler.decide(eu, "event", {}) == SampleDecision(False, "eu", 0.0, False)
    fatal = {**eu, "level": "fatal"}
    assert sampler.decide(fatal, "event", {}) == SampleDecision(True, "all", 1.0, False)
    us = {"event_id": "1", "tags": [["region", "us-east-1"]], "message": "m"}
    assert sampler.decide(us, "event", {}) == SampleDecision(True, "all", 1.0, False)


def test_project_rules_follow_org_rules_and_get_default_ids() -> None:
    sampler = compile_sampling(
        [SamplingRule(match={"logger": "a"}, rate=0.0)],
        [SamplingRule(match={"logger": "b"}, rate=0.0)],
    )
    assert sampler.decide({"event_id": "1", "logger": "a"}, "event", {}) == SampleDecision(
        False, "sampling[0]", 0.0, False
    )
    assert sampler.decide({"event_id": "1", "logger": "b"}, "event", {}) == SampleDecision(
        False, "project.sampling[0]", 0.0, False
    )
    assert sampler.decide({"event_id": "1", "logger": "c"}, "event", {}) is None
    assert not compile_sampling([], [])
    assert compile_sampling([], []).decide({"event_id": "1"}, "event", {}) is None


def test_dry_run_never_drops_and_never_masks_enforcement() -> None:
    dry = SamplingRule(
        id="try", match={"error.type": "ConnectionResetError"}, rate=0.0, mode="dry_run"
    )
    enforced = SamplingRule(id="enforced", match={"error.type": "*Error"}, rate=0.0)
    keep_all = SamplingRule(id="keep", rate=1.0)
    event = reset_event("abc")
    decision = compile_sampling([dry]).decide(event, "event", {})
    assert decision == SampleDecision(False, "try", 0.0, True)
    assert decision is not None and not decision.drop
    # An enforcing rule after the dry run still drops.
    decision = compile_sampling([dry, enforced]).decide(event, "event", {})
    assert decision == SampleDecision(False, "enforced", 0.0, False)
    assert decision is not None and decision.drop
    # If the enforcing rule keeps the item, the dry run's would-be drop is reported.
    assert compile_sampling([dry, keep_all]).decide(event, "event", {}) == SampleDecision(
        False, "try", 0.0, True
    )
    # A dry run after the deciding rule is never reached.
    assert compile_sampling([keep_all, dry]).decide(event, "event", {}) == SampleDecision(
        True, "keep", 1.0, False
    )
    # A dry run that would keep reports a keep.
    lenient = SamplingRule(id="lenient", rate=1.0, mode="dry_run")
    assert compile_sampling([lenient]).decide(event, "event", {}) == SampleDecision(
        True, "lenient", 1.0, True
    )


def test_sampling_from_yaml_shaped_config() -> None:
    config = parse_config(
        {
            "policy": {
                "sampling": [
                    {"id": "r", "match": {"error.type": "ConnectionResetError"}, "rate": 0.01}
                ]
            }
        }
    )
    assert validate_sampling(config.policy.sampling) == []
    sampler = compile_sampling(config.policy.sampling, [])
    decision = sampler.decide(reset_event("x"), "event", {})
    assert decision is not None and decision.rule == "r"


def test_validate_sampling_paths() -> None:
    rules = [
        SamplingRule(id="a", match={"error.type": "[bad"}, rate=0.5),
        SamplingRule(
            id="a", match={"nope": "x", "!tags.x": ["ok", "b{"]}, rate=1.5, mode="sometimes"
        ),
        SamplingRule(id=" ", match={"app": "maybe", "message": []}, rate=-0.1),
    ]
    problems = {p.path: p.message for p in validate_sampling(rules)}
    assert set(problems) == {
        "[0].match.error.type",
        "[1].id",
        "[1].rate",
        "[1].mode",
        "[1].match.nope",
        "[1].match.!tags.x[1]",
        "[2].id",
        "[2].rate",
        "[2].match.app",
        "[2].match.message",
    }
    assert "duplicate rule id (also [0])" in problems["[1].id"]
    assert "unknown matcher 'nope'" in problems["[1].match.nope"]
    assert validate_sampling([RESET]) == []
