"""`policy.scrubbing`: the PII policy section (engine in `relay.processing.scrub`).

Every switch is optional. An unset switch (`None`) inherits the organisation's value
or, when nothing is configured anywhere, the strict default written beside it. A
project's section may add fields and rules, and may turn switches stricter, never
weaker (`validate_scrubbing_override`).

    defaults: true            Sentry's default scrubbing: key denylist (password, token, otp,
                              cookie, session... keys) + card/IBAN/PEM/URL-password/
                              bearer/SSN/home-path detectors -> "[Filtered]"
    ip_addresses: true        remove user.ip_address & co, "[ip]" in strings, no client IP upstream
    emails: true              "[email]" everywhere (also `%40`-encoded)
    secrets: true             JWTs, cloud/API tokens, `password=...` in free text
    sensitive_fields: []      extra keys to filter (substring, case-insensitive)
    safe_fields: []           keys or selectors exempt from the default scrubbing
    source_context: scrub     pre_context/context_line/post_context: scrub | drop | keep
    pseudonymize: {fields: [user.id, user.email], key: ...}   HMAC-SHA256 instead of removal
    pii_config: {rules: {...}, applications: {...}}           Sentry Advanced Data Scrubbing
    attachments: scrub_text   scrub_text | keep | drop
    meta: true                write `_meta` remarks so Sentry's UI shows what was removed
                              (a `_meta` the client sent is removed in any case)
"""

from __future__ import annotations

from typing import Any

from relay.config.base import Secret, Section

SOURCE_CONTEXT_MODES = ("keep", "scrub", "drop")
ATTACHMENT_MODES = ("keep", "scrub_text", "drop")


class PseudonymizeConfig(Section, frozen=True):
    """Fields replaced by a keyed hash, so distinct users stay distinct but unnamed.

    Parameters:
        fields: selectors such as `user.id`, `user.email`, `$user.username`.
        key: the HMAC-SHA256 key (use `${ENV_VAR}`); required when `fields` is set.
    """

    fields: list[str] = []
    key: Secret | None = None


class ScrubbingConfig(Section, frozen=True):
    """Org-wide (or per-project, additive) data scrubbing settings."""

    #: Sentry's default data scrubbing (key denylist and value detectors). Default: true.
    defaults: bool | None = None
    #: Remove IP fields, replace IPs in strings, keep the client IP from the upstream. Default: true.
    ip_addresses: bool | None = None
    #: Replace email addresses everywhere. Default: true.
    emails: bool | None = None
    #: Replace JWTs, cloud and API tokens, and `key=value` secrets in free text. Default: true.
    secrets: bool | None = None
    #: Additional keys whose values are always filtered (case-insensitive substring).
    sensitive_fields: list[str] = []
    #: Keys or selectors exempt from the default scrubbing (Sentry's "safe fields").
    safe_fields: list[str] = []
    #: `scrub` (default), `drop` or `keep` source context lines of stack frames.
    source_context: str | None = None
    pseudonymize: PseudonymizeConfig | None = None
    #: Sentry's Advanced Data Scrubbing JSON (`rules`, `applications`, `vars`), verbatim.
    pii_config: dict[str, Any] | None = None
    #: `scrub_text` (default), `keep` or `drop` attachments.
    attachments: str | None = None
    #: Write `_meta` remarks (rule, kind, range, original length). Default: true.
    meta: bool | None = None
