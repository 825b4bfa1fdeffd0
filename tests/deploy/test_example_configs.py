"""`relay check-config` passes on the example config and on every ready policy."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy.conftest import ROOT

EXAMPLES = [
    ROOT / "config" / "relay.example.yml",
    *sorted((ROOT / "config" / "policies").glob("*.yml")),
]


def _check(path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relay", "check-config", str(path)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
        check=False,
    )


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    for name in ("REDIS_URL", "CHECKOUT_UPSTREAM_DSN"):
        env.pop(name, None)
    return {**env, **extra}


def test_the_ready_policies_are_there() -> None:
    names = {p.name for p in EXAMPLES}
    assert {"strict-pii.yml", "gdpr-pseudonymize.yml", "spend-cap-with-shadow.yml"} <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_check_config_passes_on_defaults(path: Path) -> None:
    """Every secret has a `${VAR:-default}`, so the file validates with no env set."""
    result = _check(path, _env())
    assert result.returncode == 0, result.stderr
    assert ": ok (" in result.stdout


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_check_config_passes_with_real_values(path: Path) -> None:
    env = _env(
        RELAY_UPSTREAM_URL="https://sentry.internal.example",
        REDIS_URL="redis://redis.internal:6379/2",
        RELAY_ADMIN_TOKEN="an-admin-token-from-the-secret-store",
        RELAY_PSEUDONYM_KEY="f" * 64,
        RELAY_HASH_KEY="e" * 64,
        RELAY_SHADOW_DSN="https://abcdefabcdefabcdefabcdefabcdefab@sentry.internal.example/9",
        CHECKOUT_UPSTREAM_DSN="https://abcdefabcdefabcdefabcdefabcdef12@sentry.internal.example/10",
    )
    result = _check(path, env)
    assert result.returncode == 0, result.stderr
    assert "sentry.internal.example" in result.stdout


def test_a_weak_pseudonym_key_is_refused() -> None:
    """The defaults are placeholders; a real deployment sets the key, and a short one fails."""
    result = _check(
        ROOT / "config" / "policies" / "gdpr-pseudonymize.yml", _env(RELAY_PSEUDONYM_KEY="short")
    )
    assert result.returncode == 1
    assert "policy.scrubbing.pseudonymize.key" in result.stderr


def test_the_example_shows_every_key() -> None:
    """Each config field appears in relay.example.yml (as a key, set or commented)."""
    import msgspec

    from relay.config import Config

    text = (ROOT / "config" / "relay.example.yml").read_text()
    missing: list[str] = []

    def walk(tp: type, path: str) -> None:
        for field in msgspec.structs.fields(tp):
            name = field.encode_name
            if f"{name}:" not in text:
                missing.append(f"{path}{name}")
            sub = _struct_in(field.type)
            if sub is not None:
                walk(sub, f"{path}{name}.")

    walk(Config, "")
    assert missing == []


def _struct_in(tp: object) -> type | None:
    import typing

    import msgspec

    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        return tp
    for arg in typing.get_args(tp):
        found = _struct_in(arg)
        if found is not None:
            return found
    return None
