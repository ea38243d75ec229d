"""Collector state kept in Kafka, and the input offsets that are safe to commit.

The reorder state (next expected uniqueId, recently skipped ranges) and the input positions
reached are written as one record to a compacted state topic, keyed by collector group, in the
same Kafka transaction as the output frames and the consumer offsets. After a crash the
transaction is aborted by the restarted instance, so the state, the offsets and the output topic
always agree: no id is emitted twice and none is lost.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient

from pvaflow.errors import KafkaFailure
from pvaflow.kafka.client import Kafka
from pvaflow.kafka.topics import Replication, ensure_topic, read_partition

from .reorder import ReorderState

STATE_TOPIC = "pvaflow.collector.state"

TP = tuple[str, int]


@dataclass
class SavedState:
    reorder: ReorderState = field(default_factory=ReorderState)
    # Next offset consumed per input partition when saved: records below it that are already
    # emitted are replays after a restart, not duplicates sent by a processor.
    consumed: dict[TP, int] = field(default_factory=dict)

    def encode(self) -> bytes:
        return json.dumps({
            "v": 1, "reorder": self.reorder.to_json(),
            "consumed": [[t, p, o] for (t, p), o in self.consumed.items()],
        }).encode()

    @classmethod
    def decode(cls, raw: bytes) -> SavedState:
        data: dict[str, Any] = json.loads(raw)
        return cls(
            reorder=ReorderState.from_json(data.get("reorder") or {}),
            consumed={(t, int(p)): int(o) for t, p, o in data.get("consumed") or []},
        )


class StateError(KafkaFailure):
    """The saved state could not be read: starting without it would emit ids twice."""


def ensure_state_topic(name: str, admin: AdminClient,
                       replication: Replication | None = None) -> None:
    ensure_topic(name, 1, admin=admin, strict=False, config={"cleanup.policy": "compact"},
                 replication=replication)


def load_state(topic: str, key: str, kafka: Kafka, timeout: float = 15.0) -> SavedState:
    """The last committed state for ``key`` (read_committed, to the end of the topic)."""
    hint = "check the broker and that this principal may read the topic"
    try:
        records, complete = read_partition(topic, kafka, read_committed=True,
                                           timeout=timeout)
    except KafkaException as exc:
        err = exc.args[0] if exc.args else exc
        text = err.str() if isinstance(err, KafkaError) else str(err)
        raise StateError(f"cannot read collector state from {topic}: {text}",
                         hint=hint) from None
    if not complete:
        raise StateError(f"timed out after {timeout:g} s reading collector state from {topic}",
                         hint=hint)
    found = [v for k, v in records if k == key.encode()]
    try:
        return SavedState.decode(found[-1]) if found and found[-1] else SavedState()
    except (ValueError, TypeError, KeyError) as exc:
        raise StateError(f"unreadable collector state for group {key!r} in {topic}: {exc}",
                         hint="use another --state-topic or --group to start afresh") from None


def committable(consumed: Mapping[TP, int], held: Iterable[tuple[TP, int]]) -> dict[TP, int]:
    """Offsets safe to commit, given each partition's next offset to consume and the
    ``(partition, offset)`` of every record still in the reorder cache.

    A partition may be committed up to (not past) its oldest cached record; with nothing
    cached, up to its consumed position. Records leave the cache in uniqueId order, not offset
    order, so the oldest is found by scanning the cache when committing (a few times a second,
    at most cache-size records) instead of being tracked per record on the hot path.
    """
    out = dict(consumed)
    for tp, offset in held:
        if offset < out.get(tp, -1):
            out[tp] = offset
    return out
