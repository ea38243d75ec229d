"""Topic creation and checks, shared by every component that owns a topic."""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from ..errors import TopicError
from .client import Kafka
from .settings import admin_config

Record = tuple[bytes | None, bytes | None]




def ensure_topic(
    name: str,
    partitions: int = 1,
    *,
    bootstrap: str | None = None,
    overrides: Any = None,
    config: Mapping[str, str] | None = None,
    strict: bool = True,
    admin: AdminClient | None = None,
) -> int:
    """Create ``name`` with ``partitions`` if missing; returns its partition count.

    With ``strict`` an existing topic with another count is refused: the distributor plan
    depends on the count, and silently reusing a different one would misroute frames.
    """
    if admin is None:  # an AdminClient with an empty queue is falsy: test identity
        admin = AdminClient(admin_config(bootstrap, overrides))
    # Ask for all topics: a metadata request naming a missing topic lets a broker with
    # auto.create.topics.enable (the default) create it with its default partition count.
    meta = admin.list_topics(timeout=15)
    existing = meta.topics.get(name)
    if existing is not None and existing.error is None:
        count = len(existing.partitions)
        if strict and count != partitions:
            raise TopicError(
                f"topic {name!r} exists with {count} partitions, not {partitions}: "
                f"use --partitions {count} or another --topic"
            )
        return count
    new = NewTopic(name, partitions, replication_factor=-1, config=dict(config or {}))
    fut = admin.create_topics([new])[name]
    try:
        fut.result()
    except KafkaException as exc:
        if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
            raise
    return partitions


def watermarks(consumer: Consumer, topic: str, timeout: float = 10.0) -> tuple[int, int]:
    """(low, high) watermarks of partition 0. A topic another component has only just
    created can be unknown to this client's metadata for a moment (two consumers started
    together crashed on it), so that error is retried until ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            low, high = consumer.get_watermark_offsets(
                TopicPartition(topic, 0), timeout=max(0.1, deadline - time.monotonic()),
                cached=False)
            return int(low), int(high)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError._UNKNOWN_PARTITION or \
                    time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def read_partition(
    topic: str,
    kafka: Kafka,
    *,
    tail: int | None = None,
    read_committed: bool = False,
    timeout: float = 15.0,
) -> tuple[list[Record], bool]:
    """(key, value) of every record of partition 0 up to its end (the last ``tail`` only, when
    given), and whether the end was reached before ``timeout``. For the small single-partition
    state and status topics; a read error raises KafkaException."""
    extra: dict[str, Any] = {"enable.partition.eof": True}
    if read_committed:
        extra["isolation.level"] = "read_committed"
    consumer = kafka.consumer(f"pvaflow-reader-{uuid.uuid4().hex[:8]}", **extra)
    try:
        start = OFFSET_BEGINNING
        if tail is not None:
            low, high = watermarks(consumer, topic, timeout)
            if high <= low:
                return [], True
            start = max(low, high - tail)
        consumer.assign([TopicPartition(topic, 0, start)])
        records: list[Record] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    return records, True
                raise KafkaException(err)
            records.append((msg.key(), msg.value()))
        return records, False
    finally:
        consumer.close()
