"""Queued entries are pointed at the upstream of the config in force when they leave."""

from __future__ import annotations

import gzip
from typing import Any

import orjson

from relay.config import parse_config
from relay.policy.registry import Denied, PolicyRegistry, RegistryRef
from relay.protocol.envelope import parse_envelope
from relay.services.outbox import OutboxEntry
from relay.services.retarget import Retarget

APP = "abc123def4567890abc123def4567890"
UP = "f" * 32
UPSTREAM_DSN = f"https://{UP}@new.example.com/77"


def registry(**project: Any) -> RegistryRef:
    config = parse_config(
        {"upstream": {"url": "https://old.example.com"}, "projects": [{"id": 42, **project}]},
        env={},
    )
    return RegistryRef(PolicyRegistry(config))


def entry(ref: RegistryRef, *, gzipped: bool = False, app_key: str = APP) -> OutboxEntry:
    project = ref.current.resolve(42, APP)
    assert not isinstance(project, Denied)
    target = project.target(APP)
    head = {"event_id": "1" * 32, "dsn": str(target.dsn), "trace": {"public_key": APP}}
    body = orjson.dumps(head) + b'\n{"type":"event"}\n{"message":"m"}\n'
    return OutboxEntry(
        target=target,
        body=gzip.compress(body) if gzipped else body,
        project_id=42,
        quantities=[("error", 1)],
        encoding="gzip" if gzipped else "",
        app_key=app_key,
    )


def test_moved_to_an_upstream_dsn_takes_its_key_and_headers() -> None:
    ref = registry(keys=[APP])
    queued = entry(ref, gzipped=True)
    ref.current = registry(keys=[APP], upstream_dsn=UPSTREAM_DSN).current
    Retarget(ref)(queued)
    assert queued.target.url == "https://new.example.com/api/77/envelope/"
    assert queued.encoding == ""
    envelope = parse_envelope(queued.body)
    assert envelope.headers["dsn"] == UPSTREAM_DSN
    assert envelope.headers["trace"]["public_key"] == UP


def test_moved_back_restores_the_app_key() -> None:
    ref = registry(keys=[APP], upstream_dsn=UPSTREAM_DSN)
    queued = entry(ref)
    queued_env = parse_envelope(queued.body)
    queued_env.set_header("trace", {"public_key": UP})  # as route_to left it
    queued.body = queued_env.serialize()
    ref.current = registry(keys=[APP]).current
    Retarget(ref)(queued)
    assert queued.target.url == "https://old.example.com/api/42/envelope/"
    envelope = parse_envelope(queued.body)
    assert envelope.headers["trace"]["public_key"] == APP
    assert envelope.headers["dsn"].startswith(f"https://{APP}@old.example.com")


def test_unchanged_removed_or_keyless_entries_keep_their_target() -> None:
    ref = registry(keys=[APP])
    same = entry(ref, gzipped=True)
    body = same.body
    Retarget(ref)(same)
    assert (same.body, same.encoding) == (body, "gzip")  # untouched, still compressed

    shadow = entry(ref, app_key="")
    ref.current = registry(keys=[APP], upstream_dsn=UPSTREAM_DSN).current
    before = shadow.target
    Retarget(ref)(shadow)
    assert shadow.target == before

    gone = entry(registry(keys=[APP]))
    ref.current = registry(keys=["0" * 32]).current  # the app key is no longer allowed
    before = gone.target
    Retarget(ref)(gone)
    assert gone.target == before
