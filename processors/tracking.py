"""Commit-after-delivery bookkeeping (at-least-once).

Each consumed record gets a :class:`Pending` that is also the delivery callback of every
record produced for it (outputs and DLQ copies). A partition's offset may be committed only up
to the first record whose outputs are not all delivered, so a crash never skips a frame.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from confluent_kafka import KafkaError, TopicPartition

from pvaflow.errors import PvaflowError


class Pending:
    """One input record's outstanding deliveries; callable as confluent-kafka's on_delivery."""

    __slots__ = ("error", "left", "offset")

    def __init__(self, offset: int) -> None:
        self.offset = offset
        self.left = 0
        self.error: KafkaError | None = None

    def __call__(self, err: KafkaError | None, _msg: Any) -> None:
        if err is not None and self.error is None:
            self.error = err
        self.left -= 1


class DeliveryFailed(PvaflowError):
    """An output could not be delivered: its input must not be committed (stop and let the
    group hand the partition to a healthy member, which reprocesses from the last commit)."""


class OffsetTracker:
    def __init__(self) -> None:
        self._parts: dict[tuple[str, int], deque[Pending]] = {}
        self._committed: dict[tuple[str, int], int] = {}

    def add(self, topic: str, partition: int, offset: int) -> Pending:
        rec = Pending(offset)
        q = self._parts.get((topic, partition))
        if q is None:
            q = self._parts[(topic, partition)] = deque()
        q.append(rec)
        return rec

    def committable(self, only: set[tuple[str, int]] | None = None) -> list[TopicPartition]:
        """Offsets (next to read) that advanced since the last call; raises on a failure."""
        out = []
        for key, q in self._parts.items():
            if only is not None and key not in only:
                continue
            last = -1
            while q and q[0].left <= 0:
                rec = q[0]
                if rec.error is not None:
                    raise DeliveryFailed(
                        f"delivery for {key[0]}[{key[1]}]@{rec.offset} failed: {rec.error}")
                last = q.popleft().offset
            if last >= 0 and self._committed.get(key, -1) < last + 1:
                self._committed[key] = last + 1
                out.append(TopicPartition(key[0], key[1], last + 1))
        return out

    def drop(self, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self._parts.pop((tp.topic, tp.partition), None)
            self._committed.pop((tp.topic, tp.partition), None)
