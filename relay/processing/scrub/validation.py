"""Semantic checks of `policy.scrubbing` sections, with paths relative to the section.

`validate_scrubbing(cfg)` checks one section on its own (modes, selectors, regexes,
rule references, methods). `validate_scrubbing_override(org, project)` checks that a
project's section only adds to the organisation's and never weakens it.
"""

from __future__ import annotations

from relay.config.base import Problem
from relay.config.scrubbing import ATTACHMENT_MODES, SOURCE_CONTEXT_MODES, ScrubbingConfig
from relay.processing.scrub.rules import validate_pii_config
from relay.processing.scrub.selectors import SelectorError, parse_selector
from relay.processing.scrub.walker import DENY_EXACT, DENY_SUBSTRING

_SWITCHES = ("defaults", "ip_addresses", "emails", "secrets")
_SOURCE_RANK = {"keep": 0, "scrub": 1, "drop": 2}
_ATTACHMENT_RANK = {"keep": 0, "scrub_text": 1, "drop": 2}


def validate_scrubbing(cfg: ScrubbingConfig) -> list[Problem]:
    """Every problem in one scrubbing section (paths such as `pii_config.rules.r1.pattern`)."""
    out: list[Problem] = []
    if cfg.source_context is not None and cfg.source_context not in SOURCE_CONTEXT_MODES:
        out.append(Problem("source_context", f"must be one of {', '.join(SOURCE_CONTEXT_MODES)}"))
    if cfg.attachments is not None and cfg.attachments not in ATTACHMENT_MODES:
        out.append(Problem("attachments", f"must be one of {', '.join(ATTACHMENT_MODES)}"))
    for name in ("sensitive_fields", "safe_fields"):
        for i, value in enumerate(getattr(cfg, name)):
            if not value.strip():
                out.append(Problem(f"{name}[{i}]", "must not be empty"))
    if cfg.pseudonymize is not None:
        ps = cfg.pseudonymize
        for i, text in enumerate(ps.fields):
            try:
                parse_selector(text)
            except SelectorError as exc:
                out.append(Problem(f"pseudonymize.fields[{i}]", f"invalid selector: {exc}"))
        if ps.fields and (ps.key is None or not ps.key.reveal()):
            out.append(Problem("pseudonymize.key", "required when pseudonymize.fields is set"))
        elif ps.key is not None and len(ps.key.reveal()) < 16:
            out.append(Problem("pseudonymize.key", "must be at least 16 characters"))
    if cfg.pii_config is not None:
        out.extend(validate_pii_config(cfg.pii_config))
    return out


def _effective_bool(value: bool | None) -> bool:
    return True if value is None else value


def validate_scrubbing_override(
    org: ScrubbingConfig | None, project: ScrubbingConfig
) -> list[Problem]:
    """Problems where `project` would disable or weaken what `org` enforces.

    Paths are relative to the project's section. A project may add sensitive fields,
    rules and pseudonymized fields, and may make switches stricter.
    """
    org = org or ScrubbingConfig()
    out: list[Problem] = []
    for name in _SWITCHES:
        theirs = getattr(project, name)
        if theirs is False and _effective_bool(getattr(org, name)):
            out.append(
                Problem(name, "enabled by the organization policy; a project cannot disable it")
            )
    org_src = org.source_context or "scrub"
    if project.source_context in _SOURCE_RANK and _SOURCE_RANK[project.source_context] < (
        _SOURCE_RANK.get(org_src, 1)
    ):
        out.append(
            Problem(
                "source_context",
                f"weaker than the organization policy ({org_src!r}); a project cannot weaken it",
            )
        )
    org_att = org.attachments or "scrub_text"
    if project.attachments in _ATTACHMENT_RANK and _ATTACHMENT_RANK[project.attachments] < (
        _ATTACHMENT_RANK.get(org_att, 1)
    ):
        out.append(
            Problem(
                "attachments",
                f"weaker than the organization policy ({org_att!r}); a project cannot weaken it",
            )
        )
    org_defaults = _effective_bool(org.defaults)
    org_sensitive = [f.strip().lower() for f in org.sensitive_fields if f.strip()]
    org_safe = {f.strip().lower() for f in org.safe_fields}
    for i, field in enumerate(project.safe_fields):
        low = field.strip().lower()
        if low in org_safe:
            continue
        key = low.rsplit(".", 1)[-1].strip("'")
        norm = key.replace("-", "_")
        reason = None
        if org_defaults and (norm in DENY_EXACT or DENY_SUBSTRING.search(key)):
            reason = "the organization's default scrubbing marks it sensitive"
        elif any(s in key for s in org_sensitive):
            reason = "the organization lists it in sensitive_fields"
        if reason:
            out.append(Problem(f"safe_fields[{i}]", f"would exempt {field!r}, but {reason}"))
    return out
