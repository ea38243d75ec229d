"""Collector state kept in Kafka, and the input offsets that are safe to commit.

The reorder state (next expected uniqueId, recently skipped ranges) and the input positions
reached are written as one record to a compacted state topic, keyed by collector group, in the
same Kafka transaction as the output frames and the consumer offsets. After a crash the
transaction is aborted by the restarted instance, so the state, the offsets and the output topic
always agree: no id is emitted twice and none is lost.
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaException

from pvaflow.topics import ensure_topic, read_partition

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


def ensure_state_topic(name: str, bootstrap: str | None, overrides: Any) -> None:
    ensure_topic(name, 1, bootstrap=bootstrap, overrides=overrides, strict=False,
                 config={"cleanup.policy": "compact"})


def load_state(
    topic: str, key: str, bootstrap: str | None, overrides: Any, timeout: float = 15.0
) -> SavedState:
    """The last committed state for ``key`` (read_committed, to the end of the topic)."""
    try:
        records, complete = read_partition(
            topic, bootstrap, overrides, read_committed=True, timeout=timeout)
    except KafkaException as exc:
        raise RuntimeError(f"cannot read collector state from {topic}: {exc}") from exc
    if not complete:
        raise RuntimeError(f"timed out reading collector state from {topic}")
    found = [v for k, v in records if k == key.encode()]
    return SavedState.decode(found[-1]) if found and found[-1] else SavedState()


class OffsetTracker:
    """Per input partition: the lowest offset still held in the reorder cache.

    A partition may be committed up to (not past) its oldest cached record; with nothing
    cached, up to the last consumed record + 1. Records leave the cache out of offset order
    (they leave in uniqueId order), so finished offsets are retired lazily from the front.
    """

    def __init__(self) -> None:
        self._held: dict[TP, deque[int]] = {}
        self._done: dict[TP, set[int]] = {}
        self._next: dict[TP, int] = {}

    def consumed(self, tp: TP, offset: int, held: bool) -> None:
        self._next[tp] = offset + 1
        if held:
            self._held.setdefault(tp, deque()).append(offset)

    def released(self, tp: TP, offset: int) -> None:
        held = self._held.get(tp)
        if held and held[0] == offset:
            held.popleft()
            done = self._done.get(tp)
            while held and done and held[0] in done:
                done.discard(held.popleft())
        else:
            self._done.setdefault(tp, set()).add(offset)

    def cached(self, tp: TP) -> int:
        """How many of ``tp``'s records are still in the reorder cache."""
        return len(self._held.get(tp, ())) - len(self._done.get(tp, ()))

    def positions(self) -> dict[TP, int]:
        out = {}
        for tp, nxt in self._next.items():
            held = self._held.get(tp)
            out[tp] = held[0] if held else nxt
        return out

    def consumed_positions(self) -> dict[TP, int]:
        return dict(self._next)

    def forget(self, tps: list[TP]) -> None:
        for tp in tps:
            self._held.pop(tp, None)
            self._done.pop(tp, None)
            self._next.pop(tp, None)
