"""Kafka -> PVA: serve a topic (or one partition / one consumer set) as an NTNDArray channel.

The reverse of the bridge, so ``pvget``, ImageJ/CSS viewers or any PvaPy client can watch any
stage of a pipeline. Frames are rebuilt with :func:`pvaflow.ntnda.ntnda_from_frame`, so a
native-format topic is served exactly as the source served it (values, dimensions, timestamps,
attributes, codec). The mirror reads without a consumer group: it never takes partitions from
the processors.
"""

from __future__ import annotations

import json
import logging
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

import pvaccess as pva
from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, TopicPartition
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from pvaflow import codec
from pvaflow.codec import FrameError
from pvaflow.codecs import Bslz4
from pvaflow.component import TICK, Context
from pvaflow.control import ComponentId
from pvaflow.errors import EXIT_OK, ConfigError, TopicError
from pvaflow.frame import Frame
from pvaflow.kafka.consume import take
from pvaflow.kafka.positions import Positions, ReplaySpec
from pvaflow.ntnda import ntnda_from_frame
from pvaflow.status import StatusSchema

from . import ad00

log = logging.getLogger(__name__)

OFFSETS = {"earliest": OFFSET_BEGINNING, "latest": OFFSET_END}
BATCH = 100  # records per step: a step stays short (TICK) even when a replay is far behind

# How the monitor reads :meth:`MirrorStats.snapshot` (a renamed key fails the schema test).
STATUS_SCHEMA = StatusSchema("mirror", frames_in="received", frames_out="served",
                             lost={"invalid": "invalid"})


@dataclass
class MirrorStats:
    received: int = 0
    served: int = 0
    invalid: int = 0
    last_id: int | None = None

    def snapshot(self) -> dict[str, Any]:
        return {"received": self.received, "served": self.served, "invalid": self.invalid,
                "last_id": self.last_id}

    def reset(self) -> None:
        # in place: the Prometheus collector holds this object
        self.received = self.served = self.invalid = 0
        self.last_id = None


_HDF5_HEADER = struct.Struct(">QI")  # total size, block size (bytes), big-endian


def adcore_framing(frame: Frame) -> Frame:
    """The frame with its payload framed as areaDetector's NDPluginCodec frames it, which is
    what PvaPy's ``AdImageUtility`` (and so pvapy plugins and viewers) decompress.

    Detectors that stream HDF5 chunks (Dectris, ``pvapy-ad-sim-server -hcm``) put a 12-byte
    header (total size, block size) before the bslz4 blocks, and the HDF5 LZ4 filter's
    framing before an LZ4 block. When the rest is exactly what NDPluginCodec writes (bslz4
    at bitshuffle's default block size; one compressed LZ4 block) the header is dropped, a
    slice of the same bytes; anything else is served as it came (never recompressed)."""
    c = frame.codec
    payload = frame.array
    if c is None or payload.dtype != "uint8" or payload.ndim != 1:
        return frame
    nbytes = c.uncompressed_size
    size = len(payload)
    if size < 16:
        return frame
    total, block = _HDF5_HEADER.unpack(payload[:12].tobytes())
    if total != nbytes:
        return frame
    if c.name == "bslz4":
        itemsize = c.dtype.itemsize
        if block == Bslz4.default_block(itemsize) * itemsize:
            return replace(frame, array=payload[12:])
    elif c.name == "lz4" and block >= nbytes:
        csize = int.from_bytes(payload[12:16].tobytes(), "big")
        if csize != nbytes and 16 + csize == size:
            return replace(frame, array=payload[16:])
    return frame


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
    """The mirror as a :class:`~pvaflow.component.Component`: each step serves what one poll
    brought."""

    schema = STATUS_SCHEMA

    def __init__(
        self,
        topic: str,
        channel: str,
        *,
        partition: int | None = None,
        offset: str = "latest",
        mirror_id: str | None = None,
        replay: ReplaySpec | None = None,
    ) -> None:
        if offset not in OFFSETS:
            raise ConfigError(f"offset must be one of {', '.join(OFFSETS)}, got {offset!r}")
        self.topic = topic
        self.channel = channel
        self.partition = partition
        self.offset = offset
        self.identity = ComponentId("mirror", "mirror", mirror_id or channel)
        self.counts = MirrorStats()
        self._collector = MirrorCollector(self.counts, topic, channel)
        self._consumer: Consumer | None = None
        self._server: Any = None
        # --from-time/--to-time/--from-offset (the mirror has no group to protect: it assigns)
        self._replay = Positions(replay) if replay is not None else None
        self._stop: Any = None

    def start(self, ctx: Context) -> None:
        self._consumer = ctx.kafka.consumer(f"pvaflow-mirror-{self.channel}",
                                            queued_max_messages_kbytes=65536)
        # all topics: a request naming a missing one lets the broker auto-create it
        md = self._consumer.list_topics(timeout=15).topics.get(self.topic)
        if md is None or md.error is not None or not md.partitions:
            raise TopicError(f"topic {self.topic!r} does not exist",
                             hint="check --topic (and --set), or start the bridge first")
        parts = sorted(md.partitions)
        if self.partition is not None:
            if self.partition not in parts:
                raise TopicError(f"topic {self.topic!r} has no partition {self.partition} "
                                 f"(it has {len(parts)})")
            parts = [self.partition]
        if self._replay is not None:
            self._stop = ctx.stop
            self._replay.on_assign(self._consumer, [TopicPartition(self.topic, p)
                                                    for p in parts], incremental=False)
        else:
            self._consumer.assign([TopicPartition(self.topic, p, OFFSETS[self.offset])
                                   for p in parts])
        self._server = pva.PvaServer()
        self._server.addRecord(self.channel, pva.NtNdArray())
        log.info("serving %s[%s] as PVA channel %s (from %s)", self.topic,
                 ",".join(map(str, parts)), self.channel, self.offset)

    def step(self) -> None:
        assert self._consumer is not None
        msgs = take(self._consumer, BATCH, TICK)
        if self._replay is not None:
            msgs = self._replay.filter(self._consumer, msgs)
            if self._replay.finished():
                self._stop.set()  # every partition is past --to-time
        for msg in msgs:
            if msg.error() is not None:
                log.warning("consumer error: %s", msg.error())
                continue
            self.serve_record(msg.key(), msg.value(), msg.headers())

    def stats(self) -> dict[str, Any]:
        return self.counts.snapshot()

    def ready(self) -> str | None:
        """Ready once its partitions are assigned and the PVA channel is served."""
        return None if self._server is not None else "starting"

    def configure(self, args: dict[str, Any]) -> Mapping[str, Any] | None:
        raise ConfigError("the mirror has nothing to configure at run time; restart it with "
                          "other options")

    def reset_stats(self) -> None:
        self.counts.reset()

    def report(self, final: bool = False) -> str:
        s = self.counts
        text = (f"{'final ' if final else ''}mirror statistics {self.topic} -> {self.channel}: "
                f"received {s.received}  served {s.served}  invalid {s.invalid}  "
                f"last uniqueId {s.last_id}")
        if final:
            text += "\npvaflow-mirror final " + json.dumps(s.snapshot())
        return text

    def metrics(self) -> Collector | None:
        return self._collector

    def close(self) -> int:
        if self._consumer is not None:
            self._consumer.close()
        if self._server is not None:
            self._server.stop()
        return EXIT_OK

    def serve_record(self, key: bytes | None, value: bytes | None, headers: Any) -> None:
        s = self.counts
        s.received += 1
        try:
            if ad00.is_ad00(value) and codec.header(headers, "pf.v") is None:
                frame = ad00.decode(value or b"")
            else:
                frame = codec.decode(key, value, headers)
            nt = ntnda_from_frame(adcore_framing(frame))
        except FrameError as exc:
            s.invalid += 1
            if s.invalid <= 10:
                log.error("cannot serve a record of %s: %s", self.topic, exc)
            return
        self._server.update(self.channel, nt)
        s.served += 1
        s.last_id = frame.unique_id
