"""The bridge: PVA channels in, Kafka topics out, every frame accounted for."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.registry import Collector

from pvaflow.component import TICK, Context
from pvaflow.control import ComponentId
from pvaflow.errors import EXIT_OK, ConfigError
from pvaflow.kafka.topics import Replication, ensure_topic

from .compress import DEFAULT_BACKLOG_MB, DEFAULT_THREADS, CodecPool
from .intake import Intake
from .metadata import (
    DEFAULT_QUEUE_SIZE,
    DEFAULT_TOLERANCE,
    MetadataCollector,
    MetadataJoin,
    empty_stats,
    final_line,
    parse_metadata_channels,
)
from .plan import Plan
from .producer import FrameProducer, topic_limits
from .source import Drainer, Source
from .stats import STATUS_SCHEMA, BridgeCollector, ChannelStats, Reporter, final_json, totals

log = logging.getLogger(__name__)


def default_topic(channel: str) -> str:
    """Kafka topic name for a PVA channel: ``13SIM1:Pva1:Image`` -> ``13SIM1.Pva1.Image``."""
    return re.sub(r"[^A-Za-z0-9._-]", ".", channel).strip(".") or "frames"


def assign_topics(
    channels: Sequence[str], topics: Sequence[str], shared: bool = False
) -> list[str]:
    """One topic per channel: given pairwise, derived from the channel name, or one shared."""
    if not channels:
        raise ConfigError("give at least one --input-channel")
    if len(set(channels)) != len(channels):
        raise ConfigError("an --input-channel is given twice")
    if not topics:
        if shared:
            raise ConfigError("--shared-topic needs a --topic")
        return [default_topic(c) for c in channels]
    if shared:
        if len(topics) != 1:
            raise ConfigError("--shared-topic takes exactly one --topic")
        return [topics[0]] * len(channels)
    if len(topics) != len(channels):
        raise ConfigError(
            f"{len(channels)} channels but {len(topics)} topics: give one --topic per "
            "--input-channel, none (derived from the channel names), or --shared-topic")
    if len(set(topics)) != len(topics):
        raise ConfigError("two channels share a --topic; say --shared-topic if that is meant")
    return list(topics)


@dataclass
class BridgeConfig:
    channels: list[str]
    topics: list[str] = field(default_factory=list)
    shared_topic: bool = False
    partitions: int = 1
    updates: int = 1
    sets: tuple[str, ...] = ()
    first: int | None = 1          # None: anchor at the first uniqueId received
    server_queue_size: int = 100
    receiver_queue_size: int = -1   # no client queue (PvaPy's default)
    fmt: str = "native"
    topic_config: dict[str, str] = field(default_factory=dict)
    replication: Replication = field(default_factory=Replication)
    max_wait: float = 2.0
    flush_timeout: float = 30.0
    producer_extra: Mapping[str, Any] = field(default_factory=dict)
    bridge_id: str = "1"
    codec: str | None = None       # compress uncompressed sources with this codec
    codec_threads: int = DEFAULT_THREADS
    codec_backlog: int | None = None   # frames; None: default_backlog(codec_threads)
    codec_backlog_mb: int = DEFAULT_BACKLOG_MB
    metadata_channels: list[str] = field(default_factory=list)  # pva://NAME, ca://NAME
    metadata_tolerance: float = DEFAULT_TOLERANCE
    metadata_queue_size: int = DEFAULT_QUEUE_SIZE


class Bridge:
    """The bridge as a :class:`~pvaflow.component.Component`: the PVA monitors and the
    delivery thread do the work; the loop thread only watches the channels' connections."""

    schema = STATUS_SCHEMA

    def __init__(self, config: BridgeConfig) -> None:
        self.config = config
        self.identity = ComponentId("bridge", "bridge", config.bridge_id)
        topics = assign_topics(config.channels, config.topics, config.shared_topic)
        if config.codec is not None and config.fmt == "ad00":
            raise ConfigError("--codec needs the native --format: ad00 has no codec field")
        if config.codec_threads < 1:
            raise ConfigError("--codec-threads must be at least 1")
        if config.receiver_queue_size == 0:
            # pvapy reads 0 as a queue without limit; every queue here has one
            raise ConfigError("--receiver-queue-size 0 would be a client queue without a "
                              "limit: give a length N > 0, or -1 for no client queue")
        self.plans = [
            Plan(t, config.partitions, config.updates, config.sets,
                 1 if config.first is None else config.first)
            for t in topics
        ]
        self.channels = [ChannelStats(c, t) for c, t in zip(config.channels, topics, strict=True)]
        self.producer: FrameProducer | None = None
        self.sources: list[Source] = []
        self.intakes: list[Intake] = []
        self.codec_pool: CodecPool | None = None
        self.drainer: Drainer | None = None
        self._ctx: Context | None = None
        self._reporter = Reporter(self.channels)
        self._collector: Collector = BridgeCollector(self.channels, self.queue_depth)
        self.metadata = self._metadata_join(config)
        if self.metadata is not None:
            self._collector = MetadataCollector(self.metadata, self._collector)

    def topics(self) -> list[str]:
        return list(dict.fromkeys(t for p in self.plans for t in p.topics))

    # -- Component ----------------------------------------------------------------------------

    def start(self, ctx: Context) -> None:
        self._ctx = ctx
        c = self.config
        conf = ctx.kafka.producer_config(**c.producer_extra)
        producer = ctx.kafka.producer(conf)  # first: a refused -X creates no topics
        limits = self._prepare_topics(ctx)
        # the delivery thread polls the producer: waiting for room only has to sleep
        sender = ctx.sender(producer, on_full="drop", max_wait=c.max_wait, serve=time.sleep,
                            conf=conf)
        self.producer = FrameProducer(
            sender, limits=limits,
            client_limit=int(conf.get("message.max.bytes", 1_000_000)))
        try:
            if self.metadata is not None:  # first: values in hand when frames come
                self.metadata.start()
            if c.codec is not None:
                self.codec_pool = CodecPool(
                    c.codec, c.codec_threads, max_frames=c.codec_backlog,
                    max_bytes=c.codec_backlog_mb << 20)
                log.info("compressing uncompressed frames with %s",
                         self.codec_pool.describe())
            for plan, stats in zip(self.plans, self.channels, strict=True):
                log.info("routing %s: %s", stats.channel, plan.describe())
                intake = Intake(stats.channel, plan, self.producer, stats, fmt=c.fmt,
                                auto_first=c.first is None, codec=self.codec_pool,
                                borrowed=c.receiver_queue_size < 0, metadata=self.metadata)
                self.intakes.append(intake)
                self.sources.append(Source(
                    stats.channel, intake, stats, server_queue_size=c.server_queue_size,
                    receiver_queue_size=c.receiver_queue_size))
            for src in self.sources:
                src.start()
            # after every channel exists: creating a pvapy Channel while another thread waits
            # in PvObjectQueue.get has crashed the interpreter
            self.drainer = Drainer(self.sources)
            self.drainer.start()
        except BaseException:
            self._stop_sources()
            self.producer.close()
            raise
        self.check_connections()

    def step(self) -> None:
        assert self._ctx is not None
        self._ctx.stop.wait(TICK)
        self.check_connections()

    def stats(self) -> dict[str, Any]:
        self.update_counters()
        meta = self.metadata.stats() if self.metadata is not None else empty_stats()
        return {**totals(self.channels), **meta}

    def configure(self, args: dict[str, Any]) -> Mapping[str, Any] | None:
        # Routing and queues are fixed for a run: a changed plan mid-stream would misroute
        # frames consumers have already been told (pf.plan) where to expect.
        raise ConfigError("the bridge has nothing to configure at run time; restart it with "
                          "other options")

    def reset_stats(self) -> None:
        for s in self.channels:
            s.reset()
        if self.metadata is not None:
            self.metadata.reset()

    def report(self, final: bool = False) -> str:
        self.update_counters()
        text = self._reporter.report(final=final)
        if self.metadata is not None:
            text = f"{text}\n{self.metadata.report()}"
            if final:
                text = f"{text}\n{final_line(self.metadata)}"
        return f"{text}\n{final_json(self.channels)}" if final else text

    def metrics(self) -> Collector | None:
        return self._collector

    def ready(self) -> str | None:
        """Ready while every PVA channel is connected (the cluster is the lifecycle's part)."""
        down = [src.name for src in self.sources if not src.connected.is_set()]
        return f"PVA channel {', '.join(down)} not connected" if down else None

    def close(self) -> int:
        """Stop monitors, hand on what the client queues hold, flush, count the rest."""
        self._stop_sources()
        if self.producer is None:
            return EXIT_OK
        timeout = self.config.flush_timeout
        if self._ctx is not None and not self._ctx.kafka.health.reachable:
            timeout = min(timeout, 1.0)  # nobody to deliver to: do not make a stop wait
        left = self.producer.flush(timeout)
        if left:
            log.error("%d frames still undelivered after %.0f s flush: counted as "
                      "dropped[unflushed]", left, timeout)
            for s in self.channels:
                s.dropped["unflushed"] += max(s.in_flight, 0)
        self.producer.close()
        return EXIT_OK

    # -- parts --------------------------------------------------------------------------------

    def _prepare_topics(self, ctx: Context) -> dict[str, int]:
        """Create missing topics (refusing a different partition count); read size limits."""
        c = self.config
        admin = ctx.kafka.admin()
        for t in self.topics():
            ensure_topic(t, c.partitions, admin=admin, config=c.topic_config,
                         replication=c.replication)
        limits = topic_limits(admin, self.topics())
        for t, n in limits.items():
            log.info("topic %s: %d partitions, max.message.bytes %d", t, c.partitions, n)
        return limits

    def _stop_sources(self) -> None:
        """Stop the monitors, hand on what the client queues hold, then send what the codec
        stage holds: afterwards every received frame is produced or counted as dropped."""
        for src in self.sources:
            src.stop()
        if self.drainer is not None:
            self.drainer.stop()
        if self.metadata is not None:
            self.metadata.stop()
        for intake in self.intakes:
            intake.close()
        self.intakes.clear()
        if self.codec_pool is not None:
            self.codec_pool.close()

    @staticmethod
    def _metadata_join(config: BridgeConfig) -> MetadataJoin | None:
        specs = parse_metadata_channels(config.metadata_channels)
        if not specs:
            return None
        if len(config.channels) > 1:
            raise ConfigError("--metadata-channels joins to one --input-channel; run a "
                              "bridge per detector")
        if config.metadata_queue_size < 1:
            raise ConfigError("--metadata-queue-size must be at least 1")
        return MetadataJoin.from_specs(specs, config.metadata_tolerance,
                                       config.metadata_queue_size)

    def update_counters(self) -> None:
        for src in self.sources:
            src.update_counters()

    def check_connections(self) -> bool:
        """Log channel (dis)connections; True when every channel is connected."""
        return all([src.check_connection() for src in self.sources])

    def queue_depth(self) -> int:
        return len(self.producer) if self.producer is not None else 0
