"""Projects and their compiled policies, looked up per request.

`PolicyRegistry(config)` compiles the org policy and every configured project's
policy once (per config revision). `resolve(project_id, public_key)` answers
with the project's `ProjectPolicy`, or says why not (unknown project, key not
allowed for this project).
"""

from __future__ import annotations

import fnmatch
import hashlib
from dataclasses import dataclass, field
from enum import Enum
from functools import lru_cache
from urllib.parse import urlsplit

from relay.config import Config, ProjectConfig
from relay.policy.compile import CompiledPolicy, compile_policy
from relay.policy.targets import Target, resolve_target
from relay.processing.filters import parse_networks


class Denied(Enum):
    UNKNOWN_PROJECT = "unknown project"
    UNKNOWN_KEY = "the key is not allowed for this project"


@dataclass(frozen=True)
class ProjectPolicy:
    project_id: int
    config: ProjectConfig | None
    policy: CompiledPolicy
    upstream_url: str
    revision: str
    allowed_origins: tuple[str, ...] = field(default=())
    #: `allowed_origins`, read once (entries that are neither form match nothing).
    origin_rules: tuple[OriginRule, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        rules = (OriginRule.parse(p) for p in self.allowed_origins)
        object.__setattr__(self, "origin_rules", tuple(r for r in rules if r is not None))

    def target(self, public_key: str) -> Target:
        return _target(
            self.upstream_url,
            self.config.upstream_dsn if self.config else None,
            self.project_id,
            public_key,
        )

    def origin_allowed(self, origin: str | None) -> bool:
        if not origin or not self.allowed_origins:
            return True
        lowered = origin.lower()
        return any(rule.matches(lowered) for rule in self.origin_rules)


@dataclass(frozen=True, slots=True)
class OriginRule:
    """One `allowed_origins` entry, read once. With a scheme (`https://*.example.com`): a
    glob over the whole origin. Without, as Sentry reads its projects' allowed domains:
    `*` any origin, `example.com` that host with any scheme and port, `*.example.com` the
    domain and its subdomains, and a `:port` (`example.com:8080`, `*:8080`) that port only."""

    glob: str | None = None
    domain: str = ""
    port: int | None = None

    @classmethod
    def parse(cls, pattern: str) -> OriginRule | None:
        """The rule of an entry; None for one that is neither form (`check-config`
        refuses those)."""
        pattern = pattern.lower()
        if "://" in pattern:
            return cls(glob=pattern)
        if pattern == "*":
            return cls(domain="*")
        try:
            parts = urlsplit("//" + pattern)
            port = parts.port
        except ValueError:
            return None
        if not parts.hostname or parts.path or parts.query or parts.fragment or "@" in pattern:
            return None
        return cls(domain=parts.hostname, port=port)

    def matches(self, origin: str) -> bool:
        """Whether a browser `Origin` (lowered) matches."""
        if self.glob is not None:
            return fnmatch.fnmatchcase(origin, self.glob)
        if self.domain == "*" and self.port is None:
            return True
        try:
            got = urlsplit(origin)
            host, port = got.hostname or "", got.port
        except ValueError:  # a client's Origin that does not parse matches nothing
            return False
        if self.port is not None and port != self.port:
            return False
        if self.domain == "*":
            return bool(host)
        if self.domain.startswith("*."):
            return host == self.domain[2:] or host.endswith(self.domain[1:])
        return host == self.domain


def origin_matches(origin: str, pattern: str) -> bool:
    """Whether a browser `Origin` matches an `allowed_origins` entry (see `OriginRule`)."""
    rule = OriginRule.parse(pattern)
    return rule is not None and rule.matches(origin.lower())


@lru_cache(maxsize=4096)
def _target(
    upstream_url: str, upstream_dsn: str | None, project_id: int, public_key: str
) -> Target:
    return resolve_target(upstream_url, upstream_dsn, project_id, public_key)


class PolicyRegistry:
    """Compiled policies of one config revision."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.revision = config_revision(config)
        self.trusted_proxies = parse_networks(config.listen.trusted_proxies)
        self.org_policy = compile_policy(config, None)
        self._projects: dict[int, ProjectPolicy] = {}
        for project in config.projects:
            compiled = (
                compile_policy(config, project) if project.policy is not None else self.org_policy
            )
            self._projects[project.id] = ProjectPolicy(
                project.id,
                project,
                compiled,
                config.upstream.url,
                self.revision,
                tuple(project.allowed_origins),
            )
        self._unknown: dict[int, ProjectPolicy] = {}
        self._configured_keys = frozenset(k for p in config.projects for k in p.keys)

    def resolve(self, project_id: int, public_key: str) -> ProjectPolicy | Denied:
        project = self._projects.get(project_id)
        if project is not None:
            keys = project.config.keys if project.config else []
            if keys and public_key not in keys:
                return Denied.UNKNOWN_KEY
            if not keys and public_key in self._configured_keys:
                # A key configured for one project never sends to another, even a keyless one.
                return Denied.UNKNOWN_KEY
            return project
        if not self.config.accept_unknown:
            return Denied.UNKNOWN_PROJECT
        if public_key in self._configured_keys:
            # A key configured for one project never sends to another.
            return Denied.UNKNOWN_KEY
        policy = self._unknown.get(project_id)
        if policy is None:
            if len(self._unknown) > 10000:
                self._unknown.clear()
            policy = ProjectPolicy(
                project_id, None, self.org_policy, self.config.upstream.url, self.revision
            )
            self._unknown[project_id] = policy
        return policy


def config_revision(config: Config) -> str:
    """A short hash of the effective config: equal on every worker that loaded the same file."""
    import msgspec

    from relay.config.base import enc_hook

    return hashlib.sha256(msgspec.json.encode(config, enc_hook=enc_hook)).hexdigest()[:12]


class RegistryRef:
    """The registry in force; a reload swaps `current` in one assignment."""

    def __init__(self, registry: PolicyRegistry) -> None:
        self.current = registry
