"""One compiled policy, two threads: the event loop and the offload thread scrub at once.

The policy's caches are shared. Their values depend only on their keys, so a race may
cost a recomputation, never a wrong result; what must not happen is an exception from
a cache being changed under a walk.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from relay.processing.scrub import compile_scrubber, schema, walker
from relay.protocol.envelope import parse_envelope
from tests.support.corpus import CORPUS


class _AddsANodePlan(dict[str, Any]):
    """A `plans` dict whose `clear` stands for the other thread meeting a new schema node."""

    def __init__(self, policy: walker.Policy, node: Any) -> None:
        super().__init__()
        self.policy = policy
        self.node = node

    def clear(self) -> None:
        super().clear()
        self.policy.node_plan(self.node)


def test_the_plan_reset_survives_a_node_plan_added_meanwhile() -> None:
    scrubber = compile_scrubber(None)
    policy = scrubber.policy
    scrubber.scrub_event({"extra": {"a": 1}, "user": {"id": "1"}}, "event", report=False)
    first = next(iter(policy._node_plans.values()))
    # A node no walk has met yet: `node_plan` adds it to `_node_plans` during the reset.
    unseen = schema.Node()
    first.plans = _AddsANodePlan(policy, unseen)
    many = {f"k{i}": 1 for i in range(walker._MAX_KEY_CACHE + 10)}
    out = {"extra": many}
    scrubber.scrub_event(out, "event", report=False)  # plans every key: the reset runs
    assert unseen in policy._node_plans
    assert len(out["extra"]) == len(many)


@pytest.fixture
def fast_switching() -> Iterator[None]:
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    yield
    sys.setswitchinterval(before)


def _scrubbed(scrubber: Any, data: bytes) -> bytes:
    envelope = parse_envelope(data)
    for item in envelope.items:
        if item.payload[:1] == b"{" and item.type in ("event", "transaction"):
            event = orjson.loads(item.payload)
            scrubber.scrub_event(event, item.type, report=False)
            item.set_payload(orjson.dumps(event))
    scrubber.scrub_envelope(envelope, report=False)
    return envelope.serialize()


def test_two_threads_scrub_the_corpus_as_one_does(fast_switching: None) -> None:
    corpus = [p.read_bytes() for p in sorted(CORPUS.glob("*.envelope"))]
    expected = [_scrubbed(compile_scrubber(None), data) for data in corpus]
    for _ in range(3):
        shared = compile_scrubber(None)  # cold caches: both threads fill them at once
        got: dict[int, list[bytes]] = {}
        errors: list[BaseException] = []
        start = threading.Barrier(2)

        def run(
            n: int, shared: Any = shared, got: Any = got, errors: Any = errors, start: Any = start
        ) -> None:
            start.wait()
            try:
                order = corpus if n == 0 else corpus[::-1]
                out = [_scrubbed(shared, data) for data in order]
                got[n] = out if n == 0 else out[::-1]
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(n,)) for n in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        assert got[0] == expected and got[1] == expected
