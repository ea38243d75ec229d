"""Fixtures for the collector's integration tests: processes stopped by pid, private
control/status topics per test (so components of other tests never answer)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .helpers import Proc


@pytest.fixture
def procs(tmp_path: Path, kafka_bootstrap: str) -> Iterator[Callable[..., Proc]]:
    started: list[Proc] = []

    def start(name: str, *args: str) -> Proc:
        p = Proc(name, list(args), tmp_path, env={"PVAFLOW_BOOTSTRAP": kafka_bootstrap})
        started.append(p)
        return p

    yield start
    for p in reversed(started):
        p.stop()


@pytest.fixture
def ctl() -> list[str]:
    """``--control-topic``/``--status-topic`` options private to this test."""
    tag = uuid.uuid4().hex[:8]
    return ["--control-topic", f"t-ctl-{tag}", "--status-topic", f"t-status-{tag}"]
