"""The collector: consume processed frames, reorder by uniqueId, emit exactly once.

Every ``commit_interval`` the emitted frames, the dead letters and the reorder state (with the
consumed input positions) are committed in one Kafka transaction; the group's input offsets
follow it (see ``_commit``). Cached frames are not committed, so after a crash they are read
again; already emitted ones that come back are recognised as replays (below the saved consumed
position) and dropped silently.

A :class:`Collector` is a :class:`pvaflow.component.Component`: the lifecycle owns the loop,
signals, runtime, control and metrics serving, so commands (``configure``, ``reset_stats``)
run on the same thread as the plugin and need no lock.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
from confluent_kafka import (
    Consumer,
    ConsumerGroupTopicPartitions,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient
from prometheus_client.registry import Collector as PromCollector

from pvaflow import codec
from pvaflow.codecs import SAME, encode_frame
from pvaflow.component import Context
from pvaflow.control import ComponentId
from pvaflow.dlq import dlq_headers
from pvaflow.errors import FrameError
from pvaflow.kafka.consume import take
from pvaflow.kafka.positions import Positions, ReplaySpec
from pvaflow.kafka.produce import Sender
from pvaflow.kafka.topics import Replication, ensure_topic
from pvaflow.metrics import Rate, consumer_lag
from pvaflow.options import COMMIT_INTERVAL
from pvaflow.plugin import Processor, object_id, outputs
from pvaflow.pva_channels import COLLECTOR_STATUS_FIELDS, PvaChannels

from .merge import DELAY, DRAINED, Stream, frontier
from .outputs import Output
from .reorder import Reorderer
from .state import STATE_TOPIC, TP, SavedState, committable, ensure_state_topic, load_state
from .stats import STATUS_SCHEMA, CollectorMetrics

log = logging.getLogger(__name__)

FETCH_PER_PARTITION = 256 * 1024
DRAIN_CHECK = 1.0  # seconds between two looks at a silent stream's upstream
# A consumer fenced again this soon after a recovery is not a broker's restart: another
# instance really holds this collector's group.instance.id, and the run ends.
REFENCE_WINDOW = 30.0
# One commit_transaction call waits at most this long; a timed-out call is retried, and
# between calls --kafka-timeout is checked, so a lost cluster ends the run when it should
# (one 60 s call held the collector 61 s past a --kafka-timeout of 8 s beside CPU hogs).
COMMIT_ATTEMPT = 5.0
PROC_HEADER, INPUT_HEADER = "pf.proc", "pf.in"  # written by pvaflow's processors

Upstream = tuple[str, str, int]  # (processors' group, input topic, input partition)


@dataclass
class CollectorConfig:
    input_topics: list[str]
    group: str = "pvaflow-collector"
    collector_id: str = "1"
    output_topic: str | None = None
    late_topic: str | None = None
    dlq_topic: str | None = None
    state_topic: str = STATE_TOPIC
    cache_size: int = 1000
    max_delay: float = 5.0
    commit_interval: float = COMMIT_INTERVAL
    replay: ReplaySpec | None = None  # --from-time/--to-time/--from-offset
    oid_field: str = "uniqueId"  # PvaPy's -of: reorder by this attribute instead
    oid_offset: int = 1  # PvaPy's -oo: ids step by this much
    skip_initial_updates: int = 0  # PvaPy's -siu
    replication: Replication = field(default_factory=Replication)
    # --output-codec for every output (ordered topic, PVA channel, files)
    output_codec: str = SAME
    status_channel: str | None = None  # PvaPy's -sc/-cc (the '*' already replaced)
    control_channel: str | None = None


# PvaPy framework keys of ``configure`` that set nothing in a Kafka collector, and why.
FRAMEWORK_NOOPS = {
    "receiverQueueSize": "Kafka is the collector's receive queue: records wait in the "
                         "topics, bounded by their retention; collectorCacheSize bounds "
                         "the reorder cache",
}


class Collector:
    """The collector stage; ``start`` does all the I/O, ``step`` one poll's worth of work."""

    schema = STATUS_SCHEMA
    # Made by start(): a collector that was never started has no clients.
    producer: Producer
    consumer: Consumer
    sender: Sender

    def __init__(
        self,
        cfg: CollectorConfig,
        *,
        plugin: Processor | None = None,
        sinks: Iterable[Output] = (),
    ) -> None:
        self.cfg = cfg
        self.plugin = plugin
        self.sinks = list(sinks)
        self.identity = ComponentId("collector", cfg.group, cfg.collector_id)
        self._ctx: Context | None = None
        self.errors = 0  # records dead-lettered, or dropped when there is no DLQ
        self.dlq = 0
        # Records read but never in the reorder (no uniqueId), and frames released by it that
        # failed on the way out: so that received = emitted + lost holds in the stats.
        self.unreadable = 0
        self.failed_out = 0
        self.replayed = 0
        self.pauses = 0  # flow-control pauses (each refetches what was prefetched)
        self.lag = 0
        self._rate = Rate()  # emitted frames/s
        self._dirty = False
        # Set when a step failed (the open transaction may lack records that left the cache:
        # it must not be committed) and when closing (a revoke must not commit again).
        self._failed = False
        self._closing = False
        self._next_commit = 0.0
        self._last_uid: dict[TP, int] = {}
        self._paused: set[TP] = set()
        self._assigned: set[TP] = set()
        self._replay = Positions(cfg.replay) if cfg.replay is not None else None
        self._missed_logged = 0
        self._at_end: set[TP] = set()  # partitions read to their end (nothing more for now)
        self.saved = SavedState()
        self.reorder: Reorderer[Message] = Reorderer(cfg.cache_size, cfg.max_delay)
        self._cached: Counter[TP] = Counter()  # records per partition in the reorder cache
        # The merge (collectors/merge.py): one stream per assigned partition, when each last
        # delivered a record, its last record (whose headers name its upstream), and when
        # each silent stream's upstream may be looked at next.
        self._streams: dict[TP, Stream] = {}
        self._seen_at: dict[TP, float] = {}
        self._last_msg: dict[TP, Message] = {}
        self._next_check: dict[TP, float] = {}
        self._admin: AdminClient | None = None
        self._upstream_warned: set[TP] = set()
        self._spread: dict[tuple[str, str], bool] = {}  # (topic, upstream topic): mixed
        self._consumer_conf: dict[str, Any] = {}
        self._saved_consumed: dict[TP, int] = {}  # the consumed positions last committed
        self._fenced: KafkaError | None = None  # set on the fence, handled by step()
        self._recovered_at = -REFENCE_WINDOW
        self.recoveries = 0
        self._skip = max(0, cfg.skip_initial_updates)
        self.skipped = 0
        self._oid_step = max(1, cfg.oid_offset)
        self._oid_rest: int | None = None  # the ids' remainder mod the step
        self.channels: PvaChannels | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self, ctx: Context) -> None:
        cfg, kafka = self.cfg, ctx.kafka
        self._ctx = ctx
        # Clients first: a setting librdkafka refuses is reported before anything is created.
        self.producer = kafka.producer(kafka.producer_config(
            **{"transactional.id": f"pvaflow-collector.{cfg.group}.{cfg.collector_id}",
               "linger.ms": 5, "transaction.timeout.ms": 60_000, "message.timeout.ms": 60_000}))
        conf = kafka.consumer_config(
            cfg.group,
            **{"group.instance.id": f"collector-{cfg.collector_id}",
               "isolation.level": "read_committed", "statistics.interval.ms": 1000,
               "enable.partition.eof": True,
               # Small per-partition fetches interleave the partitions in every fetch, so the
               # cache sees them side by side instead of one partition's backlog at a time
               # (a larger record is still returned whole; -X overrides this as usual).
               "max.partition.fetch.bytes": FETCH_PER_PARTITION},
        )
        self._consumer_conf = {**conf, "stats_cb": self._on_stats}
        self.consumer = kafka.consumer(cfg.group, self._consumer_conf)
        # Waits as long as it takes for room (the input is a durable log), but not past a
        # stop or a cluster lost for good.
        self.sender = ctx.sender(self.producer, on_full="fail")
        admin = kafka.admin()
        for topic in filter(None, (cfg.output_topic, cfg.late_topic, cfg.dlq_topic)):
            ensure_topic(topic, 1, admin=admin, strict=False, replication=cfg.replication)
        ensure_state_topic(cfg.state_topic, admin, cfg.replication)
        self.producer.init_transactions(30)  # fences and aborts a crashed predecessor
        self.saved = load_state(cfg.state_topic, cfg.group, kafka)
        self.reorder = Reorderer(cfg.cache_size, cfg.max_delay, state=self.saved.reorder)
        self._saved_consumed = dict(self.saved.consumed)
        log.info("collector %s resumes after uniqueId %s", self.identity,
                 self.reorder.last_emitted)
        if self.plugin is not None:
            self.plugin.start()
        self.consumer.subscribe(cfg.input_topics, on_assign=self._on_assign,
                                on_revoke=self._on_revoke, on_lost=self._on_lost)
        self.producer.begin_transaction()
        self._next_commit = time.monotonic() + cfg.commit_interval
        if cfg.status_channel or cfg.control_channel:
            self.channels = PvaChannels(
                cfg.collector_id, ctx.commands, ctx.stop.set, output=None,
                status=cfg.status_channel, control=cfg.control_channel,
                id_field="collectorId", status_fields=COLLECTOR_STATUS_FIELDS)

    def step(self) -> None:
        try:
            # Batches of a quarter share let _balance pause a partition before it overshoots
            # its share by more than that. Larger polls cost pauses: up to half the free cache
            # lost ids in a backlog through a 200-frame cache, and polls sized by the
            # partitions' room under their shares paused ~750 times per 200,000 benchmark
            # frames (against ~22) and ran slower.
            quarter = self.reorder.cache_size // (4 * max(1, len(self._assigned)))
            msgs = take(self.consumer, max(1, min(500, quarter)), 0.05)
            if self._replay is not None:
                msgs = self._replay.filter(self.consumer, msgs)
            if msgs:
                self._on_messages(msgs)
            if self._fenced is not None:
                self._recover(self._fenced)
            self._merge()
            if self._replay is not None and self._replay.finished():
                # past --to-time everywhere: nothing else will fill a gap
                self._emit(self.reorder.flush())
                assert self._ctx is not None
                self._ctx.stop.set()
            self._emit(self.reorder.release())
            self._balance()
            # While no broker answers a commit would only block; the transaction stays open
            # until the cluster is back or the lifecycle gives up on it.
            if time.monotonic() >= self._next_commit and self._reachable():
                self._commit()
                self._next_commit = time.monotonic() + self.cfg.commit_interval
        except BaseException:
            self._failed = True
            raise

    def close(self) -> int:
        """Commit what was emitted (unless the run failed: then the next instance aborts the
        open transaction and resumes from the last commit), then release everything."""
        try:
            if not self._failed and self._reachable():
                self._commit()
        except BaseException:
            self._failed = True
            raise
        finally:
            self._release()
        return 0

    def _release(self) -> None:
        self._closing = True
        if self.channels is not None:
            self.channels.update_status(self.stats())
            self.channels.stop()
            self.channels = None
        if self.plugin is not None:
            self.plugin.stop()
        for sink in self.sinks:
            sink.close()
        consumer: Consumer | None = getattr(self, "consumer", None)
        if consumer is not None:
            consumer.close()
        producer: Producer | None = getattr(self, "producer", None)
        if producer is not None:
            if self._failed and self._reachable():
                try:
                    producer.abort_transaction(10)
                except KafkaException as exc:
                    log.debug("abort at close: %s", exc)
            producer.flush(10 if self._reachable() else 1)

    def ready(self) -> str | None:
        if not self._assigned:
            return f"no partition of {', '.join(self.cfg.input_topics)} assigned yet"
        return None

    def _reachable(self) -> bool:
        return self._ctx is None or self._ctx.kafka.health.reachable

    def metrics(self) -> PromCollector:
        return CollectorMetrics(self)

    def report(self, final: bool = False) -> str:
        if final:
            return f"final stats: {json.dumps(self.stats())}"
        if self.channels is not None:
            self.channels.update_status(self.stats())
        c = self.counts()
        return (f"collector {self.identity}: received {c['received']} emitted {c['emitted']} "
                f"missed {c['missed']} late {c['late']} duplicates {c['duplicates']} dlq "
                f"{c['dlq']} cache {self.reorder.depth}/{self.reorder.cache_size} last "
                f"uniqueId {self.reorder.last_emitted}")

    # -- control ---------------------------------------------------------------------------

    def real_id(self, oid: int | None) -> int | None:
        """An id of the reorder's id space (divided by --oid-offset) as the frames carry it."""
        if oid is None or self._oid_step == 1:
            return oid
        return oid * self._oid_step + (self._oid_rest or 0)

    def counts(self) -> dict[str, int]:
        """The frame counters, shared by the status and the Prometheus view."""
        s = self.reorder.stats
        return {"received": s.received + self.unreadable, "emitted": s.emitted - self.failed_out,
                "missed": s.missed, "late": s.late, "duplicates": s.duplicates,
                "dlq": self.dlq, "errors": self.errors}

    def stats(self) -> dict[str, Any]:
        counts = self.counts()
        emitted = counts["emitted"]
        out: dict[str, Any] = {
            **counts, "cache_depth": self.reorder.depth,
            "peak_cache_depth": self.reorder.stats.peak_cache_depth,
            "last_emitted_unique_id": self.real_id(self.reorder.last_emitted),
            "missed_by": dict(self.reorder.stats.missed_by),
            "skipped": self.skipped,
            "lag": self.lag, "replayed": self.replayed, "pauses": self.pauses,
            "recoveries": self.recoveries,
            "rate": round(self._rate.update(emitted), 3),
        }
        if self.plugin is not None:
            out["plugin"] = self.plugin.get_stats()
        return out

    def configure(self, args: dict[str, Any]) -> Mapping[str, Any] | None:
        """Also PvaPy's framework keys: ``collectorCacheSize``, ``skipInitialUpdates`` (the
        next N records are dropped) and ``objectIdOffset`` (the id step, from the next id
        on); ``receiverQueueSize`` sets nothing (the reply says why)."""
        args = dict(args)
        for pvapy, ours in (("collectorCacheSize", "collector_cache_size"),):
            if pvapy in args:
                args[ours] = args.pop(pvapy)
        ignored = {k: why for k, why in FRAMEWORK_NOOPS.items() if args.pop(k, None) is not None}
        if "skipInitialUpdates" in args:
            self._skip = max(0, int(args.pop("skipInitialUpdates")))
        if "objectIdOffset" in args:
            self._set_oid_step(int(args.pop("objectIdOffset")))
        if "collector_cache_size" in args:
            self.reorder.cache_size = max(1, int(args.pop("collector_cache_size")))
        if "max_delay" in args:
            self.reorder.max_delay = max(0.0, float(args.pop("max_delay")))
        if args:
            if self.plugin is None:
                raise ValueError(f"no collector plugin to configure with {sorted(args)}")
            self.plugin.configure(args)
        reply: dict[str, Any] = {"collector_cache_size": self.reorder.cache_size,
                                 "max_delay": self.reorder.max_delay,
                                 "skipInitialUpdates": self._skip,
                                 "objectIdOffset": self._oid_step}
        if ignored:
            reply["ignored"] = ignored
        return reply

    def _set_oid_step(self, step: int) -> None:
        """A new id step: the reorder state moves to the new id space at the last id."""
        step = max(1, step)
        if step == self._oid_step:
            return
        state = self.reorder.state
        if state.next_expected is not None:
            last = self.real_id(state.next_expected - 1)
            assert last is not None
            self._oid_rest = last % step
            state.next_expected = last // step + 1
        self._oid_step = step

    def reset_stats(self) -> None:
        self.reorder.reset_stats()
        self.errors = self.replayed = self.pauses = self.dlq = 0
        self.unreadable = self.failed_out = 0
        if self.plugin is not None:
            self.plugin.reset_stats()

    # -- the work --------------------------------------------------------------------------

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
        if self._skip:  # --skip-initial-updates (their offsets are committed as consumed)
            n = min(self._skip, len(msgs))
            self._skip -= n
            self.skipped += n
            msgs = msgs[n:]
        keys = cast(list[bytes], [m.key() for m in msgs])
        if self.cfg.oid_field != "uniqueId":
            msgs, uids = self._uids_from_field(msgs)
        else:
            try:  # the key is the uniqueId, 8 bytes big-endian (cheaper than the headers)
                if set(map(len, keys)) != {8}:  # (a None key raises TypeError too)
                    raise TypeError
                uids = np.frombuffer(b"".join(keys), ">u8").tolist()
            except TypeError:
                msgs, uids = self._uids_one_by_one(msgs)
        step = self._oid_step
        if step > 1 and uids:  # ids 1,4,7 with -oo 3 are reordered as 0,1,2
            if self._oid_rest is None:
                self._oid_rest = uids[0] % step
            uids = [u // step for u in uids]
        nxt = self.reorder.state.next_expected
        if uids and nxt is not None and self.saved.consumed and min(uids) < nxt:
            msgs, uids = self._drop_replays(msgs, uids, nxt)
        tps = _partitions(msgs)
        if records_only and self._at_end:
            self._at_end.difference_update(tps)
        last = dict(zip(tps, uids, strict=True))
        self._last_uid.update(last)
        self._last_msg.update(zip(tps, msgs, strict=True))
        now = time.monotonic()
        streams = self._streams
        for tp, msg in zip(tps, msgs, strict=True):
            st = streams.get(tp)
            if st is not None and not st.mixed:
                src = codec.header(msg.headers() or [], INPUT_HEADER)
                first = st.source is None and src is not None
                st.saw(src)
                up = _upstream_of(msg) if first else None
                if up is not None and self._spread_by_hash(tp[0], up[1]):
                    st.mixed = True
                if st.mixed:
                    log.warning(
                        "collector %s: %s[%d] carries outputs of more than one upstream "
                        "partition (the processors' output topic has fewer partitions than "
                        "their input): its ids are not in order, so gaps are given up after "
                        "--max-delay (%g s) as for any mixed input; give the output topic as "
                        "many partitions as the input", self.identity, tp[0], tp[1],
                        self.reorder.max_delay)
        for tp, uid in last.items():  # a few partitions per poll
            st = streams.get(tp)
            if st is not None:  # (not if its partition was revoked meanwhile)
                # The last id of the poll: a repeated tail may end lower than the highest,
                # which only holds the frontier back (never gives an id up early).
                st.high = uid if st.high is None or uid > st.high else st.high
                st.drained = None
            self._seen_at[tp] = now
        self._set_frontier()
        self._cached.update(tps)
        rejected, out = self.reorder.push_many(uids, msgs)
        if rejected:
            self._uncount([m for _fate, _uid, m in rejected])
            for fate, _uid, msg in rejected:
                if fate == "late" and self.cfg.late_topic:
                    self._send(self.cfg.late_topic, msg.value(), msg.key(), msg.headers())
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
            elif _fenced(err) and time.monotonic() - self._recovered_at > REFENCE_WINDOW:
                self._fenced = err  # e.g. after a broker restart: step() makes a new consumer
            elif err.fatal() or err.code() == KafkaError._FATAL:  # reads nothing more, ever
                raise KafkaException(err)
            else:
                log.warning("consumer error: %s", err)
        return records

    def _uids_from_field(self, msgs: list[Message]) -> tuple[list[Message], list[int]]:
        """``--oid-field``: the id is an NTNDArray attribute (each frame is decoded)."""
        kept, uids = [], []
        name = self.cfg.oid_field
        for msg in msgs:
            try:
                oid = object_id(codec.decode(msg.key(), msg.value(), msg.headers()), name)
            except FrameError as exc:
                self.unreadable += 1
                self._dead_letter(msg, "decode", exc)
                continue
            if oid is None:
                self.unreadable += 1
                self._dead_letter(msg, "decode", FrameError(f"no integer attribute {name}"))
                continue
            kept.append(msg)
            uids.append(oid)
        return kept, uids

    def _uids_one_by_one(self, msgs: list[Message]) -> tuple[list[Message], list[int]]:
        """UniqueIds of records whose key is not one: from the header, or dead letters."""
        kept, uids = [], []
        for msg in msgs:
            key = msg.key()
            try:
                uids.append(int.from_bytes(key, "big") if key is not None and len(key) == 8
                            else int(codec.header(msg.headers(), "pf.uid") or b""))
                kept.append(msg)
            except (ValueError, FrameError):
                self.unreadable += 1
                self._dead_letter(msg, "decode", FrameError("no uniqueId in the key or the "
                                                            "pf.uid header"))
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
            log.info("gave up on %d ids before %s (so far by reason %s; cache %d/%d; last ids "
                     "%s; paused %s; at end %s)", self.reorder.stats.missed - self._missed_logged,
                     items[0][0] if items else "?", self.reorder.stats.missed_by,
                     self.reorder.depth, self.reorder.cache_size,
                     self._last_uid, sorted(self._paused), sorted(self._at_end))
            self._missed_logged = self.reorder.stats.missed
        if items:
            self._dirty = True
        self._uncount([msg for _uid, msg in items])
        policy = self.cfg.output_codec
        for _uid, msg in items:
            if self.plugin is None and not self.sinks and policy == SAME:
                if topic:  # the record as it came: nothing to decode
                    self._send(topic, msg.value(), msg.key(), msg.headers())
                continue
            try:
                frame = codec.decode(msg.key(), msg.value(), msg.headers())
            except Exception as exc:
                self.failed_out += 1
                self._dead_letter(msg, "decode", exc)
                continue
            if self.plugin is not None:
                try:
                    frames = outputs(self.plugin.process(frame))
                except Exception as exc:
                    self.failed_out += 1
                    self._dead_letter(msg, "process", exc)
                    continue
            else:
                frames = [frame]
            try:
                for f in frames:
                    f = encode_frame(f, policy)  # a frame kept as it came is not decoded
                    if topic:
                        key, value, headers = codec.encode(f)
                        self._send(topic, value, key, headers)
                    for sink in self.sinks:
                        sink.write(f)
            except FrameError as exc:  # not encodable, corrupt pixels, does not fit the file
                self.failed_out += 1
                self._dead_letter(msg, "output", exc)

    def _send(self, topic: str, value: Any, key: Any, headers: Any,
              partition: int | None = 0) -> None:
        """Into the open transaction; a full buffer waits (BufferFull only on stop or a
        cluster lost for good, and then the transaction is not committed)."""
        self.sender.send(topic, value, key, partition=partition, headers=headers)

    def _dead_letter(self, msg: Message, stage: str, exc: BaseException) -> None:
        """The original record to the DLQ, in the same transaction as the outputs, so a frame
        that failed is neither lost silently nor dead-lettered twice after a restart."""
        self.errors += 1
        reason = getattr(exc, "reason", None) or f"{type(exc).__name__}: {exc}"
        uid = None  # the frame id, for --log-format json (an undecodable key has none)
        with contextlib.suppress(FrameError):
            uid = codec.decode_key(msg.key())
        log.warning("collector %s: %s[%s]@%s -> %s (%s): %s", self.identity, msg.topic(),
                    msg.partition(), msg.offset(), self.cfg.dlq_topic or "dropped", stage,
                    reason, extra={"unique_id": uid})
        if self.cfg.dlq_topic:
            self._send(self.cfg.dlq_topic, msg.value(), msg.key(),
                       dlq_headers(msg, stage, exc, str(self.identity)), partition=None)
            self.dlq += 1

    def _commit(self) -> None:
        """Outputs, state and offsets in one transaction; then open the next one."""
        if not self._dirty or self._failed or self._closing:
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
        self._saved_consumed = consumed
        for sink in self.sinks:  # files hold what this commit marks as emitted
            sink.flush()
        self._send(self.cfg.state_topic, state.encode(), self.cfg.group.encode(), None)
        if not self._commit_transaction():
            # Stopped while Kafka did not answer: the transaction stays open and the input
            # offsets must not move past it; the next instance aborts it and resumes from
            # the last committed state. Nothing else is committed in this run.
            log.warning("collector %s: stopping with the transaction uncommitted (Kafka "
                        "did not answer); the next run resumes from the last commit",
                        self.identity)
            self._failed = True
            return
        self._dirty = False
        if positions:
            # The input offsets follow the transaction instead of riding in it
            # (send_offsets_to_transaction): librdkafka can block in that call for good when
            # the group coordinator's broker dies (its timeout is not applied: librdkafka
            # issues 5456 and 5511), which froze the collector when a broker was killed. The
            # saved state above already holds the consumed positions, in the transaction; a
            # restart from offsets older than it drops the re-read frames as replays.
            try:
                self.consumer.commit(
                    offsets=[TopicPartition(t, p, o) for (t, p), o in positions.items()],
                    asynchronous=True)
            except KafkaException as exc:  # the next commit carries them again
                log.warning("committing input offsets: %s", exc)
        self.producer.begin_transaction()

    def _commit_transaction(self) -> bool:
        """Commit the open transaction, retrying while Kafka says a retry may succeed (a
        coordinator moving to another broker times the call out); any other failure aborts
        (when required) and raises: only a restart from committed state is then safe, since
        the outputs already left the cache. False: a stop came while a retry was due (a
        stop during an outage must not wait for the cluster; the commit may have started
        before the client noticed the outage)."""
        deadline = time.monotonic() + 300.0
        warned = False
        while True:
            try:
                self.producer.commit_transaction(COMMIT_ATTEMPT)
                return True
            except KafkaException as exc:
                err = exc.args[0]
                if err.retriable() and self._stopping():
                    return False
                if err.retriable() and time.monotonic() < deadline:
                    if self._ctx is not None:  # KafkaUnavailable past --kafka-timeout
                        self._ctx.kafka.health.check()
                    if not warned:
                        log.warning("committing the transaction: %s; retrying", err.str())
                        warned = True
                    continue
                if err.txn_requires_abort():
                    self.producer.abort_transaction(30)
                raise

    def _stopping(self) -> bool:
        return self._ctx is not None and self._ctx.stop.is_set()

    def _balance(self) -> None:
        """Flow control across partitions: a stream that runs ahead is held back in Kafka
        (its partition paused) instead of filling the cache while the next ids wait, unread
        or not yet written, in another one.

        A partition pauses when it holds more than its share of the cache (3/4 of cache size /
        live streams) and resumes at half that; with a quarter share read per poll none holds
        more than cache size / partitions. The stream furthest behind (lowest highest id) never
        pauses, since the next id comes from it, and drained streams do not count. Pausing
        drops what librdkafka prefetched for the partition, so the rule must not fire on the
        skew of one record batch: pausing whenever a partition was half a cache ahead did,
        ~2,000 times per 200,000 benchmark frames.
        """
        streams = self._streams
        live = [tp for tp, st in streams.items() if st.drained is None]
        want: set[TP] = set()
        if len(live) > 1:
            share = 3 * self.reorder.cache_size // (4 * len(live))
            cached = self._cached
            floor = min(live, key=lambda tp: _high(streams[tp]))
            want = {tp for tp in live if tp != floor
                    and cached[tp] > (share // 2 if tp in self._paused else share)}
        if want != self._paused:
            if self._paused - want:
                self.consumer.resume([TopicPartition(t, p) for t, p in self._paused - want])
            if want - self._paused:
                self.pauses += len(want - self._paused)
                self.consumer.pause([TopicPartition(t, p) for t, p in want - self._paused])
            self._paused = want

    # -- the merge: when a stream that holds the others back has nothing more -------------

    def _set_frontier(self) -> None:
        self.reorder.set_frontier(frontier(self._streams.values()))

    def _merge(self) -> None:
        """Mark silent streams that hold the next ids back as drained when they are known to
        have nothing more (docs/collector.md, "When an id is given up"), then set the
        frontier."""
        reorder = self.reorder
        lowest = reorder.lowest
        nxt = reorder.state.next_expected
        if lowest is not None and nxt != lowest:
            now = time.monotonic()
            wait = reorder.max_delay
            for tp, st in self._streams.items():
                if st.drained is not None or tp not in self._at_end:
                    continue
                if st.high is not None and (nxt is None or st.high + 1 >= lowest):
                    continue  # it does not hold the next id back
                if now - self._seen_at.get(tp, now) < wait or \
                        now < self._next_check.get(tp, 0.0):
                    continue
                self._next_check[tp] = now + DRAIN_CHECK
                up = self._upstream(tp)
                if up is None:
                    st.drained = DELAY
                elif self._upstream_done(tp, up):
                    st.drained = DRAINED
                if st.drained is not None:
                    log.info("collector %s: %s[%d] silent for %.1f s and %s; ids it would "
                             "have carried are given up", self.identity, tp[0], tp[1],
                             now - self._seen_at.get(tp, now),
                             "its upstream is unknown" if up is None else
                             f"{up[1]}[{up[2]}] is processed to its end by group {up[0]}")
        self._set_frontier()

    def _spread_by_hash(self, topic: str, upstream: str) -> bool:
        """True when ``topic`` has fewer partitions than the processors' input topic
        ``upstream`` (from ``pf.in``): the processors then spread their outputs by hash, so each
        partition of ``topic`` is mixed from its first record. Waiting for a second upstream
        to show itself is too late at start-up: beside CPU hogs one processor's first
        records came before the other's, and the merge rule gave up id 1 as passed before
        the stream was seen to be mixed. Asked once per pair of topics; when the partition
        counts cannot be read, the headers alone decide (a second upstream)."""
        key = (topic, upstream)
        if key not in self._spread:
            try:  # all topics: asking for one by name may auto-create it
                topics = self.consumer.list_topics(timeout=5).topics
                counts = [len(topics[t].partitions) for t in key]
            except (KafkaException, KeyError) as exc:
                log.warning("collector %s: cannot read the partition counts of %s and %s: "
                            "%s; %s is taken as mixed only once it carries a second upstream",
                            self.identity, topic, upstream, exc, topic)
                return False
            self._spread[key] = counts[0] < counts[1]
        return self._spread[key]

    def _upstream(self, tp: TP) -> Upstream | None:
        """The processors' group and input partition feeding ``tp``: from the headers of its
        last record, or, for a stream that delivered nothing, the same input partition number
        as its siblings' (processors write output partition = input partition)."""
        msg = self._last_msg.get(tp)
        if msg is not None:
            return _upstream_of(msg)
        for (topic, part), other in self._last_msg.items():
            up = _upstream_of(other) if topic == tp[0] else None
            if up is not None and up[2] == part:
                return up[0], up[1], tp[1]
        return None

    def _upstream_done(self, tp: TP, up: Upstream) -> bool:
        """True when the processors' group has committed its input partition up to its end
        and this collector has read ``tp`` to its end since: nothing is left upstream for this
        stream. Any doubt (an error, a timeout, nothing committed) is False: waiting adds
        latency, giving up would lose frames."""
        group, topic, part = up
        try:
            if self._admin is None:
                assert self._ctx is not None
                self._admin = self._ctx.kafka.admin()
            src = TopicPartition(topic, part)
            lo, hi = self.consumer.get_watermark_offsets(src, timeout=5, cached=False)
            fut = self._admin.list_consumer_group_offsets(
                [ConsumerGroupTopicPartitions(group, [src])], request_timeout=5)[group]
            committed = [p.offset for p in fut.result(timeout=10).topic_partitions
                         if p.topic == topic and p.partition == part and p.error is None]
            done = committed[0] >= hi if committed and committed[0] >= 0 else lo >= hi
            if not done:
                return False
            _lo, end = self.consumer.get_watermark_offsets(TopicPartition(*tp), timeout=5,
                                                           cached=False)
            pos = self.consumer.position([TopicPartition(*tp)])[0].offset
            return pos >= end
        except (KafkaException, IndexError, TimeoutError) as exc:
            # e.g. not authorized to describe the processors' group or input topic: the
            # stream is waited for until it delivers again (logged once per stream)
            level = logging.DEBUG if tp in self._upstream_warned else logging.WARNING
            self._upstream_warned.add(tp)
            log.log(level, "collector %s: cannot tell whether %s[%d] has more to come "
                    "(group %s, %s[%d]): %s; waiting for it", self.identity, tp[0], tp[1],
                    group, topic, part, exc)
            return False

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._assigned.update((p.topic, p.partition) for p in partitions)
        now = time.monotonic()
        for p in partitions:
            self._streams[(p.topic, p.partition)] = Stream()
            self._seen_at[(p.topic, p.partition)] = now
        if self._replay is not None:
            self._replay.on_assign(consumer, partitions)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if self._fenced is None:  # a fenced consumer's revoke: _recover committed already
            self._commit()
        self._on_lost(consumer, partitions)

    def _recover(self, err: KafkaError) -> None:
        """The consumer was fenced (a static member whose session the group coordinator
        gave to a newer join with the same ``group.instance.id``: after a broker restart,
        the collector's own rejoin). It reads nothing more, but the producer and its
        transaction are intact: commit what was emitted with the state (outputs, next id,
        consumed positions), drop the cache, and continue with a new consumer from the
        group's committed offsets, exactly as a restarted collector would from that state:
        re-read frames already emitted are replays, cached ones are read again."""
        assert self._ctx is not None
        log.warning("collector %s: %s; continuing with a new consumer from the committed "
                    "state", self.identity, err.str())
        self._commit()  # the input offsets cannot follow (fenced): the state holds them
        consumed = self._saved_consumed
        old = self.consumer
        # forget the old consumer's partitions and everything cached from them
        self._on_lost(old, [TopicPartition(t, p) for t, p in self._assigned])
        with contextlib.suppress(KafkaException, RuntimeError):
            old.close()
        pending = list(self.reorder.pending())
        self.reorder.stats.received -= len(pending)  # they are read, and counted, again
        stats = self.reorder.stats
        self.reorder = Reorderer(self.reorder.cache_size, self.reorder.max_delay,
                                 state=self.reorder.state)
        self.reorder.stats = stats
        self._cached.clear()
        self._last_uid.clear()
        self._paused.clear()
        self.saved = SavedState(self.reorder.state, consumed)
        self.consumer = self._ctx.kafka.consumer(self.cfg.group, self._consumer_conf)
        self.consumer.subscribe(self.cfg.input_topics, on_assign=self._on_assign,
                                on_revoke=self._on_revoke, on_lost=self._on_lost)
        self._fenced = None
        self._recovered_at = time.monotonic()
        self.recoveries += 1

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        gone = [(p.topic, p.partition) for p in partitions]
        self._assigned.difference_update(gone)
        for tp in gone:
            self._cached.pop(tp, None)
            self._streams.pop(tp, None)
            self._last_msg.pop(tp, None)
        self._at_end.difference_update(gone)
        self._paused.difference_update(gone)
        if self._replay is not None:
            self._replay.forget(partitions)

    def _on_stats(self, stats_json: str) -> None:
        self.lag = sum(consumer_lag(stats_json).values())


def _fenced(err: KafkaError) -> bool:
    """A static member fenced by a newer join with its ``group.instance.id`` (librdkafka
    returns it from consume() as a ``_FATAL`` event naming the id; its ``fatal()`` is
    False there)."""
    return err.code() == KafkaError.FENCED_INSTANCE_ID or (
        (err.fatal() or err.code() == KafkaError._FATAL) and "group.instance.id" in err.str())


def _high(st: Stream) -> int:
    return -1 if st.high is None else st.high


def _upstream_of(msg: Message) -> Upstream | None:
    """(group, topic, partition) from a processor output's ``pf.proc`` and ``pf.in``."""
    proc = codec.header(msg.headers() or [], PROC_HEADER)
    src = codec.header(msg.headers() or [], INPUT_HEADER)
    if not proc or not src:
        return None
    try:
        group = proc.decode().rsplit("/", 1)[0]
        topic, part = src.decode().rsplit("/", 1)
        return group, topic, int(part)
    except (UnicodeDecodeError, ValueError):
        return None


def _partitions(msgs: list[Message]) -> list[TP]:
    topics, parts = map(Message.topic, msgs), map(Message.partition, msgs)
    return cast(list[TP], list(zip(topics, parts, strict=True)))
