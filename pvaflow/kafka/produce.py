"""The one produce-with-backpressure policy: wait for room while honouring stop, then drop and
count, or fail, as the caller chose.

librdkafka's buffer (``queue.buffering.max.kbytes`` / ``.messages``) is each producer's bound
on memory; when it is full ``produce()`` raises ``BufferError``. What to do then depends on the
stage, not on the code path:

* the bridge cannot make the IOC wait: it waits up to ``max_wait`` for room, then drops the
  frame and counts it, and keeps dropping at once (no more waits) until a produce succeeds,
  so the PVA intake never stalls long enough to overrun the server queue (``on_full="drop"``);
* consumers and the collector sit behind a durable log: they wait as long as it takes
  (``max_wait=None``) and their input offsets stay uncommitted (``on_full="fail"``).

Every wait honours ``stop`` (a stopping component must not spin on a dead broker) and asks
``health`` whether the cluster has been lost for good, so a full buffer never hides an outage.

A sender given ``resize`` (:meth:`~pvaflow.kafka.client.Kafka.resizer`) may replace its
producer once, before the first record, with one whose batches suit that record's size:
callers reach the producer through :attr:`Sender.producer`, never a copy of their own.

"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Literal

from confluent_kafka import Producer

from ..errors import PvaflowError
from .client import Health

log = logging.getLogger(__name__)

OnFull = Literal["drop", "fail"]
POLL = 0.005  # seconds per wait step: delivery reports free room in small steps


class BufferFull(PvaflowError):
    """The producer buffer stayed full (``on_full="fail"``), or the component stopped while
    waiting for room; the record was not produced."""


class Sender:
    """Produces through one :class:`~confluent_kafka.Producer` under the policy above.

    ``send`` returns True when librdkafka took the record, False when it was dropped (only
    with ``on_full="drop"``; the caller counts it); with ``on_full="fail"`` it raises
    :class:`BufferFull` instead. Thread-safe for concurrent senders.
    """

    def __init__(
        self,
        producer: Producer,
        *,
        stop: threading.Event,
        max_wait: float | None = None,
        on_full: OnFull = "fail",
        health: Health | None = None,
        serve: Callable[[float], Any] | None = None,
        resize: Callable[[int], Producer | None] | None = None,
    ) -> None:
        self.producer = producer
        self._stop = stop
        self._max_wait = max_wait
        self._on_full = on_full
        self._health = health
        # How to wait for delivery reports: poll the producer, unless another thread does.
        self._serve = serve
        self._resize = resize
        self._resize_lock = threading.Lock()
        self._saturated = False
        self.episode_drops = 0

    def send(self, topic: str, value: Any, key: bytes | None = None, *,
             partition: int | None = None, headers: Any = None,
             on_delivery: Any = None) -> bool:
        kwargs: dict[str, Any] = {"key": key}
        if partition is not None:
            kwargs["partition"] = partition
        if headers is not None:
            kwargs["headers"] = headers
        if on_delivery is not None:
            kwargs["on_delivery"] = on_delivery
        if self._resize is not None:
            self._first_record(value)
        deadline: float | None = None
        while True:
            try:
                self.producer.produce(topic, value, **kwargs)
            except BufferError:
                pass
            else:
                if self._saturated:
                    self._saturated = False
                    log.warning("producer buffer has room again: %d records were dropped "
                                "while it was full", self.episode_drops)
                return True
            if self._saturated:  # still full after a timed-out wait: drop at once
                return self._give_up(topic)
            if self._stop.is_set():
                return self._give_up(topic, stopping=True)
            if self._health is not None:
                self._health.check()
            now = time.monotonic()
            if deadline is None and self._max_wait is not None:
                deadline = now + self._max_wait
            elif deadline is not None and now >= deadline:
                self._saturated = self._on_full == "drop"
                self.episode_drops = 0
                log.warning("producer buffer full for %.1f s (%d records queued; Kafka "
                            "unreachable or too slow)", self._max_wait, len(self.producer))
                return self._give_up(topic)
            if self._serve is not None:
                self._serve(POLL)
            else:
                self.producer.poll(POLL)

    def _first_record(self, value: Any) -> None:
        with self._resize_lock:
            resize, self._resize = self._resize, None
            # a producer that holds records already keeps them, and its batch size
            if resize is None or value is None or len(self.producer):
                return
            replacement = resize(nbytes(value))
            if replacement is not None:
                self.producer = replacement

    def _give_up(self, topic: str, stopping: bool = False) -> bool:
        if self._on_full == "fail":
            why = "stopped while" if stopping else "gave up after"
            raise BufferFull(f"{why} waiting for room in the producer buffer for {topic}")
        self.episode_drops += 1
        return False


def nbytes(value: Any) -> int:
    """The size of a record's value: bytes, or any buffer with ``nbytes`` (numpy, memoryview)."""
    n = getattr(value, "nbytes", None)
    return int(n) if n is not None else len(value)
