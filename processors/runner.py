"""The consumer's data plane: poll, decode, call the plugin, produce, commit.

One thread does all of it (the plugin is never called concurrently); librdkafka does the I/O
on its own threads outside the GIL. :class:`Runner` is a :class:`~pvaflow.component.Component`:
the lifecycle owns the loop, signals, runtime, reports and control, so a consumer stops, fails
and reports like every other stage. Delivery guarantees:

* at-least-once (default): an input offset is committed only after every record produced for
  it (outputs, DLQ copies) is acknowledged (:mod:`.tracking`);
* ``exactly_once``: consume-transform-produce in Kafka transactions, input offsets committed
  with ``send_offsets_to_transaction``; read_committed readers see each output once.

Batches (``--accumulate-objects N``, ``--accumulation-timeout T``, PvaPy's options): frames
are held until N have arrived or none arrived for T seconds, then handed to the plugin's
``process_batch`` (N at a time, then the rest), or, for plugins without one, to ``process``
one by one exactly as PvaPy's receiver queue releases them (one leaves whenever N are queued,
all of them after the timeout). A held record is not committable: a batch's offsets are
committed only after every output of the batch is delivered, and with ``exactly_once`` one
transaction covers the whole batch (its outputs and its offsets).

On a cooperative rebalance the revoked partitions' in-flight outputs are flushed and their
offsets committed before the partitions go, so the next owner starts where this one stopped.
A failure (a delivery that failed, a producer buffer that never drained before a stop, a lost
cluster) leaves the offsets uncommitted: the group's next owner reprocesses from the last
commit instead of skipping frames.
"""

from __future__ import annotations

import contextlib
import logging
import pprint
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from prometheus_client.registry import Collector

from pvaflow.codec import SESSION_HEADER, FrameError, Headers, decode, decode_key, encode, header
from pvaflow.codecs import SAME, encode_frame
from pvaflow.component import Context
from pvaflow.control import ComponentId
from pvaflow.dlq import as_reference, dlq_headers, record_size, topic_limit
from pvaflow.errors import PluginError, PvaflowError
from pvaflow.frame import Frame
from pvaflow.kafka.consume import take
from pvaflow.kafka.positions import Positions, ReplaySpec
from pvaflow.kafka.produce import Sender
from pvaflow.kafka.topics import Replication, ensure_topic
from pvaflow.metrics import consumer_lag
from pvaflow.options import COMMIT_INTERVAL
from pvaflow.plugin import Processor, PvaPyAdapter, object_id, outputs, takes_batches
from pvaflow.pva_channels import PvaChannels

from .stats import STATUS_SCHEMA, Stats, StatsCollector
from .tracking import OffsetTracker, Pending

log = logging.getLogger(__name__)

Record = tuple[bytes, Any, Headers]

KIND = "consumer"
PROC_HEADER = "pf.proc"  # which consumer produced an output: "group/consumer_id"
# The input partition an output came from, "topic/partition": with outputs partitioned like
# the input (the default) the collector knows which upstream partition feeds each of its
# streams, and can ask whether it has anything more for it.
INPUT_HEADER = "pf.in"
POLL = 0.1  # seconds one step waits for records (the lifecycle wants steps of ~0.2 s at most)
TOPIC_POLL = 0.5  # seconds between looks for the bridge's input topic


@dataclass
class RunnerConfig:
    input_topic: str
    group: str
    consumer_id: int = 1
    output_topic: str | None = None
    # Partitions when creating the output topic; None: as many as the input topic has.
    output_partitions: int | None = None
    # --output-codec: same (as received; new pixels in the input's codec), none, or a codec
    output_codec: str = SAME
    dlq_topic: str | None = None
    exactly_once: bool = False
    max_queue_size: int = 1000
    batch_size: int = 32
    commit_interval: float = COMMIT_INTERVAL
    # How long start() waits for the bridge to create the input topic (0: until stopped): the
    # run's --runtime, so a consumer started before its bridge neither gives up early nor
    # outlives the time it was given.
    topic_wait: float = 0.0
    output_channel: str | None = None
    status_channel: str | None = None
    control_channel: str | None = None
    replay: ReplaySpec | None = None  # --from-time/--to-time/--from-offset
    # PvaPy's -ao/-at: hold frames until N arrived or none for T seconds (N <= 0: off)
    accumulate_objects: int = 0
    accumulation_timeout: float = 1.0
    skip_initial_updates: int = 0  # PvaPy's -siu: the first N frames are not processed
    oid_field: str = "uniqueId"  # PvaPy's -of: the id in first/last_unique_id
    replication: Replication = field(default_factory=Replication)

    @property
    def name(self) -> str:
        return f"{self.group}/{self.consumer_id}"


class Runner:
    """Runs ``processor`` over the input topic. The constructor does no I/O, so a wrong
    option or plugin fails before any cluster is asked; :meth:`start` does it all."""

    schema = STATUS_SCHEMA

    def __init__(self, processor: Processor, cfg: RunnerConfig) -> None:
        self.plugin = processor
        self.cfg = cfg
        self.identity = ComponentId(KIND, cfg.group, str(cfg.consumer_id))
        self.counters = Stats(processor.get_stats)
        self.channels: PvaChannels | None = None
        self._tracker = OffsetTracker()
        self._proc_header = (PROC_HEADER, cfg.name.encode())
        self._debug = log.isEnabledFor(logging.DEBUG)
        self._batch = max(1, min(cfg.batch_size, cfg.max_queue_size))
        self._in_txn = False
        self._produced_in_txn = 0
        self._next_commit = 0.0
        self._failed: BaseException | None = None
        self._ctx: Context | None = None
        self._consumer: Consumer | None = None
        self._sender: Sender | None = None
        self._joined = False
        self._replay = Positions(cfg.replay) if cfg.replay is not None else None
        self._skip = max(0, cfg.skip_initial_updates)
        self._batched = takes_batches(processor)
        self._held: list[Held] = []  # frames accumulated for the next batch
        self._last_arrival = 0.0
        # The largest record the DLQ topic takes (min of its max.message.bytes and the
        # producer's message.max.bytes); a bigger dead letter goes as a reference.
        self._dlq_limit = 0
        self._dlq_refused: list[tuple[Any, list[Any], str, Any]] = []  # resend as references
        self._dlq_reference: set[tuple[str, int, int]] = set()  # origins to reference (EOS)
        # Output partition = input partition (when the output topic has enough partitions):
        # each output partition is then one upstream stream in increasing uniqueId order.
        self.same_partition = False

    # -- the clients (made in start) ------------------------------------------------------

    @property
    def consumer(self) -> Consumer:
        assert self._consumer is not None, "start() first"
        return self._consumer

    @property
    def producer(self) -> Producer:
        assert self._sender is not None, "start() first"
        return self._sender.producer  # the sender may have replaced it (batch size)

    @property
    def ctx(self) -> Context:
        assert self._ctx is not None, "start() first"
        return self._ctx

    def _consumer_conf(self, ctx: Context) -> dict[str, Any]:
        extra: dict[str, Any] = {"client.id": f"pvaflow-consumer-{self.cfg.name}",
                                 "statistics.interval.ms": 1000}
        if self.cfg.exactly_once:
            extra["isolation.level"] = "read_committed"
        conf = ctx.kafka.consumer_config(self.cfg.group, **extra)
        conf["stats_cb"] = self._on_stats
        conf["enable.auto.commit"] = False  # commits follow deliveries, never a timer
        return conf

    def _producer_conf(self, ctx: Context) -> dict[str, Any]:
        extra: dict[str, Any] = {"client.id": f"pvaflow-consumer-{self.cfg.name}"}
        if self.cfg.exactly_once:
            extra.update({
                "transactional.id": f"pvaflow-{self.cfg.name}",
                # A killed member's open transaction blocks read_committed readers until it
                # times out: keep that short. Deliveries must finish within a transaction.
                "transaction.timeout.ms": 10_000,
                "message.timeout.ms": 10_000,
            })
        return ctx.kafka.producer_config(**extra)

    # -- lifecycle ------------------------------------------------------------------------

    def start(self, ctx: Context) -> None:
        cfg = self.cfg
        self._ctx = ctx
        try:
            admin = ctx.kafka.admin()
            if cfg.dlq_topic:
                ensure_topic(cfg.dlq_topic, 1, admin=admin, strict=False,
                             replication=cfg.replication)
            # The clients before the wait: a refused -X setting is reported at once, not
            # when the bridge finally creates the topic.
            self._consumer = ctx.kafka.consumer(cfg.group, self._consumer_conf(ctx))
            producer_conf = self._producer_conf(ctx)
            producer = ctx.kafka.producer(producer_conf)
            self._sender = ctx.sender(producer, on_full="fail", conf=producer_conf)
            if cfg.dlq_topic:
                limits = [int(producer_conf.get("message.max.bytes", 1_000_000)),
                          topic_limit(admin, cfg.dlq_topic) or 1 << 62]
                self._dlq_limit = min(limits)
            if cfg.exactly_once:
                producer.init_transactions(30)
            inputs = self._wait_for_input(admin)
            if ctx.stop.is_set():
                self._release()  # stopped while waiting: nothing was consumed
                return
            if cfg.output_topic:
                self._ensure_output(admin, inputs)
            self.channels = self._make_channels(ctx)
            try:
                self.plugin.start()
            except Exception as exc:
                log.debug("plugin start() failed", exc_info=True)
                raise PluginError(f"plugin {type(self.plugin).__name__} failed to start: "
                                  f"{type(exc).__name__}: {exc}") from None
            self._consumer.subscribe([cfg.input_topic], on_assign=self._on_assign,
                                     on_revoke=self._on_revoke, on_lost=self._on_lost)
        except BaseException:
            self._release()  # the lifecycle closes only what started
            raise
        self._next_commit = time.monotonic() + cfg.commit_interval
        log.info("consumer %s: %s -> %s (plugin %s, %s)", cfg.name, cfg.input_topic,
                 cfg.output_topic or "-", type(self.plugin).__name__,
                 "exactly-once" if cfg.exactly_once else "at-least-once")

    def _ensure_output(self, admin: AdminClient, inputs: int) -> None:
        """Create the output topic (as many partitions as the input unless
        ``--output-partitions`` says otherwise) and choose the output partitioning."""
        cfg = self.cfg
        assert cfg.output_topic
        count = ensure_topic(cfg.output_topic, cfg.output_partitions or inputs, admin=admin,
                             strict=False, replication=cfg.replication)
        self.same_partition = count >= inputs
        if not self.same_partition:
            log.warning("consumer %s: %s has %d partition(s), fewer than the %d of %s: outputs "
                        "are spread by uniqueId hash, so a collector cannot tell one upstream "
                        "partition from another and may have to give ids up (create %s with "
                        ">= %d partitions)", cfg.name, cfg.output_topic, count, inputs,
                        cfg.input_topic, cfg.output_topic, inputs)

    def _wait_for_input(self, admin: AdminClient) -> int:
        """The bridge creates the frames topic (it owns the partition count): wait for it and
        return its partition count (0 if stopped while waiting)."""
        ctx, topic, wait = self.ctx, self.cfg.input_topic, self.cfg.topic_wait
        deadline = time.monotonic() + wait if wait > 0 else float("inf")
        warned = False
        while not ctx.stop.is_set():
            try:
                meta = admin.list_topics(timeout=10)  # all topics: never auto-creates this one
            except KafkaException:
                admin.poll(0)  # serve the error callback: health learns the cluster is gone
            else:
                t = meta.topics.get(topic)
                if t is not None and t.error is None and t.partitions:
                    return len(t.partitions)
            ctx.kafka.health.check()
            if time.monotonic() >= deadline:
                raise PvaflowError(f"input topic {topic} did not appear within {wait:g} s",
                                   hint="start the bridge that writes it, or check "
                                        "--input-topic / --distributor-set")
            if not warned:
                log.info("waiting for topic %s to be created by the bridge", topic)
                warned = True
            ctx.stop.wait(TOPIC_POLL)
        return 0

    def _make_channels(self, ctx: Context) -> PvaChannels | None:
        cfg = self.cfg
        if not (cfg.output_channel or cfg.status_channel or cfg.control_channel):
            return None
        plugin = self.plugin
        declared = plugin.inner.getStatsPvaTypes() if isinstance(plugin, PvaPyAdapter) \
            and hasattr(plugin.inner, "getStatsPvaTypes") else None
        sample = self.counters.plugin_stats() or {}
        return PvaChannels(
            cfg.consumer_id, ctx.commands, ctx.stop.set, output=cfg.output_channel,
            status=cfg.status_channel, control=cfg.control_channel,
            user_stats_types=PvaChannels.user_types_from(sample, declared))

    def step(self) -> None:
        try:
            self._step()
        except (PvaflowError, KafkaException) as exc:
            self._failed = exc  # close() must not commit past what was not delivered
            raise
        if self._failed is not None:  # a commit on revoke failed inside consume()
            raise self._failed

    def _step(self) -> None:
        producer, cfg = self.producer, self.cfg
        if len(producer) > cfg.max_queue_size:
            producer.poll(POLL)  # backpressure: memory stays bounded until deliveries catch up
        else:
            if cfg.exactly_once and not self._in_txn:
                producer.begin_transaction()
                self._in_txn = True
            msgs = take(self.consumer, self._batch, POLL)
            if self._replay is not None:
                msgs = self._replay.filter(self.consumer, msgs)
                if self._replay.finished():
                    self.ctx.stop.set()  # every partition is past --to-time
            if msgs:
                self._handle(msgs)
            if self._held:
                self._release_held()
            producer.poll(0)
            if self._dlq_refused:
                self._resend_references()
        now = time.monotonic()
        if now >= self._next_commit:
            self._next_commit = now + cfg.commit_interval
            self._commit()
            self.counters.producer_queue = len(producer)
            self.counters.update_rate()

    def close(self) -> int:
        """Bounded when Kafka is gone or the run failed: nothing more may be committed then,
        and a stopping consumer must not hang on a dead cluster. A final commit that fails is
        raised after everything is released, so the lifecycle prints it as the one error
        line of the run."""
        if self._consumer is None:  # released already (stopped while waiting for the topic)
            return 0
        producer = self.producer
        error: BaseException | None = None
        if self._failed is None and self.ctx.kafka.health.reachable:
            try:
                if self._held:  # the run ends: the last, partial batch goes out now
                    if self.cfg.exactly_once and not self._in_txn:
                        producer.begin_transaction()
                        self._in_txn = True
                    self._release_held(force=True)
                producer.flush(30)
                self._commit(sync=True)
            except (PvaflowError, KafkaException) as exc:
                error = self._failed = exc
        else:  # nothing more can be committed: the offsets stay where the last commit put them
            producer.flush(1)
            if self._in_txn:
                try:
                    producer.abort_transaction(5)
                except KafkaException as exc:
                    log.warning("aborting the open transaction: %s", exc)
                self._in_txn = False
        try:
            self.plugin.stop()
        except Exception:
            log.exception("plugin stop() failed")
        self.counters.update_rate()
        if self.channels is not None:
            self.channels.update_status(self.stats())
        self._release()
        if error is not None:
            raise error
        return 0 if self._failed is None else 1

    def _release(self) -> None:
        if self.channels is not None:
            self.channels.stop()
            self.channels = None
        if self._consumer is not None:
            try:
                self._consumer.close()
            except KafkaException as exc:
                log.warning("consumer close: %s", exc)
            self._consumer = None

    # -- the hot path ---------------------------------------------------------------------

    def _handle(self, msgs: list[Message]) -> None:
        stats, tracker = self.counters, self._tracker
        accumulate = self.cfg.accumulate_objects > 0
        oid_field = self.cfg.oid_field
        for msg in msgs:
            err = msg.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    if err.fatal():
                        raise KafkaException(err)
                    log.warning("consumer error: %s", err)
                continue
            topic, part = cast(str, msg.topic()), cast(int, msg.partition())
            rec = tracker.add(topic, part, cast(int, msg.offset()))
            value = msg.value()
            stats.received += 1
            stats.bytes_in += len(value) if value else 0
            try:
                frame = decode(msg.key(), value, msg.headers())
            except FrameError as exc:
                stats.decode_errors += 1
                seq = _sequence(msg)  # it arrived: not a gap, whatever else is wrong with it
                if seq >= 0:
                    stats.partition(topic, part).see(seq, _session(msg))
                self._dead_letter(msg, "decode", exc, rec)
                continue
            if frame.sequence >= 0:
                stats.partition(topic, part).see(frame.sequence, _session(msg))
            if oid_field == "uniqueId":
                stats.saw_uid(frame.unique_id)
            else:
                oid = object_id(frame, oid_field)
                if oid is not None:
                    stats.saw_uid(oid)
            if self._skip > 0:  # --skip-initial-updates: consumed and committed, not processed
                self._skip -= 1
                stats.skipped += 1
                continue
            if accumulate:
                rec.left += 1  # held: not committable until its batch is out
                self._held.append((msg, rec, frame))
                self._last_arrival = time.monotonic()
                continue
            self._process(msg, rec, frame)

    def _release_held(self, force: bool = False) -> None:
        """Hand the accumulated frames to the plugin when they are due (see the module doc)."""
        held, n = self._held, self.cfg.accumulate_objects
        timed_out = force or time.monotonic() - self._last_arrival >= \
            self.cfg.accumulation_timeout
        for size in due(len(held), n, timed_out, self._batched):
            batch = held[:size]
            del held[:size]
            if self._batched:
                self._process_batch(batch)
            else:
                for msg, rec, frame in batch:
                    self._process(msg, rec, frame)
                    rec.left -= 1  # the hold, after the outputs took theirs

    def _process(self, msg: Message, rec: Pending, frame: Frame) -> None:
        """One frame through ``process`` and out."""
        stats = self.counters
        t0 = time.perf_counter()
        try:
            outs = outputs(self.plugin.process(frame))
        except Exception as exc:
            stats.errors += 1
            if self._debug:
                log.debug("plugin failed on frame %d", frame.unique_id, exc_info=True)
            self._dead_letter(msg, "process", exc, rec)
            return
        stats.processing.observe(time.perf_counter() - t0)
        stats.processed += 1
        if frame.timestamp.seconds:
            stats.end_to_end.observe(max(time.time() - frame.timestamp.to_float(), 0.0))
        if self._debug:
            log.debug("consumer %s processed frame %d (%s[%d]@%d) -> %d output(s)",
                      self.cfg.name, frame.unique_id, msg.topic(), msg.partition(),
                      msg.offset(), len(outs))
        self._emit(msg, rec, outs)

    def _process_batch(self, batch: list[Held]) -> None:
        """A batch through ``process_batch``; its records are held (``rec.left``) until every
        output of the batch is delivered, then all released together."""
        stats = self.counters
        frames = [frame for _msg, _rec, frame in batch]
        t0 = time.perf_counter()
        try:
            outs = outputs(self.plugin.process_batch(frames))
        except Exception as exc:
            stats.errors += len(batch)
            if self._debug:
                log.debug("plugin failed on a batch of %d", len(batch), exc_info=True)
            for msg, rec, _frame in batch:
                self._dead_letter(msg, "process", exc, rec)
                rec.left -= 1
            return
        per_frame = (time.perf_counter() - t0) / len(batch)
        now = time.time()
        for frame in frames:
            stats.processing.observe(per_frame)
            if frame.timestamp.seconds:
                stats.end_to_end.observe(max(now - frame.timestamp.to_float(), 0.0))
        stats.processed += len(batch)
        stats.batches += 1
        if self._debug:
            log.debug("consumer %s processed a batch of %d (uniqueId %d..%d) -> %d output(s)",
                      self.cfg.name, len(batch), frames[0].unique_id, frames[-1].unique_id,
                      len(outs))
        delivery = BatchDelivery([rec for _msg, rec, _frame in batch])
        by_uid = {frame.unique_id: msg for msg, _rec, frame in batch}
        for out in outs:  # an output is dead-lettered as the input with its uniqueId
            self._emit(by_uid.get(out.unique_id, batch[0][0]), delivery, [out])
        delivery(None, None)  # every output is produced: the batch may be released

    def _emit(self, msg: Message, rec: Pending | BatchDelivery, outs: list[Frame]) -> None:
        stats = self.counters
        at_least_once = not self.cfg.exactly_once
        out_topic, channels = self.cfg.output_topic, self.channels
        policy = self.cfg.output_codec
        partition = cast(int, msg.partition())
        source = (INPUT_HEADER, f"{msg.topic()}/{partition}".encode())
        out_partition = partition if self.same_partition else None
        for out in outs:
            if out_topic or channels is not None:
                try:  # the output policy (a passthrough's frame is not decoded)
                    out, (key, val, headers) = output_record(out, policy)
                except FrameError as exc:
                    stats.errors += 1
                    self._dead_letter(msg, "output", exc, rec)
                    continue
            if out_topic:
                headers.append(self._proc_header)
                headers.append(source)
                if at_least_once:
                    rec.left += 1
                    self._produce(out_topic, val, key, headers, rec, out_partition)
                else:
                    self._produce(out_topic, val, key, headers, None, out_partition)
                stats.bytes_out += val.nbytes
            stats.outputs += 1
            if channels is not None:
                channels.publish(out)

    def _produce(self, topic: str, value: Any, key: bytes | None, headers: Any,
                 on_delivery: Any, partition: int | None = None) -> None:
        """Waits for room as long as it takes (the input is a durable log); a stop or a lost
        cluster raises BufferFull / KafkaUnavailable with the record's offset uncommitted."""
        assert self._sender is not None
        self._sender.send(topic, value, key, partition=partition, headers=headers,
                          on_delivery=on_delivery)
        self._produced_in_txn += 1

    def _dead_letter(self, msg: Message, stage: str, exc: BaseException, rec: Any) -> None:
        reason = getattr(exc, "reason", None) or f"{type(exc).__name__}: {exc}"
        uid = None  # the frame id, for --log-format json (an undecodable key has none)
        with contextlib.suppress(FrameError):
            uid = decode_key(msg.key())
        log.warning("consumer %s: %s[%d]@%d -> DLQ (%s): %s", self.cfg.name, msg.topic(),
                    msg.partition(), msg.offset(), stage, reason, extra={"unique_id": uid})
        if not self.cfg.dlq_topic:
            return
        topic, key, value = self.cfg.dlq_topic, msg.key(), msg.value()
        headers = dlq_headers(msg, stage, exc, self.cfg.name)
        origin = (cast(str, msg.topic()), cast(int, msg.partition()), cast(int, msg.offset()))
        size = record_size(key, value, headers)
        if size > self._dlq_limit or origin in self._dlq_reference:
            # The copy would be refused, and a refused copy would stop the partition for good
            value, headers = None, as_reference(headers, self._too_large(size))
            self._dlq_reference.discard(origin)
        if self.cfg.exactly_once:  # a refused copy aborts the transaction: reference it next
            self._produce(topic, value, key, headers, _DlqRefused(self, origin, None))
        else:
            rec.left += 1
            on_delivery = rec if value is None else _DlqRefused(self, origin, rec, key, headers)
            self._produce(topic, value, key, headers, on_delivery)
        self.counters.dlq += 1

    def _too_large(self, size: int | None = None) -> str:
        what = f"{size} bytes" if size is not None else "the record"
        return (f"value left out: {what} exceed(s) what {self.cfg.dlq_topic} takes "
                f"({self._dlq_limit} bytes: max.message.bytes / message.max.bytes)")

    def _resend_references(self) -> None:
        """Dead letters the broker refused as too large go again as references (the input
        offset stays uncommitted until they are delivered)."""
        refused, self._dlq_refused = self._dlq_refused, []
        for key, headers, why, rec in refused:
            log.warning("consumer %s: %s; dead-lettering a reference instead", self.cfg.name,
                        why)
            self._produce(cast(str, self.cfg.dlq_topic), None, key,
                          as_reference(headers, why), rec)

    # -- commits --------------------------------------------------------------------------

    def _commit(self, sync: bool = False, only: set[tuple[str, int]] | None = None) -> None:
        if self.cfg.exactly_once:
            self._commit_transaction()
            return
        if sync:
            self.producer.flush(30)
        self.producer.poll(0)
        if self._dlq_refused:
            self._resend_references()
            if sync:
                self.producer.flush(30)
        offsets = self._tracker.committable(only)
        if offsets:
            try:
                if sync:
                    self.consumer.commit(offsets=offsets, asynchronous=False)
                else:
                    self.consumer.commit(offsets=offsets, asynchronous=True)
            except KafkaException as exc:
                # A commit can fail during a rebalance; the next one covers the same offsets.
                log.warning("commit failed: %s", exc)

    def _commit_transaction(self, reopen: bool = False) -> None:
        """Commit the open transaction; ``reopen`` starts the next one at once (needed inside
        a rebalance callback, where the same consume() call may still return records)."""
        if not self._in_txn:
            return
        offsets = self._tracker.committable()
        if not offsets and not self._produced_in_txn:
            return
        try:
            if offsets:
                self.producer.send_offsets_to_transaction(
                    offsets, self.consumer.consumer_group_metadata(), 30)
            self.producer.commit_transaction(30)
        except KafkaException as exc:
            err = exc.args[0]
            if not err.txn_requires_abort():
                raise
            log.warning("transaction aborted (%s); rewinding to the last commit", err)
            self.producer.abort_transaction(30)
            self._rewind()
        self._in_txn = False
        self._produced_in_txn = 0
        if reopen:
            self.producer.begin_transaction()
            self._in_txn = True

    def _rewind(self) -> None:
        """After an abort, reprocess from the committed offsets (the outputs were discarded)."""
        assignment = self.consumer.assignment()
        self._tracker.drop(assignment)
        for tp in self.consumer.committed(assignment, timeout=30):
            if tp.offset >= 0:
                self.consumer.seek(tp)

    # -- rebalancing (called from inside consume() and close()) ---------------------------

    def _on_assign(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.info("consumer %s assigned %s", self.cfg.name, _fmt(partitions))
        self._joined = True  # a member with no partition (more members than partitions) too
        if self._replay is not None:
            self._replay.on_assign(_consumer, partitions)
        for tp in partitions:
            self.counters.forget_partition(tp.topic, tp.partition)

    def _on_revoke(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.info("consumer %s revoked %s", self.cfg.name, _fmt(partitions))
        if self._failed is None and self.ctx.kafka.health.reachable:
            try:
                if self.cfg.exactly_once:
                    self._commit_transaction(reopen=True)
                else:
                    self._commit(sync=True,
                                 only={(tp.topic, tp.partition) for tp in partitions})
            except (PvaflowError, KafkaException) as exc:
                self._failed = exc  # raised by step(): callbacks cannot end the run
        self._tracker.drop(partitions)
        self._drop_held(partitions)
        for tp in partitions:
            self.counters.forget_partition(tp.topic, tp.partition)
        if self._replay is not None:
            self._replay.forget(partitions)

    def _on_lost(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.warning("consumer %s lost %s (no commit possible)", self.cfg.name, _fmt(partitions))
        self._tracker.drop(partitions)
        self._drop_held(partitions)

    def _drop_held(self, partitions: list[TopicPartition]) -> None:
        """Held frames of partitions that went: uncommitted, so their next owner has them."""
        if self._held:
            gone = {(tp.topic, tp.partition) for tp in partitions}
            self._held = [h for h in self._held if (h[0].topic(), h[0].partition()) not in gone]

    def _on_stats(self, stats_json: str) -> None:
        with contextlib.suppress(ValueError):
            self.counters.lag = consumer_lag(stats_json)

    # -- status and commands (the lifecycle calls these) ----------------------------------

    def stats(self) -> dict[str, Any]:
        return {"consumer_id": self.cfg.consumer_id, "group": self.cfg.group,
                **self.counters.snapshot()}

    def configure(self, args: dict[str, Any]) -> dict[str, Any]:
        """PvaPy's framework keys are applied here and, as in PvaPy, the whole dict also
        goes to the plugin. ``skipInitialUpdates``: the next N frames are not processed;
        ``objectIdOffset`` and ``receiverQueueSize`` have nothing to set in a Kafka consumer
        (the reply says why) and change nothing."""
        reply: dict[str, Any] = {"configured": args}
        notes: dict[str, str] = {}
        if "skipInitialUpdates" in args:
            try:
                self._skip = max(0, int(args["skipInitialUpdates"]))
            except (TypeError, ValueError):
                raise ValueError(f"skipInitialUpdates must be a whole number, got "
                                 f"{args['skipInitialUpdates']!r}") from None
            reply["skipInitialUpdates"] = self._skip
        for key, why in FRAMEWORK_NOOPS.items():
            if key in args:
                notes[key] = why
        if notes:
            reply["ignored"] = notes
        self.plugin.configure(args)
        return reply

    def reset_stats(self) -> None:
        self.counters.reset()
        self.plugin.reset_stats()

    def report(self, final: bool = False) -> str:
        snap = self.stats()
        if self.channels is not None:
            self.channels.update_status(snap)
        snap["final"] = final
        return pprint.pformat(snap, sort_dicts=False)

    def ready(self) -> str | None:
        """Ready once the group has taken this member in (it holds its share, maybe none)."""
        return None if self._joined else f"joining group {self.cfg.group}"

    def metrics(self) -> Collector:
        return StatsCollector(self.counters, {
            "component": KIND, "group": self.cfg.group,
            "consumer_id": str(self.cfg.consumer_id), "topic": self.cfg.input_topic})


Held = tuple[Message, Pending, Frame]

# PvaPy framework keys of ``configure`` that set nothing here, and why.
FRAMEWORK_NOOPS = {
    "receiverQueueSize": "Kafka is the consumer's receive queue: records wait in the topic, "
                         "bounded by its retention; --max-queue-size bounds the outputs "
                         "in flight",
    "objectIdOffset": "missed frames are counted from the bridge's per-partition sequence "
                      "numbers (sequence_gaps), which need no id step",
}


def due(held: int, n: int, timed_out: bool, batched: bool) -> list[int]:
    """Sizes of the groups of held frames to hand to the plugin now, oldest first.

    ``batched`` (``process_batch``): whole batches of ``n``, then, after the timeout, the
    rest as one batch. Otherwise PvaPy's receiver queue: while ``n`` or more are queued the
    oldest one is processed; after the timeout every queued one is.
    """
    if held <= 0:
        return []
    if batched:
        sizes = [n] * (held // n)
        rest = held - n * len(sizes)
        return [*sizes, rest] if timed_out and rest else sizes
    ready = held if timed_out else max(0, held - n + 1)
    return [1] * ready


class BatchDelivery:
    """The delivery callback of a batch's outputs: the batch's records stay held until the
    last output is acknowledged (then each record's hold is released), and a failed delivery
    fails every record of the batch. Starts with one count that the runner drops once every
    output has been produced."""

    __slots__ = ("left", "recs")

    def __init__(self, recs: list[Pending]) -> None:
        self.recs = recs
        self.left = 1

    def __call__(self, err: KafkaError | None, _msg: Any) -> None:
        if err is not None:
            for rec in self.recs:
                if rec.error is None:
                    rec.error = err
        self.left -= 1
        if self.left == 0:
            for rec in self.recs:
                rec.left -= 1


def output_record(frame: Frame, policy: str = SAME) -> tuple[Frame, Record]:
    """An output frame after the stage's ``--output-codec`` policy, and its Kafka record (key,
    value, headers). A frame that kept its payload (a passthrough's) is not decoded and its
    value is the payload it came with; new pixels from a compressed input are compressed
    again with its codec under ``same``. ``FrameError`` when the policy cannot be applied."""
    out = encode_frame(frame, policy)
    return out, encode(out)


class _DlqRefused:
    """Delivery callback of a dead letter sent with its value: a refusal for size
    (MSG_SIZE_TOO_LARGE) is not a failure of the run but a reason to send a reference: the
    runner resends it (at-least-once) or references that origin when it comes again after the
    aborted transaction (exactly-once). Any other outcome goes to the input's
    :class:`~.tracking.Pending` as usual."""

    __slots__ = ("headers", "key", "origin", "rec", "runner")

    def __init__(self, runner: Runner, origin: tuple[str, int, int], rec: Any,
                 key: bytes | None = None, headers: list[Any] | None = None) -> None:
        self.runner, self.origin, self.rec = runner, origin, rec
        self.key, self.headers = key, headers

    def __call__(self, err: KafkaError | None, msg: Any) -> None:
        runner = self.runner
        if err is not None and err.code() == KafkaError.MSG_SIZE_TOO_LARGE:
            why = f"{runner._too_large()}; the broker refused the copy ({err.str()})"
            if self.rec is None:
                runner._dlq_reference.add(self.origin)
            else:
                runner._dlq_refused.append((self.key, self.headers or [], why, self.rec))
            return
        if self.rec is not None:
            self.rec(err, msg)


def _session(msg: Message) -> Callable[[], bytes | None]:
    """Reads the record's bridge session, when :class:`PartitionSeq` asks (rarely)."""
    return lambda: header(msg.headers() or [], SESSION_HEADER)


def _sequence(msg: Message) -> int:
    """``pf.seq`` of a record that could not be decoded (-1 without a readable one)."""
    try:
        raw = header(msg.headers() or [], "pf.seq")
        return int(raw) if raw is not None else -1
    except (ValueError, TypeError):
        return -1


def _fmt(partitions: list[TopicPartition]) -> str:
    return ", ".join(f"{tp.topic}[{tp.partition}]" for tp in partitions) or "nothing"
