"""Bounded, accounted producing: every frame handed in is delivered or counted as dropped.

The librdkafka buffer (``queue.buffering.max.kbytes``) is the bound on memory while the broker
is away. What happens when it is full is the core's drop policy (:class:`~pvaflow.kafka.
produce.Sender` with ``on_full="drop"``): the IOC cannot be made to wait, so a frame waits at
most ``--max-buffer-wait`` for room, later frames are dropped at once until a produce succeeds
again, and each drop is counted here as ``dropped[buffer_full]``.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Mapping
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message
from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType

from pvaflow.codec import Headers
from pvaflow.errors import PvaflowError
from pvaflow.kafka.produce import Sender, nbytes

from .stats import ChannelStats

log = logging.getLogger(__name__)

# Record overhead beyond value + key + headers (batch and record framing), with margin.
RECORD_OVERHEAD = 512

Encoded = tuple[bytes, Any, Headers]


class FrameProducer:
    """One idempotent producer shared by all channels, with a delivery-report thread.

    Sending holds a lock from reading a partition's ``pf.seq`` to the produce that carries
    it, so consumers see gap-free sequence numbers per partition whichever channel thread
    produced; the sender's wait for room (bounded) happens under that lock too, which is
    harmless: every other channel would meet the same full buffer.
    """

    def __init__(
        self,
        sender: Sender,
        *,
        limits: Mapping[str, int] | None = None,
        client_limit: int = 1_000_000,
    ) -> None:
        self._sender = sender
        self._client_limit = client_limit
        self._limits = dict(limits or {})
        self._seq: dict[tuple[str, int], int] = {}
        self._lock = threading.Lock()
        self._warned_large: set[str] = set()
        self._callbacks: dict[int, _Delivery] = {}
        self.session = uuid.uuid4().hex[:12]
        self._closing = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="bridge-delivery", daemon=True)
        self._poller.start()

    def __len__(self) -> int:
        return len(self._sender.producer)

    def limit(self, topic: str) -> int:
        return min(self._limits.get(topic, self._client_limit), self._client_limit)

    def send(
        self, topic: str, partition: int, encoded: Encoded, stats: ChannelStats, unique_id: int,
    ) -> bool:
        """Produce one encoded frame; ``True`` if accepted, else it was counted as dropped."""
        key, value, headers = encoded
        size = nbytes(value)
        overhead = len(key) + _headers_size(headers) + RECORD_OVERHEAD
        if size + overhead > self.limit(topic):
            self._too_large(topic, unique_id, size + overhead, stats)
            return False
        tp = (topic, partition)
        with self._lock:
            seq = self._seq.get(tp, 0)
            try:
                sent = self._sender.send(
                    topic, value, key, partition=partition,
                    headers=[*headers, ("pf.seq", str(seq).encode())],
                    on_delivery=self._delivery(stats))
            except KafkaException as exc:
                err = exc.args[0]
                if err.code() == KafkaError.MSG_SIZE_TOO_LARGE:
                    self._too_large(topic, unique_id, size + overhead, stats)
                else:
                    stats.dropped["produce_error"] += 1
                    log.error("produce of uniqueId %d to %s failed: %s", unique_id, topic, err)
                return False
            except PvaflowError as exc:
                # Kafka lost for good while waiting for room: the loop thread hears the same
                # from the health check and ends the run; this frame is one of the dropped.
                log.debug("dropped uniqueId %d: %s", unique_id, exc.line())
                sent = False
            if not sent:
                return self._drop_full(stats, unique_id)
            self._seq[tp] = seq + 1
            stats.produced += 1
            stats.bytes_produced += size
            return True

    def _delivery(self, stats: ChannelStats) -> _Delivery:
        """The channel's one delivery callback (none made per frame)."""
        cb = self._callbacks.get(id(stats))
        if cb is None or cb.stats is not stats:
            cb = self._callbacks[id(stats)] = _Delivery(stats)
        return cb

    def _drop_full(self, stats: ChannelStats, unique_id: int) -> bool:
        # the sender warns once when dropping starts and once when there is room again
        stats.dropped["buffer_full"] += 1
        log.debug("dropped uniqueId %d: producer buffer full", unique_id)
        return False

    def _too_large(self, topic: str, unique_id: int, size: int, stats: ChannelStats) -> None:
        stats.dropped["too_large"] += 1
        if topic not in self._warned_large:
            self._warned_large.add(topic)
            log.error(
                "frame uniqueId %d needs %d bytes but topic %s accepts at most %d "
                "(max.message.bytes / message.max.bytes): dropping such frames and counting "
                "them as dropped[too_large]; raise the topic's max.message.bytes and the "
                "producer's -X message.max.bytes", unique_id, size, topic, self.limit(topic))

    def flush(self, timeout: float) -> int:
        """Wait for outstanding deliveries; returns how many are still undelivered."""
        deadline = time.monotonic() + timeout
        while len(self._sender.producer) and time.monotonic() < deadline:
            self._sender.producer.flush(min(0.5, max(deadline - time.monotonic(), 0)))
        return len(self._sender.producer)

    def close(self) -> None:
        self._closing.set()
        self._poller.join(timeout=5)

    def _poll(self) -> None:
        while not self._closing.is_set():
            self._sender.producer.poll(0.1)


class _Delivery:
    """Delivery callback bound to one channel's counters (runs on the delivery thread)."""

    __slots__ = ("stats",)

    def __init__(self, stats: ChannelStats) -> None:
        self.stats = stats

    def __call__(self, err: KafkaError | None, msg: Message) -> None:
        s = self.stats
        if err is None:
            s.delivered += 1
            s.bytes_delivered += len(msg)
            latency = msg.latency()
            if latency is not None:
                s.observe_latency(latency)
        else:
            s.delivery_errors += 1
            if s.delivery_errors <= 10 or s.delivery_errors % 1000 == 0:
                log.error("delivery failed (%d so far) for %s[%s]: %s", s.delivery_errors,
                          msg.topic(), msg.partition(), err)


def _headers_size(headers: Headers) -> int:
    n = 0
    for k, v in headers:
        n += len(k) + len(v or b"")
    return n


def topic_limits(
    admin: AdminClient, topics: list[str], timeout: float = 15.0
) -> dict[str, int]:
    """Each topic's effective ``max.message.bytes`` (so oversize frames fail clearly, early)."""
    resources = [ConfigResource(ResourceType.TOPIC, t) for t in topics]
    out: dict[str, int] = {}
    for res, fut in admin.describe_configs(resources, request_timeout=timeout).items():
        try:
            entry = fut.result(timeout=timeout).get("max.message.bytes")
        except KafkaException as exc:
            log.warning("cannot read max.message.bytes of %s: %s", res.name, exc)
            continue
        if entry is not None and entry.value is not None:
            out[res.name] = int(entry.value)
    return out

