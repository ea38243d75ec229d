"""The distributor plan: which topic and partition each uniqueId goes to.

PvaPy's distributor plugin hands each consumer N sequential updates in turn, optionally
splitting the stream between consumer sets. Here partitions (and one topic per set) play the
consumers' part, so the routing is pure arithmetic on the uniqueId: any consumer can recompute
it and check that a frame sits where the plan says. The plan travels with every record in the
``pf.plan`` header, because Kafka refuses unknown topic configs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pvaflow.errors import ConfigError

PLAN_HEADER = "pf.plan"
_SET_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


class PlanError(ConfigError):
    """A plan that cannot route (bad block size, set names, partition count)."""


@dataclass(frozen=True)
class Route:
    topic: str
    partition: int
    set_name: str | None = None


@dataclass(frozen=True)
class Plan:
    """Block ``b = (uniqueId - first) // updates``. Without sets block ``b`` goes to partition
    ``b % partitions`` of ``topic``; with S sets to topic ``<topic>.<sets[b % S]>``, partition
    ``(b // S) % partitions``."""

    topic: str
    partitions: int = 1
    updates: int = 1
    sets: tuple[str, ...] = ()
    first: int = 1

    def __post_init__(self) -> None:
        if self.partitions < 1:
            raise PlanError(f"partitions must be >= 1, got {self.partitions}")
        if self.updates < 1:
            raise PlanError(f"distributor updates must be >= 1, got {self.updates}")
        if len(set(self.sets)) != len(self.sets):
            raise PlanError(f"distributor sets must be distinct, got {','.join(self.sets)}")
        for s in self.sets:
            if not _SET_NAME.match(s):
                raise PlanError(f"set name {s!r} must be letters, digits, '_' or '-'")

    @property
    def topics(self) -> tuple[str, ...]:
        """Every topic the plan writes to (one per set, or the topic itself)."""
        if not self.sets:
            return (self.topic,)
        return tuple(self.set_topic(s) for s in self.sets)

    def set_topic(self, set_name: str) -> str:
        return f"{self.topic}.{set_name}"

    def block(self, unique_id: int) -> int:
        return (unique_id - self.first) // self.updates

    def route(self, unique_id: int) -> Route:
        b = self.block(unique_id)
        if not self.sets:
            return Route(self.topic, b % self.partitions)
        n = len(self.sets)
        name = self.sets[b % n]
        return Route(self.set_topic(name), (b // n) % self.partitions, name)

    def rebased(self, first: int) -> Plan:
        """The same plan anchored at another first uniqueId (``--distributor-first auto``)."""
        return Plan(self.topic, self.partitions, self.updates, self.sets, first)

    def describe(self) -> str:
        """Compact, parseable text for the ``pf.plan`` header and the logs."""
        sets = ",".join(self.sets)
        return (f"v=1;topic={self.topic};partitions={self.partitions};updates={self.updates};"
                f"sets={sets};first={self.first}")

    @classmethod
    def parse(cls, text: str | bytes) -> Plan:
        raw = text.decode() if isinstance(text, bytes) else text
        try:
            fields = dict(item.split("=", 1) for item in raw.split(";") if item)
            if fields.get("v") != "1":
                raise PlanError(f"unknown plan version in {raw!r}")
            sets = tuple(s for s in fields["sets"].split(",") if s)
            return cls(fields["topic"], int(fields["partitions"]), int(fields["updates"]),
                       sets, int(fields["first"]))
        except (KeyError, ValueError) as exc:
            raise PlanError(f"malformed plan {raw!r}: {exc}") from exc


def parse_sets(text: str | None) -> tuple[str, ...]:
    """``--distributor-sets A,B`` -> ("A", "B"); empty or None means no sets."""
    if not text:
        return ()
    return tuple(s.strip() for s in text.split(",") if s.strip())
