"""Poison records never stop a partition.

Random bytes, truncated frames and 12 MiB records go into a consumer's input between good
frames. Every poison record ends up in the dead-letter topic with its reason; a value the
DLQ topic cannot hold (its ``max.message.bytes`` is smaller than the record) is dead-lettered
as a reference (headers, ``pf.dlq.size``, ``pf.dlq.origin``, no value) instead of failing the
consumer. The good frames come out exactly once, and the consumer's counters add up:
received = processed + dlq, no sequence gaps.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.faults._records import MiB, final_stats, good, junk, produce, truncated
from tests.processors.conftest import Proc, consumer, read_exactly, run_proc  # noqa: F401

pytestmark = pytest.mark.integration

BIG = 12 * MiB


def test_poison_records_are_dead_lettered_and_the_partition_goes_on(
        kafka_bootstrap: str, make_topic: Callable[..., str],
        consumer: Callable[..., Proc]) -> None:  # noqa: F811
    src = make_topic(suffix="in", config={"max.message.bytes": str(16 * MiB)})
    out = make_topic(suffix="out")
    dlq = make_topic(suffix="dlq", config={"max.message.bytes": str(MiB)})
    records, poison, uid, seq = [], [], 1, 0
    for kind in ("junk", "big-junk", "truncated", "big-truncated", "junk", "truncated"):
        for _ in range(5):
            records.append(good(uid, seq))
            uid, seq = uid + 1, seq + 1
        if kind == "junk":
            rec = junk(100)
        elif kind == "big-junk":
            rec = junk(BIG)
        elif kind == "truncated":
            rec = truncated(uid, seq)
            uid, seq = uid + 1, seq + 1
        else:  # a 12 MiB frame whose value lost its last byte
            key, value, headers = good(uid, seq, (BIG // 1024 + 1, 1024))
            rec = (key, value[:BIG], headers)
            uid, seq = uid + 1, seq + 1
        records.append(rec)
        poison.append((kind, len(rec[1])))
    for _ in range(5):
        records.append(good(uid, seq))
        uid, seq = uid + 1, seq + 1
    produce(kafka_bootstrap, src, records)
    n_good = len(records) - len(poison)

    c = consumer("--input-topic", src, "--output-topic", out, "--dlq-topic", dlq,
                 "--processor", "passthrough", "--runtime", "120", "--report-period", "1")
    outputs = read_exactly(kafka_bootstrap, out, n_good)
    dead = read_exactly(kafka_bootstrap, dlq, len(poison))
    assert c.popen.poll() is None, f"the consumer stopped:\n{c.text()[-3000:]}"
    assert c.stop() == 0, c.text()[-3000:]

    assert len({r.uid for r in outputs}) == n_good  # each good frame once
    for r, (kind, size) in zip(sorted(dead, key=lambda r: r.offset), poison, strict=True):
        h = r.headers
        assert h["pf.dlq.stage"] == b"decode" and h["pf.dlq.reason"], kind
        assert h["pf.dlq.origin"].startswith(f"{src}/0/".encode())
        assert int(h["pf.dlq.size"]) == size
        if size > MiB:  # the copy would not fit: a reference, no value
            assert r.value == b"" and h["pf.dlq.copy"] == b"reference", kind
            assert b"max.message.bytes" in h["pf.dlq.omitted"]
        else:
            assert len(r.value) == size and h["pf.dlq.copy"] == b"value", kind
    stats = final_stats(c.text())
    assert stats["received"] == len(records)
    assert stats["processed"] == n_good and stats["dlq"] == len(poison)
    assert stats["received"] == stats["processed"] + stats["dlq"]
    assert stats["decode_errors"] == len(poison)
    assert stats["sequence_gaps"] == 0
