"""Real-Kafka helpers for the collector tests: feed frames, read a topic, run CLIs."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from pvaflow import codec
from pvaflow.frame import Frame
from tests.procs import BIN, Proc, wait_for

__all__ = ["BIN", "Proc", "wait_for"]  # the collector tests import them from here

PLUGIN = str(Path(__file__).with_name("jitter_plugin.py"))
FAILING = str(Path(__file__).with_name("failing_plugin.py"))


def produce_frames(bootstrap: str, topic: str, ids: Iterable[int], partitions: int = 1,
                   shape: tuple[int, ...] = (8, 8)) -> int:
    """Frames with uniqueId ``i`` to partition ``(i - 1) % partitions`` (the bridge's plan)."""
    # idempotent: without it a retried first batch can land behind later ones, out of order
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "enable.idempotence": True})
    n = 0
    for i in ids:
        f = Frame(np.full(shape, i % 251, np.uint8), unique_id=i)
        codec.produce(p, topic, f, partition=(i - 1) % partitions)
        n += 1
        p.poll(0)
    p.flush(30)
    return n


def read_records(bootstrap: str, topic: str, until: Callable[[list[Any]], bool] | None = None,
                 timeout: float = 30.0, partitions: int = 1) -> list[Any]:
    """Every committed record of ``topic`` (all partitions) until ``until(records)`` or the end
    (nothing new for 2 s), at most ``timeout`` s."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "reader",
                  "isolation.level": "read_committed", "enable.auto.commit": False})
    c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    out: list[Any] = []
    deadline = time.monotonic() + timeout
    quiet = time.monotonic() + 5.0
    try:
        while time.monotonic() < deadline:
            m = c.poll(0.2)
            if m is None:
                if until is None and time.monotonic() > quiet:
                    break
                continue
            if m.error():
                if m.error().code() != KafkaError._PARTITION_EOF:
                    raise RuntimeError(str(m.error()))
                continue
            out.append(m)
            quiet = time.monotonic() + 2.0
            if until is not None and until(out):
                break
    finally:
        c.close()
    return out


def ids_of(records: list[Any]) -> list[int]:
    return [codec.decode_key(m.key()) for m in records]


@pytest.fixture
def procs(tmp_path: Path, kafka_bootstrap: str) -> Iterator[Callable[..., Proc]]:
    """Start pvaflow commands as subprocesses; all are stopped by pid at teardown."""
    started: list[Proc] = []

    def start(name: str, *args: str) -> Proc:
        p = Proc([BIN / args[0], *args[1:]], tmp_path / f"{name}.log",
                 {**os.environ, "PVAFLOW_BOOTSTRAP": kafka_bootstrap})
        started.append(p)
        return p

    start.started = started  # type: ignore[attr-defined]
    yield start
    for p in reversed(started):
        p.stop()


@pytest.fixture
def ctl() -> list[str]:
    """``--control-topic``/``--status-topic`` options private to this test."""
    tag = uuid.uuid4().hex[:8]
    return ["--control-topic", f"t-ctl-{tag}", "--status-topic", f"t-status-{tag}"]
