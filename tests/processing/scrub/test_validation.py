"""check-config problems, and a project that tries to weaken the org policy."""

from __future__ import annotations

from relay.processing.scrub import validate_scrubbing, validate_scrubbing_override
from tests.processing.scrub.conftest import cfg


def paths(problems: list) -> list[str]:  # type: ignore[type-arg]
    return [p.path for p in problems]


def test_defaults_are_valid() -> None:
    assert validate_scrubbing(cfg()) == []


def test_bad_values_have_paths() -> None:
    problems = validate_scrubbing(
        cfg(
            source_context="sometimes",
            attachments="shred",
            sensitive_fields=[" "],
            pseudonymize={"fields": ["user..id"]},
            pii_config={
                "rules": {
                    "r1": {"type": "pattern", "pattern": "(a"},
                    "r2": {"type": "pattern", "pattern": "(?=x)y"},
                    "r3": {"type": "ip", "redaction": {"method": "shred"}},
                    "r4": {"type": "teleport"},
                    "r5": {"type": "multiple", "rules": ["nope"]},
                    "r6": {"type": "alias", "rule": "r6"},
                    "r7": {"type": "redact_pair"},
                },
                "applications": {
                    "$string": ["r1", "@missing"],
                    "$nosuch.x": ["@ip"],
                    "a &&": ["@ip"],
                },
            },
        )
    )
    got = paths(problems)
    for expected in [
        "source_context",
        "attachments",
        "sensitive_fields[0]",
        "pseudonymize.fields[0]",
        "pseudonymize.key",
        "pii_config.rules.r1.pattern",
        "pii_config.rules.r2.pattern",
        "pii_config.rules.r3.redaction.method",
        "pii_config.rules.r4.type",
        "pii_config.rules.r5.rules[0]",
        "pii_config.rules.r6",
        "pii_config.rules.r7.keyPattern",
        'pii_config.applications["$string"][1]',
        'pii_config.applications["$nosuch.x"]',
        'pii_config.applications["a &&"]',
    ]:
        assert expected in got, (expected, got)
    assert 'pii_config.applications["$string"][0]' not in got


def test_short_pseudonymize_key() -> None:
    problems = validate_scrubbing(cfg(pseudonymize={"fields": ["user.id"], "key": "short"}))
    assert paths(problems) == ["pseudonymize.key"]


def test_project_may_add_and_tighten() -> None:
    org = cfg(sensitive_fields=["ssn"], source_context="scrub", attachments="scrub_text")
    project = cfg(
        sensitive_fields=["order_ref"],
        safe_fields=["order_id"],
        source_context="drop",
        attachments="drop",
        emails=True,
        pii_config={"applications": {"$string": ["@uuid:replace"]}},
    )
    assert validate_scrubbing_override(org, project) == []
    assert validate_scrubbing_override(None, project) == []


def test_project_cannot_disable_org_switches() -> None:
    org = cfg(emails=True)
    project = cfg(emails=False, ip_addresses=False, defaults=False, secrets=False)
    assert sorted(paths(validate_scrubbing_override(org, project))) == [
        "defaults",
        "emails",
        "ip_addresses",
        "secrets",
    ]
    # Unset org switches are the strict defaults, so they cannot be disabled either.
    assert paths(validate_scrubbing_override(None, cfg(emails=False))) == ["emails"]
    # An org that turned a switch off leaves the project free.
    assert validate_scrubbing_override(cfg(emails=False), cfg(emails=False)) == []


def test_project_cannot_weaken_modes() -> None:
    org = cfg(source_context="drop", attachments="drop")
    got = paths(
        validate_scrubbing_override(org, cfg(source_context="scrub", attachments="scrub_text"))
    )
    assert sorted(got) == ["attachments", "source_context"]
    assert paths(
        validate_scrubbing_override(None, cfg(source_context="keep", attachments="keep"))
    ) == [
        "source_context",
        "attachments",
    ]


def test_project_safe_fields_cannot_exempt_org_sensitive() -> None:
    org = cfg(sensitive_fields=["ssn"])
    project = cfg(
        safe_fields=["password", "customer_ssn", "order_id", "Authorization", "sessionid"]
    )
    assert paths(validate_scrubbing_override(org, project)) == [
        "safe_fields[0]",
        "safe_fields[1]",
        "safe_fields[3]",
        "safe_fields[4]",
    ]
    # Without org defaults, only the org's own sensitive fields are protected.
    org2 = cfg(defaults=False, sensitive_fields=["ssn"])
    assert paths(validate_scrubbing_override(org2, cfg(safe_fields=["password", "ssn"]))) == [
        "safe_fields[1]"
    ]
