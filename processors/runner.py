"""The consumer's data plane: poll, decode, call the plugin, produce, commit.

One thread does all of it (the plugin is never called concurrently); librdkafka does the I/O
on its own threads outside the GIL. Delivery guarantees:

* at-least-once (default): an input offset is committed only after every record produced for
  it (outputs, DLQ copies) is acknowledged (:mod:`.tracking`);
* ``exactly_once``: consume-transform-produce in Kafka transactions, input offsets committed
  with ``send_offsets_to_transaction``; read_committed readers see each output once.

On a cooperative rebalance the revoked partitions' in-flight outputs are flushed and their
offsets committed before the partitions go, so the next owner starts where this one stopped.
"""

from __future__ import annotations

import contextlib
import logging
import pprint
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from pvaflow.codec import FrameError, decode, encode
from pvaflow.control import CommandBus
from pvaflow.dlq import dlq_headers
from pvaflow.kafka.settings import consumer_config, producer_config
from pvaflow.metrics import consumer_lag
from pvaflow.plugin import Processor, outputs

from .pva_channels import PvaChannels
from .stats import Stats
from .tracking import DeliveryFailed, OffsetTracker

log = logging.getLogger(__name__)

PROC_HEADER = "pf.proc"  # which consumer produced an output: "group/consumer_id"


@dataclass
class RunnerConfig:
    input_topics: list[str]
    group: str
    consumer_id: int = 1
    output_topic: str | None = None
    dlq_topic: str | None = None
    bootstrap: str | None = None
    overrides: list[tuple[str, str]] = field(default_factory=list)
    exactly_once: bool = False
    max_queue_size: int = 1000
    batch_size: int = 32
    commit_interval: float = 0.2
    runtime: float = 0.0
    report_period: float = 10.0

    @property
    def name(self) -> str:
        return f"{self.group}/{self.consumer_id}"


class Runner:
    """Runs ``processor`` over the input topics until stopped, the runtime ends, or a fatal
    Kafka error; :meth:`run` returns the process exit code."""

    def __init__(self, processor: Processor, cfg: RunnerConfig, *,
                 bus: CommandBus | None = None, channels: PvaChannels | None = None,
                 stats: Stats | None = None) -> None:
        self.plugin = processor
        self.cfg = cfg
        self.bus = bus or CommandBus()
        self.channels = channels
        self.stats = stats or Stats(processor.get_stats)
        self.stop_event = threading.Event()
        self.extra_stop: Callable[[], bool] = lambda: False
        self._tracker = OffsetTracker()
        self._proc_header = (PROC_HEADER, cfg.name.encode())
        self._debug = log.isEnabledFor(logging.DEBUG)
        self._in_txn = False
        self._produced_in_txn = 0
        self.consumer = Consumer(self._consumer_conf())
        self.producer = Producer(self._producer_conf())

    # -- configuration --------------------------------------------------------------------

    def _consumer_conf(self) -> dict[str, Any]:
        extra: dict[str, Any] = {"client.id": f"pvaflow-consumer-{self.cfg.name}",
                                 "statistics.interval.ms": 1000, "stats_cb": self._on_stats}
        if self.cfg.exactly_once:
            extra["isolation.level"] = "read_committed"
        conf = consumer_config(self.cfg.group, self.cfg.bootstrap, None, **{})
        conf.update(extra)
        conf.update(dict(self.cfg.overrides))
        conf["enable.auto.commit"] = False  # commits follow deliveries, never a timer
        return conf

    def _producer_conf(self) -> dict[str, Any]:
        extra: dict[str, Any] = {"client.id": f"pvaflow-consumer-{self.cfg.name}"}
        if self.cfg.exactly_once:
            extra.update({
                "transactional.id": f"pvaflow-{self.cfg.name}",
                # A killed member's open transaction blocks read_committed readers until it
                # times out: keep that short. Deliveries must finish within a transaction.
                "transaction.timeout.ms": 10_000,
                "message.timeout.ms": 10_000,
            })
        conf = producer_config(self.cfg.bootstrap, None)
        conf.update(extra)
        conf.update(dict(self.cfg.overrides))
        return conf

    # -- lifecycle ------------------------------------------------------------------------

    def request_stop(self) -> None:
        self.stop_event.set()

    def run(self) -> int:
        cfg = self.cfg
        if cfg.exactly_once:
            self.producer.init_transactions(30)
        self.consumer.subscribe(cfg.input_topics, on_assign=self._on_assign,
                                on_revoke=self._on_revoke, on_lost=self._on_lost)
        self.plugin.start()
        log.info("consumer %s: %s -> %s (plugin %s, %s)", cfg.name, ",".join(cfg.input_topics),
                 cfg.output_topic or "-", type(self.plugin).__name__,
                 "exactly-once" if cfg.exactly_once else "at-least-once")
        code = 0
        try:
            self._loop()
        except (DeliveryFailed, KafkaException) as exc:
            log.error("consumer %s stopping on fatal error: %s", cfg.name, exc)
            code = 1
        finally:
            code = self._shutdown(code)
        return code

    def _loop(self) -> None:
        cfg = self.cfg
        deadline = time.monotonic() + cfg.runtime if cfg.runtime > 0 else float("inf")
        next_commit = time.monotonic() + cfg.commit_interval
        next_report = time.monotonic() + cfg.report_period if cfg.report_period > 0 else \
            float("inf")
        batch = max(1, min(cfg.batch_size, cfg.max_queue_size))
        consumer, producer = self.consumer, self.producer
        while not self.stop_event.is_set() and not self.extra_stop():
            self.bus.run_pending(self.execute)
            if cfg.exactly_once and not self._in_txn:
                producer.begin_transaction()
                self._in_txn = True
            msgs = consumer.consume(batch, 0.1)
            if msgs:
                self._handle(msgs)
            producer.poll(0)
            while len(producer) > cfg.max_queue_size and not self.stop_event.is_set():
                producer.poll(0.01)  # backpressure: bounded memory (stop still works)
            now = time.monotonic()
            if now >= next_commit:
                next_commit = now + cfg.commit_interval
                self._commit()
                self.stats.producer_queue = len(producer)
                self.stats.update_rate()
            if now >= next_report:
                next_report = now + cfg.report_period
                self.report()
            if now >= deadline:
                log.info("consumer %s: runtime of %gs reached", cfg.name, cfg.runtime)
                break

    def _shutdown(self, code: int) -> int:
        self.bus.run_pending(self.execute)  # answer commands that arrived while stopping
        try:
            self.producer.flush(30)
            if code == 0:
                self._commit(sync=True)
            elif self._in_txn:
                self.producer.abort_transaction(10)
                self._in_txn = False
        except (DeliveryFailed, KafkaException) as exc:
            log.error("final commit failed: %s", exc)
            code = 1
        try:
            self.plugin.stop()
        except Exception:
            log.exception("plugin stop() failed")
        self.stats.update_rate()
        self.report(final=True)
        try:
            self.consumer.close()
        except KafkaException as exc:
            log.warning("consumer close: %s", exc)
        return code

    # -- the hot path ---------------------------------------------------------------------

    def _handle(self, msgs: list[Message]) -> None:
        stats, tracker, plugin = self.stats, self._tracker, self.plugin
        at_least_once = not self.cfg.exactly_once
        out_topic, channels = self.cfg.output_topic, self.channels
        clock, wall = time.perf_counter, time.time
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
                self._dead_letter(msg, "decode", exc, rec)
                continue
            if frame.sequence >= 0:
                stats.partition(topic, part).see(frame.sequence)
            stats.saw_uid(frame.unique_id)
            t0 = clock()
            try:
                outs = outputs(plugin.process(frame))
            except Exception as exc:
                stats.errors += 1
                if self._debug:
                    log.debug("plugin failed on frame %d", frame.unique_id, exc_info=True)
                self._dead_letter(msg, "process", exc, rec)
                continue
            t1 = clock()
            stats.processing.observe(t1 - t0)
            stats.processed += 1
            if frame.timestamp.seconds:
                stats.end_to_end.observe(max(wall() - frame.timestamp.to_float(), 0.0))
            if self._debug:
                log.debug("consumer %s processed frame %d (%s[%d]@%d) -> %d output(s)",
                          self.cfg.name, frame.unique_id, topic, part, msg.offset(), len(outs))
            for out in outs:
                if out_topic:
                    try:
                        key, val, headers = encode(out)
                    except FrameError as exc:
                        stats.errors += 1
                        self._dead_letter(msg, "output", exc, rec)
                        continue
                    headers.append(self._proc_header)
                    if at_least_once:
                        rec.left += 1
                        self._produce(out_topic, val, key, headers, rec)
                    else:
                        self._produce(out_topic, val, key, headers, None)
                    stats.bytes_out += val.nbytes
                stats.outputs += 1
                if channels is not None:
                    channels.publish(out)

    def _produce(self, topic: str, value: Any, key: bytes | None, headers: Any,
                 on_delivery: Any) -> None:
        while True:
            try:
                if on_delivery is None:
                    self.producer.produce(topic, value, key, headers=headers)
                else:
                    self.producer.produce(topic, value, key, headers=headers,
                                          on_delivery=on_delivery)
                self._produced_in_txn += 1
                return
            except BufferError:  # librdkafka's queue is full: serve deliveries and retry
                self.producer.poll(0.05)
                self.bus.run_pending(self.execute)  # a stop command must still get through
                if self.stop_event.is_set():  # broker unreachable: leave it uncommitted
                    raise DeliveryFailed("stopped while the producer buffer was full") from None

    def _dead_letter(self, msg: Message, stage: str, exc: BaseException, rec: Any) -> None:
        reason = getattr(exc, "reason", None) or f"{type(exc).__name__}: {exc}"
        log.warning("consumer %s: %s[%d]@%d -> DLQ (%s): %s", self.cfg.name, msg.topic(),
                    msg.partition(), msg.offset(), stage, reason)
        if not self.cfg.dlq_topic:
            return
        headers = dlq_headers(msg, stage, exc, self.cfg.name)
        if self.cfg.exactly_once:
            self._produce(self.cfg.dlq_topic, msg.value(), msg.key(), headers, None)
        else:
            rec.left += 1
            self._produce(self.cfg.dlq_topic, msg.value(), msg.key(), headers, rec)
        self.stats.dlq += 1

    # -- commits --------------------------------------------------------------------------

    def _commit(self, sync: bool = False, only: set[tuple[str, int]] | None = None) -> None:
        if self.cfg.exactly_once:
            self._commit_transaction()
            return
        if sync:
            self.producer.flush(30)
        self.producer.poll(0)
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

    # -- rebalancing (called from inside consume(), between batches) ---------------------

    def _on_assign(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.info("consumer %s assigned %s", self.cfg.name, _fmt(partitions))
        for tp in partitions:
            self.stats.forget_partition(tp.topic, tp.partition)

    def _on_revoke(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.info("consumer %s revoked %s", self.cfg.name, _fmt(partitions))
        try:
            if self.cfg.exactly_once:
                self._commit_transaction(reopen=True)
            else:
                self._commit(sync=True, only={(tp.topic, tp.partition) for tp in partitions})
        except (DeliveryFailed, KafkaException) as exc:
            log.error("commit on revoke failed: %s", exc)
            self.stop_event.set()
        self._tracker.drop(partitions)
        for tp in partitions:
            self.stats.forget_partition(tp.topic, tp.partition)

    def _on_lost(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.warning("consumer %s lost %s (no commit possible)", self.cfg.name, _fmt(partitions))
        self._tracker.drop(partitions)

    def _on_stats(self, stats_json: str) -> None:
        with contextlib.suppress(ValueError):
            self.stats.lag = consumer_lag(stats_json)

    # -- control --------------------------------------------------------------------------

    def execute(self, command: str, args: dict[str, Any]) -> dict[str, Any]:
        """A control command, on the runner thread (from the topic agent or the PVA channel)."""
        log.info("consumer %s: command %s %s", self.cfg.name, command, args)
        if command == "configure":
            self.plugin.configure(args)
            return {"configured": args}
        if command == "reset_stats":
            self.stats.reset()
            self.plugin.reset_stats()
            return {}
        if command == "get_stats":
            snap = self.snapshot()
            if self.channels is not None:
                self.channels.update_status(snap)
            return snap
        if command == "stop":
            self.stop_event.set()
            return {"stopping": True}
        raise ValueError(f"unknown command {command!r}")

    def snapshot(self) -> dict[str, Any]:
        return {"consumer_id": self.cfg.consumer_id, "group": self.cfg.group,
                **self.stats.snapshot()}

    def report(self, final: bool = False) -> None:
        snap = self.snapshot()
        if self.channels is not None:
            self.channels.update_status(snap)
        snap["final"] = final
        print(pprint.pformat(snap, sort_dicts=False), flush=True)


def _fmt(partitions: list[TopicPartition]) -> str:
    return ", ".join(f"{tp.topic}[{tp.partition}]" for tp in partitions) or "nothing"
