"""The collector: consume processed frames, reorder by uniqueId, emit exactly once.

Every ``commit_interval`` the emitted frames, the reorder state and the input offsets are
committed in one Kafka transaction (consume-transform-produce). Cached frames are not committed,
so after a crash they are read again; already emitted ones that come back are recognised as
replays (below the saved consumed position) and dropped silently.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from pvaflow import codec
from pvaflow.control import CONTROL_TOPIC, STATUS_TOPIC, ComponentId, ControlAgent
from pvaflow.kafka.settings import consumer_config, producer_config
from pvaflow.kafka.topics import ensure_topic
from pvaflow.metrics import consumer_lag
from pvaflow.plugin import Processor, outputs

from .outputs import Output
from .reorder import Reorderer
from .state import STATE_TOPIC, TP, SavedState, committable, ensure_state_topic, load_state

log = logging.getLogger(__name__)

FETCH_PER_PARTITION = 256 * 1024


@dataclass
class CollectorConfig:
    input_topics: list[str]
    group: str = "pvaflow-collector"
    collector_id: str = "1"
    bootstrap: str | None = None
    overrides: list[tuple[str, str]] = field(default_factory=list)
    output_topic: str | None = None
    late_topic: str | None = None
    state_topic: str = STATE_TOPIC
    cache_size: int = 1000
    max_delay: float = 5.0
    commit_interval: float = 0.2
    report_period: float = 10.0
    runtime: float = 0.0
    control_topic: str = CONTROL_TOPIC
    status_topic: str = STATUS_TOPIC


class Collector:
    def __init__(
        self,
        cfg: CollectorConfig,
        *,
        plugin: Processor | None = None,
        sinks: Iterable[Output] = (),
        control: bool = True,
    ) -> None:
        self.cfg = cfg
        self.plugin = plugin
        self.sinks = list(sinks)
        self.component = ComponentId("collector", cfg.group, cfg.collector_id)
        self._lock = threading.Lock()  # plugin calls: main thread vs control thread
        self._stop = threading.Event()
        self.errors = 0
        self.replayed = 0
        self.pauses = 0  # flow-control pauses (each refetches what was prefetched)
        self.lag = 0
        self._rate_mark = (time.monotonic(), 0)
        self._dirty = False
        self._last_uid: dict[TP, int] = {}
        self._paused: set[TP] = set()
        self._assigned: set[TP] = set()
        self._missed_logged = 0
        self._at_end: set[TP] = set()  # partitions read to their end (nothing more for now)
        for topic in filter(None, (cfg.output_topic, cfg.late_topic)):
            ensure_topic(topic, 1, bootstrap=cfg.bootstrap, overrides=cfg.overrides,
                         strict=False)
        ensure_state_topic(cfg.state_topic, cfg.bootstrap, cfg.overrides)
        self.producer = Producer(producer_config(
            cfg.bootstrap, cfg.overrides,
            **{"transactional.id": f"pvaflow-collector.{cfg.group}.{cfg.collector_id}",
               "linger.ms": 5, "transaction.timeout.ms": 60_000, "message.timeout.ms": 60_000},
        ))
        self.producer.init_transactions(30)  # fences and aborts a crashed predecessor
        self.saved = load_state(cfg.state_topic, cfg.group, cfg.bootstrap, cfg.overrides)
        self.reorder: Reorderer[Message] = Reorderer(
            cfg.cache_size, cfg.max_delay, state=self.saved.reorder)
        self._cached: Counter[TP] = Counter()  # records per partition in the reorder cache
        conf = consumer_config(
            cfg.group, cfg.bootstrap, cfg.overrides,
            **{"group.instance.id": f"collector-{cfg.collector_id}",
               "isolation.level": "read_committed", "statistics.interval.ms": 1000,
               "enable.partition.eof": True,
               # Small per-partition fetches interleave the partitions in every fetch, so the
               # cache sees them side by side instead of one partition's backlog at a time
               # (a larger record is still returned whole; -X overrides this as usual).
               "max.partition.fetch.bytes": FETCH_PER_PARTITION},
        )
        self.consumer = Consumer({**conf, "stats_cb": self._on_stats})
        self.agent = ControlAgent(
            self.component, handler=self.handle, stats=self.stats, bootstrap=cfg.bootstrap,
            overrides=cfg.overrides, control_topic=cfg.control_topic,
            status_topic=cfg.status_topic, report_period=cfg.report_period,
        ) if control else None
        log.info("collector %s resumes after uniqueId %s", self.component,
                 self.reorder.last_emitted)

    # -- control ---------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        s = self.reorder.stats
        now = time.monotonic()
        t0, n0 = self._rate_mark
        self._rate_mark = (now, s.emitted)
        out: dict[str, Any] = {
            "received": s.received, "emitted": s.emitted, "missed": s.missed, "late": s.late,
            "duplicates": s.duplicates, "cache_depth": self.reorder.depth,
            "peak_cache_depth": s.peak_cache_depth,
            "last_emitted_unique_id": self.reorder.last_emitted,
            "lag": self.lag, "errors": self.errors, "replayed": self.replayed,
            "pauses": self.pauses,
            "rate": round((s.emitted - n0) / (now - t0), 3) if now > t0 and s.emitted >= n0 else 0,
        }
        if self.plugin is not None:
            out["plugin"] = self.plugin.get_stats()
        return out

    def handle(self, command: str, args: dict[str, Any]) -> Mapping[str, Any] | None:
        if command == "configure":
            if "collector_cache_size" in args:
                self.reorder.cache_size = max(1, int(args.pop("collector_cache_size")))
            if "max_delay" in args:
                self.reorder.max_delay = max(0.0, float(args.pop("max_delay")))
            if args:
                if self.plugin is None:
                    raise ValueError(f"no collector plugin to configure with {sorted(args)}")
                with self._lock:
                    self.plugin.configure(args)
            return {"collector_cache_size": self.reorder.cache_size,
                    "max_delay": self.reorder.max_delay}
        if command == "reset_stats":
            self.reorder.reset_stats()
            self.errors = self.replayed = self.pauses = 0
            if self.plugin is not None:
                with self._lock:
                    self.plugin.reset_stats()
            return None
        if command == "get_stats":
            return self.stats()
        if command == "stop":
            self._stop.set()
            return None
        raise ValueError(f"unknown command {command!r}")

    def stop(self) -> None:
        self._stop.set()

    # -- main loop -------------------------------------------------------------------------

    def run(self) -> int:
        cfg = self.cfg
        deadline = time.monotonic() + cfg.runtime if cfg.runtime > 0 else float("inf")
        if self.plugin is not None:
            self.plugin.start()
        self.consumer.subscribe(cfg.input_topics, on_assign=self._on_assign,
                                on_revoke=self._on_revoke, on_lost=self._on_lost)
        self.producer.begin_transaction()
        next_commit = time.monotonic() + cfg.commit_interval
        try:
            while not self._stop.is_set() and time.monotonic() < deadline:
                # Batches of a quarter share let _balance pause a partition before it
                # overshoots its share by more than that. Larger polls cost pauses: up to half
                # the free cache lost ids in a backlog through a 200-frame cache, and polls
                # sized by the partitions' room under their shares paused ~750 times per
                # 200,000 benchmark frames (against ~22) and ran slower.
                quarter = self.reorder.cache_size // (4 * max(1, len(self._assigned)))
                msgs = self.consumer.consume(max(1, min(500, quarter)), 0.05)
                if msgs:
                    self._on_messages(msgs)
                self._emit(self.reorder.release())
                self._balance()
                if time.monotonic() >= next_commit:
                    self._commit()
                    next_commit = time.monotonic() + cfg.commit_interval
            self._commit()
        finally:
            self.close()
        return 0

    def close(self) -> None:
        if self.agent is not None:
            self.agent.close()
        if self.plugin is not None:
            self.plugin.stop()
        for sink in self.sinks:
            sink.close()
        self.consumer.close()
        self.producer.flush(10)

    def _on_messages(self, msgs: list[Message]) -> None:
        """One poll's records into the reorder cache.

        The collector's hot path: per-record work runs in C-level passes (comprehensions,
        zip, dict and Counter updates) and one push per poll. A Python loop per record cost
        the collector more CPU than consuming the records did.
        """
        self._dirty = True
        records_only = not any(map(Message.error, msgs))
        if not records_only:
            msgs = self._drop_events(msgs)
        keys = cast(list[bytes], [m.key() for m in msgs])
        try:  # the key is the uniqueId, 8 bytes big-endian (cheaper than the headers)
            if set(map(len, keys)) != {8}:  # (a None key raises TypeError too)
                raise TypeError
            uids: list[int] = np.frombuffer(b"".join(keys), ">u8").tolist()
        except TypeError:
            msgs, uids = self._uids_one_by_one(msgs)
        nxt = self.reorder.state.next_expected
        if uids and nxt is not None and self.saved.consumed and min(uids) < nxt:
            msgs, uids = self._drop_replays(msgs, uids, nxt)
        tps = _partitions(msgs)
        if records_only and self._at_end:
            self._at_end.difference_update(tps)
        self._last_uid.update(zip(tps, uids, strict=True))
        self._cached.update(tps)
        rejected, out = self.reorder.push_many(uids, msgs)
        if rejected:
            self._uncount([m for _fate, _uid, m in rejected])
            for fate, _uid, msg in rejected:
                if fate == "late" and self.cfg.late_topic:
                    self._produce(self.cfg.late_topic, msg.value(), msg.key(), msg.headers())
        if out:
            self._emit(out)

    def _drop_events(self, msgs: list[Message]) -> list[Message]:
        """The records of a poll that also holds events (end of partition, errors)."""
        records = []
        for msg in msgs:
            err = msg.error()
            tp = (msg.topic() or "", msg.partition() or 0)
            if err is None:
                records.append(msg)
                self._at_end.discard(tp)
            elif err.code() == KafkaError._PARTITION_EOF:
                self._at_end.add(tp)
            else:
                log.warning("consumer error: %s", err)
        return records

    def _uids_one_by_one(self, msgs: list[Message]) -> tuple[list[Message], list[int]]:
        """UniqueIds of records whose key is not one: from the header, or counted as errors."""
        kept, uids = [], []
        for msg in msgs:
            key = msg.key()
            try:
                uids.append(int.from_bytes(key, "big") if key is not None and len(key) == 8
                            else int(codec.header(msg.headers(), "pf.uid") or b""))
                kept.append(msg)
            except (ValueError, codec.FrameError):
                self.errors += 1
        return kept, uids

    def _drop_replays(
        self, msgs: list[Message], uids: list[int], nxt: int
    ) -> tuple[list[Message], list[int]]:
        """Records emitted before a restart and read again from the committed offsets."""
        before = self.saved.consumed
        kept, kept_uids = [], []
        for msg, uid in zip(msgs, uids, strict=True):
            tp = (msg.topic() or "", msg.partition() or 0)
            if uid < nxt and (msg.offset() or 0) < before.get(tp, -1):
                self.replayed += 1
            else:
                kept.append(msg)
                kept_uids.append(uid)
        return kept, kept_uids

    def _uncount(self, msgs: list[Message]) -> None:
        cached = self._cached
        for tp, n in Counter(_partitions(msgs)).items():
            if tp in cached:  # not if its partition was revoked meanwhile
                cached[tp] -= n

    def _emit(self, items: list[tuple[int, Message]]) -> None:
        topic = self.cfg.output_topic
        if self.reorder.stats.missed != self._missed_logged:
            log.info("gave up on %d ids before %s (cache %d/%d; last ids %s; paused %s; at end "
                     "%s)", self.reorder.stats.missed - self._missed_logged,
                     items[0][0] if items else "?", self.reorder.depth, self.reorder.cache_size,
                     self._last_uid, sorted(self._paused), sorted(self._at_end))
            self._missed_logged = self.reorder.stats.missed
        if items:
            self._dirty = True
        self._uncount([msg for _uid, msg in items])
        for _uid, msg in items:
            if self.plugin is None and not self.sinks:
                if topic:
                    self._produce(topic, msg.value(), msg.key(), msg.headers())
                continue
            try:
                frame = codec.decode(msg.key(), msg.value(), msg.headers())
                if self.plugin is not None:
                    with self._lock:
                        frames = outputs(self.plugin.process(frame))
                else:
                    frames = [frame]
            except Exception as exc:
                self.errors += 1
                log.warning("frame %s not emitted: %s", _uid, exc)
                continue
            for f in frames:
                if topic:
                    self._retry(lambda f=f: codec.produce(self.producer, topic, f, partition=0))
                for sink in self.sinks:
                    sink.write(f)

    def _produce(self, topic: str, value: Any, key: Any, headers: Any) -> None:
        self._retry(lambda: self.producer.produce(
            topic, value, key, partition=0, headers=headers))

    def _retry(self, fn: Any) -> None:
        while True:
            try:
                fn()
                return
            except BufferError:
                self.producer.poll(0.05)

    def _commit(self) -> None:
        """Outputs, state and offsets in one transaction; then open the next one."""
        if not self._dirty:
            return
        # The consumer's own position (next offset per partition, where nothing was consumed
        # yet a negative placeholder) instead of tracking every record's offset here.
        mine = [TopicPartition(t, p) for t, p in self._assigned]
        consumed = {(p.topic, p.partition): p.offset
                    for p in (self.consumer.position(mine) if mine else []) if p.offset >= 0}
        cached = [m for _uid, m in self.reorder.pending()]
        offsets = cast(list[int], [m.offset() for m in cached])
        positions = committable(consumed, zip(_partitions(cached), offsets, strict=True))
        state = SavedState(self.reorder.state, consumed)
        self.producer.produce(self.cfg.state_topic, state.encode(), self.cfg.group.encode(),
                              partition=0)
        if positions:
            self.producer.send_offsets_to_transaction(
                [TopicPartition(t, p, o) for (t, p), o in positions.items()],
                self.consumer.consumer_group_metadata(), 30)
        try:
            self.producer.commit_transaction(60)
        except KafkaException as exc:
            # Outputs already left the cache; only a restart from committed state is safe.
            if exc.args[0].txn_requires_abort():
                self.producer.abort_transaction(30)
            raise
        self._dirty = False
        self.producer.begin_transaction()

    def _balance(self) -> None:
        """Flow control across partitions, so a backlog cannot fill the cache from a few
        partitions while the missing ids wait, unread, in another one.

        A partition pauses when it holds more than its share of the cache (3/4 of cache size /
        live partitions) and resumes at half that; with a quarter share read per poll none
        holds more than cache size / partitions. The partition furthest behind (lowest last
        uniqueId) never pauses, since the next id comes from it, and neither do partitions
        read to their end. Pausing drops what librdkafka prefetched for the partition, so
        the rule must not fire on the skew of one record batch: pausing whenever a partition
        was half a cache ahead did, ~2,000 times per 200,000 benchmark frames.
        """
        live = self._assigned - self._at_end
        want: set[TP] = set()
        if len(live) > 1:
            share = 3 * self.reorder.cache_size // (4 * len(live))
            last, cached = self._last_uid, self._cached
            floor = min(live, key=lambda tp: last.get(tp, -1))
            want = {tp for tp in live if tp != floor
                    and cached[tp] > (share // 2 if tp in self._paused else share)}
        if want != self._paused:
            if self._paused - want:
                self.consumer.resume([TopicPartition(t, p) for t, p in self._paused - want])
            if want - self._paused:
                self.pauses += len(want - self._paused)
                self.consumer.pause([TopicPartition(t, p) for t, p in want - self._paused])
            self._paused = want

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._assigned.update((p.topic, p.partition) for p in partitions)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._commit()
        self._on_lost(consumer, partitions)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        gone = [(p.topic, p.partition) for p in partitions]
        self._assigned.difference_update(gone)
        for tp in gone:
            self._cached.pop(tp, None)
        self._at_end.difference_update(gone)
        self._paused.difference_update(gone)

    def _on_stats(self, stats_json: str) -> None:
        self.lag = sum(consumer_lag(stats_json).values())


def _partitions(msgs: list[Message]) -> list[TP]:
    topics, parts = map(Message.topic, msgs), map(Message.partition, msgs)
    return cast(list[TP], list(zip(topics, parts, strict=True)))
