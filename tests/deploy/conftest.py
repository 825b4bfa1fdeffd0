"""Paths and loaders shared by the deployment tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from relay.config import Config, parse_config
from relay.policy.compile import validate_policies

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
KUBERNETES = DEPLOY / "kubernetes"


def valid_config(data: Any, env: dict[str, str]) -> Config:
    """Parse like `relay check-config` does: shapes, then every policy section."""
    config = parse_config(data, env=env, source="test")
    problems = validate_policies(config)
    assert problems == [], [str(p) for p in problems]
    return config


def k8s_documents() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(KUBERNETES.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                doc["__file__"] = path.name
                docs.append(doc)
    return docs
