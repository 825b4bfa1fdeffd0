"""Compile the org policy plus a project's additions into ready-to-run stages.

Each stage library under `relay.processing` knows only its own config section;
this module composes them per project, once per config revision. A project's
policy adds to the org policy and never weakens it (the stage validators refuse
configs that try).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import TypeVar

from relay.config import Config, PolicyConfig, Problem, ProjectConfig
from relay.config.noise import ShadowConfig, validate_shadow
from relay.policy.targets import Target, resolve_target
from relay.processing.context import RequestContext
from relay.processing.filters import compile_filters, validate_filters, validate_trusted_proxies
from relay.processing.fingerprint import compile_fingerprinting, validate_fingerprinting
from relay.processing.pipeline import (
    FilterStage,
    FingerprintStage,
    Limits,
    Prepared,
    SamplingStage,
    ScrubStage,
    prepare,
)
from relay.processing.quotas import (
    CompiledQuotas,
    compile_policy_quotas,
    validate_budgets,
    validate_quotas,
    validate_spike_protection,
)
from relay.processing.sampling import compile_sampling, validate_sampling
from relay.processing.scrub import compile_scrubber, validate_scrubbing, validate_scrubbing_override
from relay.protocol.envelope import Envelope

T = TypeVar("T")


@dataclass(frozen=True)
class CompiledPolicy:
    """Everything the pipeline needs for one project, compiled."""

    limits: Limits
    scrubber: ScrubStage | None = None
    filters: FilterStage | None = None
    sampler: SamplingStage | None = None
    fingerprinter: FingerprintStage | None = None
    shadow: ShadowConfig | None = None
    #: Where shadow copies go (resolved once from `shadow.dsn`).
    shadow_target: Target | None = None
    quotas: CompiledQuotas = field(default_factory=CompiledQuotas)
    #: The scrubbing policy drops attachments: the pipeline drops them before quotas.
    drop_attachments: bool = False

    def prepare(self, envelope: Envelope, ctx: RequestContext) -> Prepared:
        """`pipeline.prepare` under this policy: parse, validate, filter and sample."""
        return prepare(
            envelope,
            ctx,
            filters=self.filters,
            sampler=self.sampler,
            limits=self.limits,
            drop_attachments=self.drop_attachments,
        )


def compile_policy(config: Config, project: ProjectConfig | None) -> CompiledPolicy:
    org = config.policy
    proj: PolicyConfig | None = project.policy if project is not None else None
    # Every pipeline limit is a `limits` key of the same name.
    limits = Limits(**{f.name: getattr(config.limits, f.name) for f in fields(Limits)})
    sampling_rules = [*org.sampling, *(proj.sampling if proj else [])]
    fingerprint_text = proj.fingerprinting if proj else ""
    normalize = bool(org.normalize_messages) or bool(proj and proj.normalize_messages)
    fingerprinter = None
    if org.fingerprinting.strip() or fingerprint_text.strip() or normalize:
        fingerprinter = compile_fingerprinting(org.fingerprinting, fingerprint_text, normalize)
    shadow = proj.shadow if proj and proj.shadow else org.shadow
    scrubber = compile_scrubber(org.scrubbing, proj.scrubbing if proj else None)
    return CompiledPolicy(
        limits=limits,
        scrubber=scrubber,
        drop_attachments=scrubber.attachments == "drop",
        filters=compile_filters(
            org.filters, proj.filters if proj else None, config.listen.trusted_proxies
        ),
        sampler=compile_sampling(org.sampling, proj.sampling if proj else [])
        if sampling_rules
        else None,
        fingerprinter=fingerprinter,
        shadow=shadow,
        shadow_target=resolve_target("", shadow.dsn, 0, "") if shadow is not None else None,
        quotas=compile_policy_quotas(org, proj),
    )


def _prefixed(prefix: str, problems: Sequence[Problem]) -> list[Problem]:
    out = []
    for p in problems:
        if not p.path:
            path = prefix
        elif p.path.startswith("["):
            path = prefix + p.path
        else:
            path = f"{prefix}.{p.path}"
        out.append(Problem(path, p.message))
    return out


def _check(prefix: str, value: T | None, fn: Callable[[T], Sequence[Problem]]) -> list[Problem]:
    return [] if value is None else _prefixed(prefix, fn(value))


def _validate_policy(prefix: str, policy: PolicyConfig) -> list[Problem]:
    problems: list[Problem] = []
    problems += _check(f"{prefix}.scrubbing", policy.scrubbing, validate_scrubbing)
    problems += _check(f"{prefix}.filters", policy.filters, validate_filters)
    problems += _prefixed(f"{prefix}.sampling", validate_sampling(policy.sampling))
    if policy.fingerprinting.strip():
        problems += _prefixed(
            f"{prefix}.fingerprinting", validate_fingerprinting(policy.fingerprinting)
        )
    problems += _check(f"{prefix}.shadow", policy.shadow, validate_shadow)
    problems += _prefixed(f"{prefix}.quotas", validate_quotas(policy.quotas))
    problems += _prefixed(f"{prefix}.budgets", validate_budgets(policy.budgets))
    problems += _check(
        f"{prefix}.spike_protection", policy.spike_protection, validate_spike_protection
    )
    return problems


def validate_policies(config: Config) -> list[Problem]:
    """Semantic checks of the org policy and of each project's additions."""
    problems = _prefixed(
        "listen.trusted_proxies", validate_trusted_proxies(config.listen.trusted_proxies)
    )
    problems += _validate_policy("policy", config.policy)
    for i, project in enumerate(config.projects):
        if project.policy is not None:
            problems += _validate_policy(f"projects[{i}].policy", project.policy)
            if project.policy.scrubbing is not None:
                problems += _prefixed(
                    f"projects[{i}].policy.scrubbing",
                    validate_scrubbing_override(config.policy.scrubbing, project.policy.scrubbing),
                )
    return problems
