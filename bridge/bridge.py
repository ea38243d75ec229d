"""The bridge: PVA channels in, Kafka topics out, every frame accounted for."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka.admin import AdminClient

from pvaflow.errors import ConfigError
from pvaflow.kafka.settings import admin_config, producer_config
from pvaflow.kafka.topics import ensure_topic

from .intake import Intake
from .plan import Plan
from .producer import FrameProducer, topic_limits
from .source import Drainer, Source
from .stats import ChannelStats

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
    receiver_queue_size: int = 100
    fmt: str = "native"
    bootstrap: str | None = None
    overrides: list[tuple[str, str]] = field(default_factory=list)
    topic_config: dict[str, str] = field(default_factory=dict)
    max_wait: float = 2.0
    flush_timeout: float = 30.0
    producer_extra: Mapping[str, Any] = field(default_factory=dict)


class Bridge:
    def __init__(self, config: BridgeConfig) -> None:
        self.config = config
        topics = assign_topics(config.channels, config.topics, config.shared_topic)
        self.plans = [
            Plan(t, config.partitions, config.updates, config.sets,
                 1 if config.first is None else config.first)
            for t in topics
        ]
        self.stats = [ChannelStats(c, t) for c, t in zip(config.channels, topics, strict=True)]
        self.producer: FrameProducer | None = None
        self.sources: list[Source] = []
        self.drainer: Drainer | None = None

    def topics(self) -> list[str]:
        return list(dict.fromkeys(t for p in self.plans for t in p.topics))

    def prepare_topics(self) -> dict[str, int]:
        """Create missing topics (refusing a different partition count); read size limits."""
        c = self.config
        admin = AdminClient(admin_config(c.bootstrap, c.overrides))
        for t in self.topics():
            # bootstrap/overrides too: ensure_topic tests ``admin or ...`` and an AdminClient
            # with an empty queue is falsy.
            ensure_topic(t, c.partitions, bootstrap=c.bootstrap, overrides=c.overrides,
                         admin=admin, config=c.topic_config)
        limits = topic_limits(admin, self.topics())
        for t, n in limits.items():
            log.info("topic %s: %d partitions, max.message.bytes %d", t, c.partitions, n)
        return limits

    def start(self) -> None:
        c = self.config
        limits = self.prepare_topics()
        conf = producer_config(c.bootstrap, c.overrides, **c.producer_extra)
        self.producer = FrameProducer(conf, max_wait=c.max_wait, limits=limits)
        for plan, stats in zip(self.plans, self.stats, strict=True):
            log.info("routing %s: %s", stats.channel, plan.describe())
            intake = Intake(stats.channel, plan, self.producer, stats, fmt=c.fmt,
                            auto_first=c.first is None)
            self.sources.append(Source(
                stats.channel, intake, stats, server_queue_size=c.server_queue_size,
                receiver_queue_size=c.receiver_queue_size))
        for src in self.sources:
            src.start()
        # after every channel exists: creating a pvapy Channel while another thread waits in
        # PvObjectQueue.get has crashed the interpreter
        self.drainer = Drainer(self.sources)
        self.drainer.start()

    def update_counters(self) -> None:
        for src in self.sources:
            src.update_counters()

    def check_connections(self) -> bool:
        """Log channel (dis)connections; True when every channel is connected."""
        return all([src.check_connection() for src in self.sources])

    def queue_depth(self) -> int:
        return len(self.producer) if self.producer is not None else 0

    def stop(self) -> None:
        """Stop monitors, hand on what the client queues hold, flush, count the rest."""
        for src in self.sources:
            src.stop()
        if self.drainer is not None:
            self.drainer.stop()
        if self.producer is None:
            return
        left = self.producer.flush(self.config.flush_timeout)
        if left:
            log.error("%d frames still undelivered after %.0fs flush: counted as "
                      "dropped[unflushed]", left, self.config.flush_timeout)
            for s in self.stats:
                s.dropped["unflushed"] += max(s.in_flight, 0)
        self.producer.close()
