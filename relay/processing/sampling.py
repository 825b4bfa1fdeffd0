"""Sampling: keep a share of matching items, the same share on every relay replica.

`compile_sampling(org_rules, project_rules)` builds a `Sampler`; the first rule
whose `match` holds decides (org rules first). The decision is a pure function of
the item: a 64-bit hash of its key, read as a number in [0, 1), is kept when it is
below the rule's `rate`. The key is the trace id for transactions (envelope header
`trace.trace_id`, else `contexts.trace.trace_id`), so a trace is kept or dropped
as a whole, and the event id otherwise. The same number is used by every rule, so
a trace kept at rate 0.01 is also kept by any rule with a higher rate. Items
without any id get a random draw.

Dry-run rules (`mode: dry_run`) never decide an item's fate; the decision says
what the rule would have done, and an enforcing rule's drop always takes
precedence over a dry-run report.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from relay.config.base import Problem, join_path
from relay.config.noise import MODES, SamplingRule
from relay.processing.matchers import Condition, EventView, Matcher, validate_matcher

__all__ = [
    "SampleDecision",
    "Sampler",
    "compile_sampling",
    "sample_key",
    "sample_value",
    "validate_sampling",
]

_SCALE: Final = float(1 << 64)


@dataclass(frozen=True, slots=True)
class SampleDecision:
    """A sampling rule matched.

    `keep`: whether the item is kept (`False` with `dry_run` means: would be dropped,
    but is kept). `rule` is the rule's id, `rate` its keep rate.
    """

    keep: bool
    rule: str
    rate: float
    dry_run: bool

    @property
    def drop(self) -> bool:
        """True when the item must actually be dropped."""
        return not self.keep and not self.dry_run


def _trace_id(event: Mapping[str, Any], envelope_headers: Mapping[str, Any]) -> str | None:
    trace = envelope_headers.get("trace")
    if isinstance(trace, Mapping):
        value = trace.get("trace_id")
        if isinstance(value, str) and value:
            return value.lower().replace("-", "")
    contexts = event.get("contexts")
    if isinstance(contexts, Mapping):
        trace = contexts.get("trace")
        if isinstance(trace, Mapping):
            value = trace.get("trace_id")
            if isinstance(value, str) and value:
                return value.lower().replace("-", "")
    return None


def sample_key(
    event: Mapping[str, Any], item_type: str, envelope_headers: Mapping[str, Any]
) -> str | None:
    """What an item's sampling decision hangs on: `trace:<id>` or `event:<id>`."""
    if item_type == "transaction" or event.get("type") == "transaction":
        trace_id = _trace_id(event, envelope_headers)
        if trace_id:
            return "trace:" + trace_id
    for source in (event, envelope_headers):
        value = source.get("event_id")
        if isinstance(value, str) and value:
            return "event:" + value.lower().replace("-", "")
    return None


def sample_value(key: str | None) -> float:
    """A number in [0, 1), uniform over keys and identical on every replica."""
    if key is None:
        return random.random()
    digest = hashlib.blake2b(key.encode(), digest_size=8, person=b"relay-sample").digest()
    return int.from_bytes(digest, "big") / _SCALE


@dataclass(frozen=True, slots=True)
class _Rule:
    id: str
    condition: Condition
    rate: float
    dry_run: bool


class Sampler:
    """Compiled sampling rules, evaluated in order. Build with `compile_sampling`."""

    __slots__ = ("_rules",)

    def __init__(self, rules: Sequence[_Rule]) -> None:
        self._rules = tuple(rules)

    def __bool__(self) -> bool:
        return bool(self._rules)

    def __len__(self) -> int:
        return len(self._rules)

    def decide(
        self,
        event: Mapping[str, Any],
        item_type: str,
        envelope_headers: Mapping[str, Any] | None = None,
    ) -> SampleDecision | None:
        """The decision of the first matching rule, or None (keep) when none matches.

        With dry-run rules in the list, the item's fate is decided by the first
        matching enforcing rule; a dry-run rule that matches before it and would drop
        the item is reported (`dry_run=True`) if the enforcing rule keeps it.
        """
        if not self._rules:
            return None
        headers = envelope_headers or {}
        view = EventView(event, item_type)
        first: _Rule | None = None
        enforcing: _Rule | None = None
        for rule in self._rules:
            if rule.condition.matches(view):
                first = first or rule
                if not rule.dry_run:
                    enforcing = rule
                    break
        if first is None:
            return None
        value = sample_value(sample_key(event, item_type, headers))
        if enforcing is not None and value >= enforcing.rate:
            return SampleDecision(False, enforcing.id, enforcing.rate, False)
        if first.dry_run and value >= first.rate:
            return SampleDecision(False, first.id, first.rate, True)
        if enforcing is not None:
            return SampleDecision(True, enforcing.id, enforcing.rate, False)
        return SampleDecision(True, first.id, first.rate, True)


def _compile_rule(rule: SamplingRule, default_id: str) -> _Rule:
    matchers: list[Matcher] = []
    for raw_key, patterns in rule.match.items():
        negated = raw_key.startswith("!")
        key = raw_key[1:] if negated else raw_key
        values = [patterns] if isinstance(patterns, str) else list(patterns)
        matchers.append(Matcher(key, values, negated))
    return _Rule(
        id=rule.id or default_id,
        condition=Condition(matchers),
        rate=min(max(rule.rate, 0.0), 1.0),
        dry_run=rule.mode == "dry_run",
    )


def compile_sampling(org: Sequence[SamplingRule], project: Sequence[SamplingRule] = ()) -> Sampler:
    """Compile org rules then project rules (validated). Rules without `id` are named
    `sampling[i]` (org) and `project.sampling[i]` (project)."""
    rules = [_compile_rule(r, f"sampling[{i}]") for i, r in enumerate(org)]
    rules += [_compile_rule(r, f"project.sampling[{i}]") for i, r in enumerate(project)]
    return Sampler(rules)


def validate_sampling(rules: Sequence[SamplingRule]) -> list[Problem]:
    """Semantic checks of `policy.sampling`; paths like `[0].match.error.type`."""
    problems: list[Problem] = []
    seen: dict[str, int] = {}
    for i, rule in enumerate(rules):
        base = join_path("", i)
        if rule.id is not None:
            if not rule.id.strip():
                problems.append(Problem(join_path(base, "id"), "cannot be empty"))
            elif rule.id in seen:
                problems.append(
                    Problem(join_path(base, "id"), f"duplicate rule id (also [{seen[rule.id]}])")
                )
            seen.setdefault(rule.id, i)
        if not 0.0 <= rule.rate <= 1.0:
            problems.append(Problem(join_path(base, "rate"), "must be between 0 and 1"))
        if rule.mode not in MODES:
            problems.append(Problem(join_path(base, "mode"), "must be 'enforce' or 'dry_run'"))
        for raw_key, patterns in rule.match.items():
            key = raw_key[1:] if raw_key.startswith("!") else raw_key
            path = join_path(join_path(base, "match"), raw_key)
            values = [patterns] if isinstance(patterns, str) else list(patterns)
            if not values:
                problems.append(Problem(path, "needs at least one pattern"))
            for j, pattern in enumerate(values):
                problem = validate_matcher(key, pattern)
                if problem is not None:
                    where = path if isinstance(patterns, str) else join_path(path, j)
                    problems.append(Problem(where, problem))
                    if problem.startswith("unknown matcher"):
                        break
    return problems
