"""``take``: a batch that does not wait to fill (the per-stage latency at low rates)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

from confluent_kafka import Consumer, Producer, TopicPartition

from pvaflow.kafka.consume import take

WAIT = 30.0  # what a plain consume(32, WAIT) would sit out with fewer than 32 records there


def test_take_returns_what_is_there_without_waiting_for_a_full_batch(
        kafka_bootstrap: str, make_topic: Callable[..., str]) -> None:
    topic = make_topic()
    p = Producer({"bootstrap.servers": kafka_bootstrap})
    for i in range(3):
        p.produce(topic, str(i).encode())
    assert p.flush(30) == 0
    c = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": f"take-{uuid.uuid4()}",
                  "enable.auto.commit": False})
    try:
        c.assign([TopicPartition(topic, 0, 0)])
        got: list[bytes] = []
        t0 = time.monotonic()
        while len(got) < 3 and time.monotonic() - t0 < WAIT:
            got += [m.value() for m in take(c, 32, WAIT) if m.error() is None]
        # the records came in (at most three calls), none of them sat out the timeout
        assert got == [b"0", b"1", b"2"]
        assert time.monotonic() - t0 < WAIT
        t1 = time.monotonic()
        assert take(c, 32, 0.5) == []  # nothing more: an empty batch after the timeout
        assert time.monotonic() - t1 >= 0.4
    finally:
        c.close()
