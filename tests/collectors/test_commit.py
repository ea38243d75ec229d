"""The collector's transaction commit when the cluster does not answer (no server: a
producer whose commit times out, to drive the retry rule itself)."""

from __future__ import annotations

from typing import cast

import pytest
from confluent_kafka import KafkaError, KafkaException, Producer
from pvaflow.collectors.runner import Collector, CollectorConfig

from pvaflow.component import Context
from pvaflow.kafka.client import Kafka


class TimingOut:
    """commit_transaction fails as librdkafka's does while no broker answers."""

    def __init__(self, retriable: bool = True) -> None:
        self.retriable = retriable
        self.calls = 0

    def commit_transaction(self, timeout: float) -> None:
        self.calls += 1
        raise KafkaException(KafkaError(KafkaError._TIMED_OUT, "timed out",
                                        retriable=self.retriable))


def collector(producer: TimingOut, stopped: bool) -> Collector:
    col = Collector(CollectorConfig(["in"]))
    col._ctx = Context(kafka=cast(Kafka, None))
    if stopped:
        col._ctx.stop.set()
    col.producer = cast(Producer, producer)
    return col


def test_a_stop_while_the_commit_times_out_leaves_the_transaction_open() -> None:
    """A commit that started just before the outage was noticed, then a stop: the run ends
    without waiting for the cluster and without an error (the next instance aborts the open
    transaction and resumes from the last commit)."""
    producer = TimingOut()
    assert collector(producer, stopped=True)._commit_transaction() is False
    assert producer.calls == 1


def test_a_commit_failure_kafka_cannot_retry_is_raised() -> None:
    producer = TimingOut(retriable=False)
    with pytest.raises(KafkaException):
        collector(producer, stopped=False)._commit_transaction()
    assert producer.calls == 1
