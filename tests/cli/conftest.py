"""Relay processes started by a test are killed after it, whatever happened."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.process import RelayProcess


@pytest.fixture
def processes() -> Iterator[list[RelayProcess]]:
    started: list[RelayProcess] = []
    yield started
    for proc in started:
        proc.kill()
