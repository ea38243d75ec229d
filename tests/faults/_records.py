"""Shared bits of the fault tests: a frame feeder that numbers ``pf.seq`` explicitly (so a
test decides which records never arrive), poison records, and the consumer's final stats."""

from __future__ import annotations

import ast
import os
from collections.abc import Iterable
from typing import Any, cast

from confluent_kafka import Producer

from pvaflow.codec import encode
from pvaflow.testing import make_frames

MiB = 1 << 20
BIG = 32 * MiB + MiB  # client limit for writing 12 MiB records


def good(uid: int, seq: int, shape: tuple[int, int] = (8, 8)) -> tuple[bytes, bytes, list]:
    [frame] = make_frames(1, shape, first_id=uid)
    key, value, headers = encode(frame, sequence=seq)
    return key, bytes(value), headers


def truncated(uid: int, seq: int, shape: tuple[int, int] = (8, 8),
              keep: int = 10) -> tuple[bytes, bytes, list]:
    """A frame whose headers are intact and whose value lost all but ``keep`` bytes."""
    key, value, headers = good(uid, seq, shape)
    return key, value[:keep], headers


def junk(size: int) -> tuple[None, bytes, list]:
    return None, os.urandom(size), []


def produce(bootstrap: str, topic: str, records: Iterable[tuple[Any, bytes, list]],
            partition: int = 0) -> int:
    p = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True,
                  "message.max.bytes": BIG, "linger.ms": 0})
    n = 0
    for key, value, headers in records:
        p.produce(topic, value, key, headers=headers, partition=partition)
        p.poll(0)
        n += 1
    assert p.flush(60) == 0
    return n


def final_stats(log: str) -> dict[str, Any]:
    """The consumer's final report (the last pprint-ed dict, ``'final': True``)."""
    start = log.rfind("\n{'consumer_id'")
    end = log.find("'final': True}", start)
    assert start >= 0 and end > start, f"no final report in:\n{log[-3000:]}"
    return cast(dict[str, Any], ast.literal_eval(log[start + 1:end + len("'final': True}")]))
