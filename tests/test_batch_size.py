"""A producer's batch size follows its first record's size unless the user chose one.

librdkafka's idempotent producer holds a partition while 5 or more records are in flight;
large frames ten to a 4 MiB request made its broker thread spin (docs/performance.md). The
choice is pure; the replacement of the producer before its first record is shown against a
real broker, records read back."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from confluent_kafka import Consumer

from pvaflow.kafka.client import Kafka
from pvaflow.kafka.produce import Sender
from pvaflow.kafka.settings import LARGE_RECORD, PRODUCER_DEFAULTS, MiB, batch_size_for

DEFAULT = PRODUCER_DEFAULTS["batch.size"]


# -- without a broker ------------------------------------------------------------------------

@pytest.mark.parametrize(("record", "batch"), [
    (16 * 1024, DEFAULT),            # small: the default, filled by linger.ms
    (LARGE_RECORD - 1, DEFAULT),
    (LARGE_RECORD, MiB),             # 4 to a request: still under librdkafka's 5
    (380_000, MiB),                  # bslz4 megapixel frames: 2 to a request
    (1_400_000, 2 * 1_400_000 + 64 * 1024),
    (2 * MiB, DEFAULT),              # raw megapixel: one to a request already
    (8 * MiB, DEFAULT),
])
def test_large_records_go_about_two_to_a_request(record: int, batch: int) -> None:
    assert batch_size_for(record) == batch
    if record >= LARGE_RECORD and batch < DEFAULT:
        assert 2 <= batch // record <= 4


def test_the_users_batch_size_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    conf = Kafka("127.0.0.1:1").producer_config()
    assert Kafka("127.0.0.1:1").resizer(conf) is not None
    chosen = Kafka("127.0.0.1:1", [("batch.size", str(DEFAULT))])
    assert chosen.resizer(chosen.producer_config()) is None
    as_int = Kafka("127.0.0.1:1", {"batch.size": DEFAULT})  # equal to the default, still chosen
    assert as_int.resizer(as_int.producer_config()) is None
    monkeypatch.setenv("PVAFLOW_KAFKA_BATCH_SIZE", str(DEFAULT))
    from_env = Kafka("127.0.0.1:1")
    assert from_env.resizer(from_env.producer_config()) is None


def test_a_transactional_producer_keeps_its_batch_size() -> None:
    kafka = Kafka("127.0.0.1:1")
    assert kafka.resizer(kafka.producer_config(transactional_id="t")) is None


# -- with a broker ---------------------------------------------------------------------------

def _read(bootstrap: str, topic: str, n: int, timeout: float = 90.0) -> list[bytes]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"g-{topic}",
                         "auto.offset.reset": "earliest", "fetch.max.bytes": 64 * MiB})
    consumer.subscribe([topic])
    out: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while len(out) < n and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None:
                out.append(bytes(msg.value() or b""))
    finally:
        consumer.close()
    return out


def _sender(kafka: Kafka) -> tuple[Sender, Any]:
    conf = kafka.producer_config()
    producer = kafka.producer(conf)
    return Sender(producer, stop=threading.Event(), resize=kafka.resizer(conf)), producer


def test_a_large_first_record_gets_a_producer_with_smaller_batches(
    kafka_bootstrap: str, topic: str, caplog: pytest.LogCaptureFixture,
) -> None:
    kafka = Kafka(kafka_bootstrap)
    sender, first = _sender(kafka)
    frames = [bytes([i]) * 380_000 for i in range(6)]
    with caplog.at_level("INFO", logger="pvaflow.kafka.client"):
        for frame in frames:
            assert sender.send(topic, frame)
    assert sender.producer is not first
    assert "records of 380000 bytes: producer batch.size 1048576" in caplog.text
    assert sender.producer.flush(60) == 0
    assert _read(kafka_bootstrap, topic, len(frames)) == frames


def test_small_records_keep_the_producer(kafka_bootstrap: str, topic: str) -> None:
    kafka = Kafka(kafka_bootstrap)
    sender, first = _sender(kafka)
    frames = [bytes([i]) * 16_384 for i in range(3)] + [b"\x07" * 500_000]
    for frame in frames:
        assert sender.send(topic, frame)
    assert sender.producer is first  # decided by the first record, once
    assert first.flush(60) == 0
    assert _read(kafka_bootstrap, topic, len(frames)) == frames
