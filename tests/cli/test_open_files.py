"""The open files limit: raised at start to the hard limit, with a warning when still low."""

from __future__ import annotations

import asyncio
import logging
import resource
from pathlib import Path

import pytest

from relay import rlimit
from tests.support.process import RelayProcess


def config(upstream_url: str) -> dict[str, object]:
    return {"upstream": {"url": upstream_url}, "projects": [{"id": 42, "keys": ["a" * 32]}]}


async def test_the_relay_raises_a_low_soft_limit_to_the_hard_one(
    tmp_path: Path, upstream_url: str, processes: list[RelayProcess]
) -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    assert hard > 512
    relay = RelayProcess(tmp_path, config(upstream_url), open_files=(512, 0))
    processes.append(relay)
    await asyncio.to_thread(relay.start)
    raised = min(hard, rlimit.MAX_OPEN_FILES)
    assert relay.open_files_limit() == (raised, hard)
    assert f"open files limit raised from 512 to {raised}" in relay.log.read_text()
    assert "the open files limit is" not in relay.log.read_text()


async def test_a_low_hard_limit_is_raised_to_and_warned_about(
    tmp_path: Path, upstream_url: str, processes: list[RelayProcess]
) -> None:
    relay = RelayProcess(tmp_path, config(upstream_url), open_files=(256, 1024))
    processes.append(relay)
    await asyncio.to_thread(relay.start)
    assert relay.open_files_limit() == (1024, 1024)
    log = relay.log.read_text()
    assert "open files limit raised from 256 to 1024" in log
    assert "the open files limit is 1024" in log and "ulimit -n" in log


def test_a_refused_raise_is_logged_and_the_limit_kept(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(rlimit.resource, "getrlimit", lambda _: (256, 65536))

    def refuse(*_: object) -> None:
        raise ValueError("not allowed")

    monkeypatch.setattr(rlimit.resource, "setrlimit", refuse)
    with caplog.at_level(logging.INFO, logger="relay"):
        assert rlimit.raise_open_files_limit() == 256
    assert "could not raise the open files limit from 256: not allowed" in caplog.text
    assert "the open files limit is 256" in caplog.text


def test_a_high_enough_limit_is_left_alone(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[object] = []
    monkeypatch.setattr(rlimit.resource, "getrlimit", lambda _: (65536, 65536))
    monkeypatch.setattr(rlimit.resource, "setrlimit", lambda *a: calls.append(a))
    with caplog.at_level(logging.INFO, logger="relay"):
        assert rlimit.raise_open_files_limit() == 65536
    assert calls == [] and caplog.text == ""


def test_an_unlimited_hard_limit_means_the_kernels_ceiling(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[tuple[int, int]] = []
    infinity = resource.RLIM_INFINITY
    monkeypatch.setattr(rlimit.resource, "getrlimit", lambda _: (1024, infinity))
    monkeypatch.setattr(rlimit.resource, "setrlimit", lambda _, limits: calls.append(limits))
    ceiling = min(int(Path("/proc/sys/fs/nr_open").read_text()), rlimit.MAX_OPEN_FILES)
    assert rlimit.raise_open_files_limit() == ceiling
    assert calls == [(ceiling, infinity)]


def test_a_huge_hard_limit_is_used_up_to_a_million(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, int]] = []
    monkeypatch.setattr(rlimit.resource, "getrlimit", lambda _: (1024, 1 << 30))
    monkeypatch.setattr(rlimit.resource, "setrlimit", lambda _, limits: calls.append(limits))
    assert rlimit.raise_open_files_limit() == 1 << 20
    assert calls == [(1 << 20, 1 << 30)]
