"""Helpers for the fault suite: pvaflow commands as subprocesses (output in a log file, every
one stopped by pid at teardown), the final status each component publishes, and topic readers.

Every wait is on a condition with a generous bound: the suite runs on small shared machines,
here beside three broker JVMs.
"""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaError, TopicPartition

from pvaflow import codec
from pvaflow.kafka.client import Kafka
from pvaflow.kafka.topics import read_partition
from tests.procs import BIN, Proc, wait_for

__all__ = ["BIN", "Proc", "wait_for"]  # the fault tests import them from here


@pytest.fixture
def run(tmp_path: Path, pva_env: dict[str, str]) -> Iterator[Callable[..., Proc]]:
    """``run(name, command, *args, env=None)`` starts ``<venv>/bin/command args``; every
    process is stopped by pid (and process group) at teardown."""
    started: list[Proc] = []

    def start(name: str, *args: str, env: Mapping[str, str] | None = None) -> Proc:
        full = {**os.environ, **pva_env, "PYTHONUNBUFFERED": "1", **(env or {})}
        p = Proc([BIN / args[0], *args[1:]], tmp_path / f"{name}.log", full)
        started.append(p)
        return p

    yield start
    for p in reversed(started):
        p.stop(30)


@pytest.fixture
def tag() -> str:
    return uuid.uuid4().hex[:8]


def final_statuses(status_topic: str, bootstrap: str,
                   overrides: Mapping[str, str] | None = None) -> dict[str, dict[str, Any]]:
    """The last ``final`` status message of every component on ``status_topic``, by
    component ("kind/group/id")."""
    records, _ = read_partition(status_topic, Kafka(bootstrap, overrides), timeout=30)
    out: dict[str, dict[str, Any]] = {}
    for _key, value in records:
        msg = json.loads(value or b"{}")
        if msg.get("type") == "status" and msg.get("final"):
            out[msg["component"]] = msg
    return out


def read_uids(bootstrap: str, topic: str, partitions: int, *,
              overrides: Mapping[str, str] | None = None, timeout: float = 120.0,
              until: Callable[[list[int]], bool] | None = None) -> list[int]:
    """The uniqueId (record key) of every committed record of ``topic``, in log order per
    partition, read to the end of every partition (or until ``until(ids)``)."""
    c = Consumer({**(overrides or {}), "bootstrap.servers": bootstrap,
                  "group.id": f"reader-{uuid.uuid4().hex[:8]}",
                  "isolation.level": "read_committed", "enable.auto.commit": False,
                  "enable.partition.eof": True, "log_level": 0})
    ids: list[int] = []
    at_end: set[int] = set()
    try:
        c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(at_end) < partitions:
            m = c.poll(0.5)
            if m is None:
                continue
            err = m.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    at_end.add(m.partition() or 0)
                    continue
                if err.retriable() or not err.fatal():
                    continue
                raise RuntimeError(str(err))
            at_end.discard(m.partition() or 0)
            ids.append(codec.decode_key(m.key()))
            if until is not None and until(ids):
                break
    finally:
        c.close()
    return ids


def status_messages(status_topic: str, bootstrap: str, *, tail: int | None = None,
                    overrides: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """Every status message on ``status_topic`` (the last ``tail`` records only, when given),
    in topic order, periodic and final alike."""
    records, _ = read_partition(status_topic, Kafka(bootstrap, overrides), tail=tail,
                                timeout=30)
    out = []
    for _key, value in records:
        msg = json.loads(value or b"{}")
        if isinstance(msg, dict) and msg.get("type") == "status":
            out.append(msg)
    return out


def latest_status(bootstrap: str, status_topic: str, component: str, *,
                  before: float | None = None, tail: int | None = 200,
                  ) -> dict[str, Any] | None:
    """The newest status message of ``component`` ("kind/group/id", or just a kind), published
    before the wall-clock time ``before`` when given: with ``before`` set to when a component
    was killed, the last account its killed run published (it never sends a final one)."""
    newest = None
    for msg in status_messages(status_topic, bootstrap, tail=tail):
        if component not in (msg.get("component"), msg.get("kind")):
            continue
        if before is not None and float(msg.get("time", 0)) >= before:
            continue
        newest = msg
    return newest


def kill_hard(proc: Proc, timeout: float = 30.0) -> int:
    """SIGKILL to ``proc``'s whole process group (no final status, no flush, no commit), and
    wait for it to be gone."""
    proc.signal(signal.SIGKILL)
    return proc.wait(timeout)
