"""Topic creation and checks, shared by every component that owns a topic.

Replication of the topics pvaflow creates (``--replication-factor``, ``--min-insync-replicas``,
see :class:`Replication`):

* replication factor: default ``-1``, the broker's ``default.replication.factor`` (1 on a
  single development broker, 3 on a production-like cluster), so the same command line works
  on both; an explicit ``N`` larger than the number of brokers is refused in one line.
* ``min.insync.replicas`` (set on each topic pvaflow creates): default ``0`` = automatic,
  ``2`` when the replication factor (given, or the broker default it resolves to) is 3 or
  more, else ``1``. With the producers' ``acks=all`` (see
  :data:`pvaflow.kafka.settings.PRODUCER_DEFAULTS`) a record is acknowledged only once that
  many replicas hold it, so losing any one broker of 3 loses no acknowledged record and the
  topic still accepts writes. A value above the replication factor is refused (no write
  could ever be acknowledged).

Topics that already exist are used as they are (their replication is the operator's call).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from ..errors import TopicError
from .client import Kafka
from .settings import admin_config

log = logging.getLogger(__name__)

Record = tuple[bytes | None, bytes | None]

MIN_ISR = "min.insync.replicas"

# A topic just created, not yet known to this client or to the broker it asked.
# A new partition on a cluster: unknown to the broker asked, or its leader not elected or
# not yet known there (NOT_LEADER_FOR_PARTITION broke a bridge's start on 3 brokers).
_NOT_YET = frozenset({KafkaError._UNKNOWN_PARTITION, KafkaError._UNKNOWN_TOPIC,
                      KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError.NOT_LEADER_FOR_PARTITION,
                      KafkaError.LEADER_NOT_AVAILABLE})


@dataclass(frozen=True)
class Replication:
    """How the topics a command creates are replicated. ``factor`` -1 is the broker's
    default; ``min_insync`` 0 is automatic (2 from a factor of 3 up, else 1).

    >>> Replication(3).min_insync_for(3), Replication().min_insync_for(1)
    (2, 1)
    """

    factor: int = -1
    min_insync: int = 0

    @classmethod
    def from_args(cls, args: Any) -> Replication:
        """From the options :func:`pvaflow.options.add_kafka_args` added."""
        return cls(getattr(args, "replication_factor", -1),
                   getattr(args, "min_insync_replicas", 0))

    def min_insync_for(self, factor: int) -> int:
        """``min.insync.replicas`` for a topic replicated ``factor`` times."""
        if self.min_insync > 0:
            return self.min_insync
        return 2 if factor >= 3 else 1

    def resolve(self, admin: AdminClient) -> tuple[int, int | None]:
        """(replication factor to ask for, ``min.insync.replicas`` to set, or None to leave
        the broker's when its default replication cannot be read)."""
        factor = self.factor if self.factor > 0 else broker_default_replication(admin)
        if factor is None:
            return self.factor, (self.min_insync or None)
        isr = self.min_insync_for(factor)
        if isr > factor:
            raise TopicError(
                f"--min-insync-replicas {isr} is more than the replication factor {factor}: "
                "no write could ever be acknowledged",
                hint="lower --min-insync-replicas or raise --replication-factor")
        return self.factor, isr


def broker_default_replication(admin: AdminClient, timeout: float = 15.0) -> int | None:
    """The cluster's ``default.replication.factor`` (read from one broker), or None when it
    cannot be read (e.g. no DescribeConfigs permission)."""
    try:
        brokers = list(admin.list_topics(timeout=timeout).brokers)
        if not brokers:
            return None
        res = ConfigResource(ConfigResource.Type.BROKER, str(min(brokers)))
        configs = admin.describe_configs([res], request_timeout=timeout)[res].result(timeout)
        entry = configs.get("default.replication.factor")
        return int(entry.value) if entry is not None and entry.value is not None else None
    except (KafkaException, ValueError) as exc:
        log.debug("cannot read default.replication.factor: %s", exc)
        return None


def ensure_topic(
    name: str,
    partitions: int = 1,
    *,
    bootstrap: str | None = None,
    overrides: Any = None,
    config: Mapping[str, str] | None = None,
    strict: bool = True,
    admin: AdminClient | None = None,
    replication: Replication | None = None,
) -> int:
    """Create ``name`` with ``partitions`` if missing; returns its partition count.

    With ``strict`` an existing topic with another count is refused: the distributor plan
    depends on the count, and silently reusing a different one would misroute frames.
    A new topic is replicated as ``replication`` says (default: :class:`Replication()`, the
    broker's replication factor with an automatic ``min.insync.replicas``); a
    ``min.insync.replicas`` in ``config`` wins.
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
    factor, isr = (replication or Replication()).resolve(admin)
    conf = dict(config or {})
    if isr is not None:
        conf.setdefault(MIN_ISR, str(isr))
    new = NewTopic(name, partitions, replication_factor=factor, config=conf)
    fut = admin.create_topics([new])[name]
    try:
        fut.result()
    except KafkaException as exc:
        code = exc.args[0].code()
        if code == KafkaError.INVALID_REPLICATION_FACTOR:
            raise TopicError(
                f"cannot create topic {name!r} replicated {factor} times: "
                f"{exc.args[0].str()}",
                hint="lower --replication-factor (or -1 for the broker's default)") from None
        if code != KafkaError.TOPIC_ALREADY_EXISTS:
            raise
    return partitions


def watermarks(consumer: Consumer, topic: str, timeout: float = 10.0) -> tuple[int, int]:
    """(low, high) watermarks of partition 0. A topic another component has only just
    created can be unknown to this client's metadata for a moment (two consumers started
    together crashed on it), and on a cluster to the broker asked, until the controller's
    metadata reaches it and its leader is known (bridges crashed on both at start on 3
    brokers), so those errors are retried until ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            low, high = consumer.get_watermark_offsets(
                TopicPartition(topic, 0), timeout=max(0.1, deadline - time.monotonic()),
                cached=False)
            return int(low), int(high)
        except KafkaException as exc:
            if exc.args[0].code() not in _NOT_YET or time.monotonic() > deadline:
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
        # "The end" is the high watermark when the read starts: a topic that components
        # append to several times a second may never show librdkafka's end-of-partition
        # event (each fetch brings the next records), and the read would never end.
        low, high = watermarks(consumer, topic, timeout)
        if high <= low:
            return [], True
        start = low if tail is None else max(low, high - tail)
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
            if (msg.offset() or 0) + 1 >= high:  # (a transaction marker last: EOF ends it)
                return records, True
        return records, False
    finally:
        consumer.close()
