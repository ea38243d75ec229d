"""Kafka -> PVA: serve a topic (or one partition / one consumer set) as an NTNDArray channel.

The reverse of the bridge, so ``pvget``, ImageJ/CSS viewers or any PvaPy client can watch any
stage of a pipeline. Frames are rebuilt with :func:`pvaflow.ntnda.ntnda_from_frame`, so a
native-format topic is served exactly as the source served it (values, dimensions, timestamps,
attributes, codec). The mirror reads without a consumer group: it never takes partitions from
the processors.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pvaccess as pva
from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, TopicPartition
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from pvaflow import codec
from pvaflow.codec import FrameError
from pvaflow.kafka.settings import consumer_config
from pvaflow.ntnda import ntnda_from_frame

from . import ad00

log = logging.getLogger(__name__)

OFFSETS = {"earliest": OFFSET_BEGINNING, "latest": OFFSET_END}


@dataclass
class MirrorStats:
    received: int = 0
    served: int = 0
    invalid: int = 0
    last_id: int | None = None
    errors: list[str] = field(default_factory=list)

    def snapshot(self) -> dict[str, Any]:
        return {"received": self.received, "served": self.served, "invalid": self.invalid,
                "last_id": self.last_id}


class MirrorCollector(Collector):
    """Prometheus view of :class:`MirrorStats`, read at scrape time (nothing per frame)."""

    def __init__(self, stats: MirrorStats, topic: str, channel: str) -> None:
        self._stats, self._labels = stats, ["mirror", topic, channel]

    def collect(self) -> Iterator[Metric]:
        for name, doc in (("received", "records read from Kafka"),
                          ("served", "frames published on the PVA channel"),
                          ("invalid", "records that were not frames (skipped, logged)")):
            m = CounterMetricFamily(f"pvaflow_mirror_frames_{name}", doc,
                                    labels=["component", "topic", "channel"])
            m.add_metric(self._labels, getattr(self._stats, name))
            yield m


class Mirror:
    def __init__(
        self,
        topic: str,
        channel: str,
        *,
        bootstrap: str | None = None,
        overrides: Any = None,
        partition: int | None = None,
        offset: str = "latest",
    ) -> None:
        if offset not in OFFSETS:
            raise ValueError(f"offset must be one of {', '.join(OFFSETS)}, got {offset!r}")
        self.topic = topic
        self.channel = channel
        self.stats = MirrorStats()
        self._consumer = Consumer(consumer_config(
            f"pvaflow-mirror-{channel}", bootstrap, overrides, queued_max_messages_kbytes=65536))
        md = self._consumer.list_topics(topic, timeout=15).topics.get(topic)
        if md is None or md.error is not None or not md.partitions:
            raise ValueError(f"topic {topic!r} does not exist")
        parts = sorted(md.partitions)
        if partition is not None:
            if partition not in parts:
                raise ValueError(f"topic {topic!r} has no partition {partition} "
                                 f"(it has {len(parts)})")
            parts = [partition]
        self._consumer.assign([TopicPartition(topic, p, OFFSETS[offset]) for p in parts])
        self._server = pva.PvaServer()
        self._server.addRecord(channel, pva.NtNdArray())
        log.info("serving %s[%s] as PVA channel %s (from %s)", topic,
                 ",".join(map(str, parts)), channel, offset)

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            msg = self._consumer.poll(0.2)
            if msg is None:
                continue
            if msg.error() is not None:
                log.warning("consumer error: %s", msg.error())
                continue
            self.serve_record(msg.key(), msg.value(), msg.headers())

    def serve_record(self, key: bytes | None, value: bytes | None, headers: Any) -> None:
        self.stats.received += 1
        try:
            if ad00.is_ad00(value) and codec.header(headers, "pf.v") is None:
                frame = ad00.decode(value or b"")
            else:
                frame = codec.decode(key, value, headers)
            nt = ntnda_from_frame(frame)
        except FrameError as exc:
            self.stats.invalid += 1
            if self.stats.invalid <= 10:
                log.error("cannot serve a record of %s: %s", self.topic, exc)
            return
        self._server.update(self.channel, nt)
        self.stats.served += 1
        self.stats.last_id = frame.unique_id

    def close(self) -> None:
        self._consumer.close()
        self._server.stop()
