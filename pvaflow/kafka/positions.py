"""Where a reprocessing run starts and stops: time parsing, Kafka's offsets-for-times, and the
per-partition start and end positions of ``--from-time / --to-time / --from-offset``.

Times are Kafka record timestamps (milliseconds since the epoch; the bridge sets them when it
publishes a frame). The grammar of a time (:func:`parse_time`), case-insensitive:

* ISO 8601: ``2024-05-01T22:00``, ``2024-05-01 22:00:05.5``, ``2024-05-01T20:00Z``,
  ``2024-05-01T22:00+02:00``, ``2024-05-01`` (midnight); without a zone it is local time;
* ``now``; ``N UNIT ago`` with UNIT one of s, sec, second(s), m, min, minute(s), h, hour(s),
  d, day(s), w, week(s): ``1h ago``, ``30 min ago``, ``2 days ago``;
* ``today``, ``yesterday`` (local midnight), optionally with a time: ``yesterday 22:00``,
  ``today 06:30:15``; a bare ``HH:MM[:SS]`` is today;
* ``@SECONDS`` since the epoch: ``@1714600000``.

>>> now = 1_700_000_000_000
>>> parse_time("1h ago", now_ms=now) == now - 3_600_000
True
>>> parse_time("30 min ago", now_ms=now) == now - 1_800_000
True
>>> parse_time("@1714600000")
1714600000000

A reprocessing run never touches a live consumer group: it reads in the group
``<group>.replay-<window>`` (:func:`replay_group`), derived from the live group's name and the
window, so every member of one replay (``--n-consumers``) joins the same group and an
interrupted replay resumes from its own commits.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import re
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)

from ..errors import ConfigError, TopicError
from .client import Kafka
from .consume import take

log = logging.getLogger(__name__)

TIMEOUT = 15.0  # seconds a metadata / offsets request may take

_UNITS = {
    "s": 1, "sec": 1, "secs": 1, "second": 1, "seconds": 1,
    "m": 60, "min": 60, "mins": 60, "minute": 60, "minutes": 60,
    "h": 3600, "hr": 3600, "hrs": 3600, "hour": 3600, "hours": 3600,
    "d": 86400, "day": 86400, "days": 86400,
    "w": 604800, "week": 604800, "weeks": 604800,
}
_AGO = re.compile(r"^(\d+(?:\.\d+)?)\s*([a-z]+)\s+ago$")
_DAY = re.compile(r"^(today|yesterday)(?:\s+(\d{1,2}:\d{2}(?::\d{2}(?:\.\d+)?)?))?$")
_CLOCK = re.compile(r"^\d{1,2}:\d{2}(?::\d{2}(?:\.\d+)?)?$")

GRAMMAR = ("ISO 8601 (2024-05-01T22:00, local time unless a zone is given), 'now', "
           "'N UNIT ago' (1h ago, 30 min ago, 2 days ago), 'today'/'yesterday' [HH:MM[:SS]], "
           "HH:MM[:SS] (today) or @EPOCH-SECONDS")


def parse_time(text: str, *, now_ms: int | None = None) -> int:
    """Milliseconds since the epoch for ``text`` (see the module docstring); ``ValueError``
    with the grammar when it is not a time."""
    s = " ".join(text.strip().lower().split())
    now = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    if s == "now":
        return now
    if s.startswith("@"):
        try:
            return round(float(s[1:]) * 1000)
        except ValueError:
            raise ValueError(f"not a time: {text!r}; use {GRAMMAR}") from None
    m = _AGO.match(s)
    if m:
        unit = _UNITS.get(m.group(2))
        if unit is None:
            raise ValueError(f"unknown unit {m.group(2)!r} in {text!r}; use s, min, h, d or w")
        return now - round(float(m.group(1)) * unit * 1000)
    local_now = dt.datetime.fromtimestamp(now / 1000).astimezone()
    m = _DAY.match(s)
    if m or _CLOCK.match(s):
        day = local_now.date()
        clock = s
        if m:
            if m.group(1) == "yesterday":
                day -= dt.timedelta(days=1)
            clock = m.group(2) or "00:00"
        hms = clock.split(":")
        sec = float(hms[2]) if len(hms) > 2 else 0.0
        try:
            moment = dt.datetime(day.year, day.month, day.day, int(hms[0]), int(hms[1]),
                                 int(sec), round((sec % 1) * 1e6))
        except ValueError as exc:
            raise ValueError(f"not a time: {text!r} ({exc})") from None
        return round(moment.astimezone().timestamp() * 1000)
    try:
        moment = dt.datetime.fromisoformat(text.strip().replace("z", "Z").replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"not a time: {text!r}; use {GRAMMAR}") from None
    if moment.tzinfo is None:
        moment = moment.astimezone()  # local time
    return round(moment.timestamp() * 1000)


def time_arg(text: str) -> int:
    """argparse ``type=`` for ``--from-time`` / ``--to-time``."""
    try:
        return parse_time(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def offset_arg(text: str) -> int:
    """argparse ``type=`` for ``--from-offset``: a whole number >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an offset (a whole number), "
                                         f"got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"an offset is >= 0, got {value}")
    return value


def stamp(ms: int) -> str:
    """``20240501T220000Z``: a UTC time as a group-name-safe word."""
    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def iso(ms: int) -> str:
    """Local ISO time to the millisecond, for reports."""
    return dt.datetime.fromtimestamp(ms / 1000).astimezone().isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class ReplaySpec:
    """The window of a reprocessing run (any field may be unset)."""

    from_ms: int | None = None
    to_ms: int | None = None
    from_offset: int | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ReplaySpec | None:
        """From :func:`pvaflow.options.add_replay_args`; ``None`` when no option was given."""
        spec = cls(getattr(args, "from_time", None), getattr(args, "to_time", None),
                   getattr(args, "from_offset", None))
        if spec.from_ms is not None and spec.from_offset is not None:
            raise ConfigError("--from-time and --from-offset both say where to start",
                              hint="give one of them")
        if spec.from_ms is not None and spec.to_ms is not None and spec.to_ms < spec.from_ms:
            raise ConfigError(f"--to-time {iso(spec.to_ms)} is before --from-time "
                              f"{iso(spec.from_ms)}")
        return spec if spec.active else None

    @property
    def active(self) -> bool:
        return not (self.from_ms is None and self.to_ms is None and self.from_offset is None)

    def window(self) -> str:
        start = (stamp(self.from_ms) if self.from_ms is not None
                 else f"offset{self.from_offset}" if self.from_offset is not None
                 else "start")
        return start if self.to_ms is None else f"{start}-{stamp(self.to_ms)}"

    def describe(self) -> str:
        start = (iso(self.from_ms) if self.from_ms is not None
                 else f"offset {self.from_offset}" if self.from_offset is not None
                 else "the beginning")
        end = iso(self.to_ms) if self.to_ms is not None else "the live end (keeps running)"
        return f"from {start} to {end}"


def replay_group(live_group: str, spec: ReplaySpec) -> str:
    """The consumer group a reprocessing run uses: never the live group itself."""
    return f"{live_group}.replay-{spec.window()}"


def offsets_for_time(consumer: Consumer, partitions: Iterable[tuple[str, int]], ms: int,
                     timeout: float = TIMEOUT) -> dict[tuple[str, int], int]:
    """Per partition, the offset of the first record with timestamp >= ``ms``; -1 when the
    partition holds none (Kafka's ListOffsets by time)."""
    query = [TopicPartition(t, p, ms) for t, p in partitions]
    if not query:
        return {}
    found = consumer.offsets_for_times(query, timeout=timeout)
    out = {}
    for tp in found:
        if tp.error is not None:
            raise KafkaException(tp.error)
        out[(tp.topic, tp.partition)] = tp.offset
    return out


@dataclass
class _Part:
    end: int | None  # first offset past the window; None: not known yet (watch timestamps)
    done: bool = False


@dataclass
class Positions:
    """Start and end positions of one reprocessing consumer.

    :meth:`on_assign` is the consumer's ``on_assign`` step: it sets each newly assigned
    partition's start (the replay group's own commit if it has one, else the window's start)
    and end, and assigns. The data path calls :meth:`accept` for every record and
    :meth:`finished` after a batch; a partition whose records have passed ``--to-time`` is
    paused, and when every assigned partition is, the run is over.
    """

    spec: ReplaySpec
    timeout: float = TIMEOUT
    parts: dict[tuple[str, int], _Part] = field(default_factory=dict)
    # stop at the end of what the topic holds now (readers), not wait for --to-time
    until_now: bool = False

    def on_assign(self, consumer: Consumer, partitions: list[TopicPartition],
                  incremental: bool = True) -> list[TopicPartition]:
        """Assign ``partitions`` at their replay positions (``incremental_assign`` for the
        cooperative protocol, ``assign`` otherwise); returns what was assigned."""
        start = self.starts(consumer, partitions)
        if incremental:
            consumer.incremental_assign(start)
        else:
            consumer.assign(start)
        done = [TopicPartition(tp.topic, tp.partition) for tp in start
                if self.parts[(tp.topic, tp.partition)].done]
        if done:
            consumer.pause(done)
        return start

    def starts(self, consumer: Consumer, partitions: list[TopicPartition]) -> list[TopicPartition]:
        """``partitions`` with their start offsets; records each one's end."""
        keys = [(tp.topic, tp.partition) for tp in partitions]
        spec = self.spec
        committed: dict[tuple[str, int], int] = {}
        try:
            for tp in consumer.committed([TopicPartition(t, p) for t, p in keys],
                                         timeout=self.timeout):
                if tp.offset >= 0:
                    committed[(tp.topic, tp.partition)] = tp.offset
        except KafkaException as exc:  # a group with no commits at all answers fine; log others
            log.warning("replay: reading the replay group's commits: %s", exc)
        begin: dict[tuple[str, int], int] = {}
        if spec.from_ms is not None:
            found = offsets_for_time(consumer, keys, spec.from_ms, self.timeout)
            begin = {k: (o if o >= 0 else OFFSET_END) for k, o in found.items()}
        elif spec.from_offset is not None:
            begin = {k: spec.from_offset for k in keys}
        else:
            begin = {k: OFFSET_BEGINNING for k in keys}
        ends = self._ends(consumer, keys)
        out = []
        for key in keys:
            offset = begin[key]
            low, high = consumer.get_watermark_offsets(TopicPartition(*key),
                                                       timeout=self.timeout, cached=False)
            if offset == OFFSET_END:
                offset = high
            elif offset == OFFSET_BEGINNING:
                offset = low
            offset = max(offset, low)
            if key in committed and committed[key] > offset:
                offset = committed[key]  # this replay group's own progress
            end = ends.get(key)
            part = _Part(end)
            part.done = end is not None and offset >= end
            self.parts[key] = part
            out.append(TopicPartition(key[0], key[1], offset))
        # a component's replay is news; a reader (export, runs) says what it read at the end
        log.log(logging.DEBUG if self.until_now else logging.INFO, "replay %s: %s",
                spec.describe(), ", ".join(
            f"{t}[{p}]@{o}" + (f"..{self.parts[(t, p)].end}"
                               if self.parts[(t, p)].end is not None else "")
            for t, p, o in ((tp.topic, tp.partition, tp.offset) for tp in out)) or "nothing")
        return out

    def _ends(self, consumer: Consumer, keys: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
        to = self.spec.to_ms
        if to is None:
            if not self.until_now:
                return {}
            return {k: consumer.get_watermark_offsets(TopicPartition(*k), timeout=self.timeout,
                                                      cached=False)[1] for k in keys}
        found = offsets_for_time(consumer, keys, to + 1, self.timeout)
        ends: dict[tuple[str, int], int] = {}
        past = self.until_now or to <= time.time_ns() // 1_000_000
        for key, offset in found.items():
            if offset >= 0:
                ends[key] = offset
            elif past:  # nothing after --to-time, which has passed: the end is the end now
                ends[key] = consumer.get_watermark_offsets(
                    TopicPartition(*key), timeout=self.timeout, cached=False)[1]
        return ends

    def forget(self, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self.parts.pop((tp.topic, tp.partition), None)

    def accept(self, msg: Message) -> bool:
        """Whether ``msg`` is inside the window; the first record past it ends its partition
        (the caller pauses it, see :meth:`newly_done`)."""
        part = self.parts.get((msg.topic() or "", msg.partition() or 0))
        if part is None:
            return True
        if part.done:
            return False
        offset = msg.offset() or 0
        to = self.spec.to_ms
        if (part.end is not None and offset >= part.end) or \
                (to is not None and msg.timestamp()[1] > to):
            part.done = True
            return False
        if part.end is not None and offset + 1 >= part.end:
            part.done = True  # the last record of the window
        return True

    def filter(self, consumer: Consumer, msgs: list[Message]) -> list[Message]:
        """``msgs`` inside the window (errors and events pass through); pauses partitions
        that are done."""
        before = {k for k, p in self.parts.items() if p.done}
        out = [m for m in msgs if m.error() is not None or self.accept(m)]
        for m in msgs:  # an end behind a transaction marker is only seen as the partition's end
            err = m.error()
            if err is not None and err.code() == KafkaError._PARTITION_EOF:
                part = self.parts.get((m.topic() or "", m.partition() or 0))
                if part is not None and part.end is not None and (m.offset() or 0) >= part.end:
                    part.done = True
        after = {k for k, p in self.parts.items() if p.done} - before
        if after:
            consumer.pause([TopicPartition(t, p) for t, p in after])
        return out

    def finished(self) -> bool:
        """Every assigned partition has reached the end of the window."""
        return bool(self.parts) and all(p.done for p in self.parts.values())


class WindowReader:
    """Reads every record of ``topic`` in a window (default: all it holds now) and ends: what
    ``export`` and ``runs`` read. No group is joined and nothing is committed; memory stays
    bounded (records are yielded as they come)."""

    def __init__(self, kafka: Kafka, topic: str, spec: ReplaySpec | None = None, *,
                 partitions: Sequence[int] | None = None, timeout: float = TIMEOUT) -> None:
        self.kafka = kafka
        self.topic = topic
        self.spec = spec or ReplaySpec()
        self.only = partitions
        self.timeout = timeout
        self.positions = Positions(self.spec, timeout, until_now=True)
        self.total = 0  # records in the window (an upper bound: markers count too)
        self._consumer: Consumer | None = None

    def open(self) -> int:
        """Find the window; returns how many records it holds (at most)."""
        group = f"pvaflow-reader-{uuid.uuid4().hex[:8]}"
        consumer = self.kafka.consumer(group, self.kafka.consumer_config(
            group, **{"enable.partition.eof": True, "enable.auto.commit": False}))
        self._consumer = consumer
        md = consumer.list_topics(timeout=self.timeout).topics.get(self.topic)
        if md is None or md.error is not None or not md.partitions:
            raise TopicError(f"topic {self.topic!r} does not exist",
                             hint="check the topic name (pvaflow status lists live ones)")
        parts = sorted(md.partitions)
        if self.only is not None:
            missing = sorted(set(self.only) - set(parts))
            if missing:
                raise TopicError(f"topic {self.topic!r} has no partition {missing[0]} "
                                 f"(it has {len(parts)})")
            parts = sorted(self.only)
        start = self.positions.on_assign(
            consumer, [TopicPartition(self.topic, p) for p in parts], incremental=False)
        self.total = sum(max(0, (self.positions.parts[(tp.topic, tp.partition)].end or 0)
                             - tp.offset) for tp in start)
        return self.total

    def __iter__(self) -> Iterator[Message]:
        consumer = self._consumer
        assert consumer is not None, "open() first"
        health = self.kafka.health
        while not self.positions.finished():
            msgs = self.positions.filter(consumer, take(consumer, 500, 0.5))
            for msg in msgs:
                err = msg.error()
                if err is None:
                    yield msg
                elif err.code() != KafkaError._PARTITION_EOF:
                    if err.fatal():
                        raise KafkaException(err)
                    log.warning("reading %s: %s", self.topic, err)
            health.check()

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None
