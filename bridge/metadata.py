"""Metadata channels (PvaPy's ``-mc/--metadata-channels``): extra PVA and CA channels whose
values are joined to the frames by timestamp and travel with them as NTNDArray attributes.

Why in the bridge: it is the one PVA client of the IOC, so the values are read once however
many consumers there are, and the join needs each frame's source timestamp next to values
read at the same time; downstream of Kafka a consumer only sees its share of the frames and
could not tell a value meant for another consumer's frame from an unmatched one.

The join, per metadata channel and frame (frame timestamp ``tf``, tolerance ``tol``):

* values arrive on the channel's monitor into a bounded queue (``max_values`` values and
  ``max_bytes`` bytes; when full, the oldest value leaves and is counted unmatched);
* the frame waits until the channel has a value stamped after ``tf + tol`` (nothing nearer
  can come) or, at most, until ``tf + tol`` on this host's clock (never longer than ``tol``);
* of the queued values within ``tol`` of ``tf`` the nearest is attached to the frame as the
  attribute named after the channel (PvaPy's name: the channel without ``pva://``/``ca://``),
  with the value's own timestamp; it and every older value leave the queue;
* a value that leaves the queue without a frame (older than ``tf - tol`` for the current
  frame, passed over for a nearer one, or evicted) is counted in ``metadata_unmatched``.

Each value goes to at most one frame. While ``tol`` is under half the frame period, as usual
(PvaPy's default is 1 ms), a value is within the tolerance of one frame at most, so that frame
is the one nearest to it.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from pvaflow.errors import ConfigError
from pvaflow.frame import Attribute, EpicsTime, Frame

log = logging.getLogger(__name__)

PROTOCOLS = ("pva", "ca")
DEFAULT_TOLERANCE = 0.001      # seconds: PvaPy's HpcAdMetadataProcessor default
DEFAULT_QUEUE_SIZE = 1000      # values: PvaPy's DEFAULT_METADATA_QUEUE_SIZE
DEFAULT_QUEUE_BYTES = 16 << 20
REQUEST = "field(value,timeStamp)"
SOURCE_TYPE_EPICS_PV = 2       # areaDetector's NDAttrSourceEPICSPV
DESCRIPTOR = "metadata channel"


@dataclass(frozen=True)
class ChannelSpec:
    protocol: str
    name: str

    @property
    def url(self) -> str:
        return f"{self.protocol}://{self.name}"


def parse_metadata_channels(values: Sequence[str] | str | None) -> list[ChannelSpec]:
    """``pva://a,ca://b,c`` (repeatable) -> specs; no protocol means CA, as in PvaPy."""
    if values is None:
        return []
    if isinstance(values, str):
        values = [values]
    specs: list[ChannelSpec] = []
    for text in values:
        for item in text.split(","):
            item = item.strip()
            if not item:
                continue
            protocol, sep, name = item.partition("://")
            if not sep:
                protocol, name = "ca", item
            if protocol not in PROTOCOLS or not name:
                raise ConfigError(f"--metadata-channels: {item!r} is not pva://NAME or "
                                  "ca://NAME")
            specs.append(ChannelSpec(protocol, name))
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ConfigError("--metadata-channels: a channel is given twice")
    return specs


@dataclass
class MetadataStats:
    channel: str
    protocol: str
    received: int = 0     # values the monitor delivered
    matched: int = 0      # values attached to a frame
    unmatched: int = 0    # values that found no frame within the tolerance
    queued: int = 0       # values waiting for a frame now

    def snapshot(self) -> dict[str, Any]:
        return {"channel": self.channel, "protocol": self.protocol,
                "metadata_received": self.received, "metadata_matched": self.matched,
                "metadata_unmatched": self.unmatched, "metadata_queued": self.queued}

    def reset(self) -> None:
        self.received = self.matched = self.unmatched = 0


@dataclass
class Value:
    t: float
    value: Any
    type: str
    timestamp: EpicsTime
    nbytes: int


def _typed(value: Any) -> tuple[Any, str, int] | None:
    """(value, NTAttribute type name, bytes) for what a monitor delivers; None otherwise."""
    if isinstance(value, bool):
        return value, "boolean", 1
    if isinstance(value, int):
        return value, "long", 8
    if isinstance(value, float):
        return value, "double", 8
    if isinstance(value, str):
        return value, "string", len(value)
    if isinstance(value, list | tuple) and value:
        first = _typed(value[0])
        if first is not None and all(type(v) is type(value[0]) for v in value):
            return list(value), f"{first[1]}[]", sum(sys.getsizeof(v) for v in value)
    return None


class MetadataChannel:
    """One monitored metadata channel and its queue of values waiting for a frame."""

    def __init__(self, spec: ChannelSpec, *, max_values: int = DEFAULT_QUEUE_SIZE,
                 max_bytes: int = DEFAULT_QUEUE_BYTES) -> None:
        self.spec = spec
        self.stats = MetadataStats(spec.name, spec.protocol)
        self.max_values = max_values
        self.max_bytes = max_bytes
        self._values: deque[Value] = deque()
        self._bytes = 0
        self._newest = float("-inf")
        self._cond = threading.Condition()
        self._channel: Any = None
        self._warned = False

    @property
    def name(self) -> str:
        return self.spec.name

    def start(self) -> None:
        import pvaccess as pva

        provider = pva.PVA if self.spec.protocol == "pva" else pva.CA
        self._channel = pva.Channel(self.spec.name, provider)
        self._channel.monitor(self.on_update, REQUEST)
        log.info("monitoring metadata channel %s", self.spec.url)

    def stop(self) -> None:
        if self._channel is not None:
            self._channel.stopMonitor()

    def connected(self) -> bool:
        return bool(self._channel is not None and self._channel.isConnected())

    def on_update(self, pv: Any) -> None:
        """Monitor callback: queue the value with its timestamp."""
        try:
            ts = pv["timeStamp"]
            stamp = EpicsTime(int(ts["secondsPastEpoch"]), int(ts["nanoseconds"]),
                              int(ts["userTag"]))
            typed = _typed(pv["value"])
        except Exception as exc:  # a structure without value/timeStamp
            typed, stamp = None, EpicsTime()
            log.debug("metadata channel %s: no value and timeStamp: %s", self.spec.url, exc)
        if typed is None:
            if not self._warned:  # say so once
                log.warning("metadata channel %s: values of this type (or without value and "
                            "timeStamp) are not attached; counted as unmatched", self.spec.url)
                self._warned = True
            with self._cond:
                self.stats.received += 1
                self.stats.unmatched += 1
            return
        value, type_name, nbytes = typed
        self.put(Value(stamp.to_float(), value, type_name, stamp, nbytes))

    def put(self, v: Value) -> None:
        with self._cond:
            self.stats.received += 1
            self._values.append(v)
            self._bytes += v.nbytes
            self._newest = max(self._newest, v.t)
            while len(self._values) > self.max_values or (
                    self._bytes > self.max_bytes and len(self._values) > 1):
                self._drop_oldest()
            self.stats.queued = len(self._values)
            self._cond.notify_all()

    def _drop_oldest(self) -> None:
        old = self._values.popleft()
        self._bytes -= old.nbytes
        self.stats.unmatched += 1

    def wait_past(self, t: float, deadline: float) -> None:
        """Wait (monotonic ``deadline``) until a value stamped after ``t`` arrived; a
        channel that never delivered a value is not waited for."""
        with self._cond:
            while self._newest <= t and self.stats.received:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                self._cond.wait(left)

    def take(self, tf: float, tol: float) -> Value | None:
        """The queued value nearest to ``tf`` within ``tol`` (it and older ones leave)."""
        with self._cond:
            q = self._values
            while q and q[0].t < tf - tol:
                self._drop_oldest()
            best: int | None = None
            for i, v in enumerate(q):
                if v.t > tf + tol:
                    break
                if best is None or abs(v.t - tf) < abs(q[best].t - tf):
                    best = i
            if best is None:
                self.stats.queued = len(q)
                return None
            for _ in range(best):
                self._drop_oldest()
            chosen = q.popleft()
            self._bytes -= chosen.nbytes
            self.stats.matched += 1
            self.stats.queued = len(q)
            return chosen


@dataclass
class MetadataJoin:
    """Every metadata channel of a bridge; :meth:`join` runs on the intake thread."""

    channels: list[MetadataChannel]
    tolerance: float = DEFAULT_TOLERANCE
    clock: Any = field(default=time.time, repr=False)

    @classmethod
    def from_specs(cls, specs: Sequence[ChannelSpec], tolerance: float = DEFAULT_TOLERANCE,
                   max_values: int = DEFAULT_QUEUE_SIZE,
                   max_bytes: int = DEFAULT_QUEUE_BYTES) -> MetadataJoin:
        if tolerance < 0:
            raise ConfigError("--metadata-tolerance must not be negative")
        return cls([MetadataChannel(s, max_values=max_values, max_bytes=max_bytes)
                    for s in specs], tolerance)

    def start(self) -> None:
        for ch in self.channels:
            ch.start()

    def stop(self) -> None:
        for ch in self.channels:
            ch.stop()

    def join(self, frame: Frame) -> None:
        """Attach to ``frame`` the nearest value of each channel within the tolerance."""
        tf = frame.timestamp.to_float()
        if tf <= 0:
            return
        tol = self.tolerance
        # wait for values still on their way: until tf + tol by this host's clock, never
        # longer than the tolerance (a frame that sat in a queue does not wait at all)
        wait = min(tol, max(0.0, tf + tol - self.clock()))
        deadline = time.monotonic() + wait
        for ch in self.channels:
            if wait > 0:
                ch.wait_past(tf + tol, deadline)
            v = ch.take(tf, tol)
            if v is not None:
                frame.attributes.append(Attribute(
                    name=ch.name, value=v.value, type=v.type, descriptor=DESCRIPTOR,
                    source=ch.spec.url, source_type=SOURCE_TYPE_EPICS_PV,
                    timestamp=v.timestamp))

    def stats(self) -> dict[str, Any]:
        """Totals plus one entry per channel, for the bridge's status."""
        per = [ch.stats.snapshot() for ch in self.channels]
        total = {k: sum(p[k] for p in per) for k in
                 ("metadata_received", "metadata_matched", "metadata_unmatched")}
        return {**total, "metadata": {p["channel"]: p for p in per}}

    def reset(self) -> None:
        for ch in self.channels:
            ch.stats.reset()

    def report(self) -> str:
        return "\n".join(
            f"    metadata {ch.spec.url}: received {ch.stats.received}  matched "
            f"{ch.stats.matched}  unmatched {ch.stats.unmatched}  queued {ch.stats.queued}"
            for ch in self.channels)


def empty_stats() -> dict[str, Any]:
    return {"metadata_received": 0, "metadata_matched": 0, "metadata_unmatched": 0}


FINAL_PREFIX = "pvaflow-bridge metadata "


def final_line(join: MetadataJoin) -> str:
    """One machine-readable line: ``pvaflow-bridge metadata [{channel...}, ...]``."""
    import json

    return FINAL_PREFIX + json.dumps([ch.stats.snapshot() for ch in join.channels])


def parse_final_metadata(output: str) -> list[dict[str, Any]]:
    import json

    for line in reversed(output.splitlines()):
        if line.startswith(FINAL_PREFIX):
            result: list[dict[str, Any]] = json.loads(line[len(FINAL_PREFIX):])
            return result
    raise ValueError("no final metadata line in the output")


class MetadataCollector(Collector):
    """Prometheus view of the metadata channels, next to the bridge's own collector."""

    def __init__(self, join: MetadataJoin, inner: Collector | None = None) -> None:
        self._join = join
        self._inner = inner

    def collect(self) -> Iterator[Metric]:
        if self._inner is not None:
            yield from self._inner.collect()
        labels = ["component", "channel", "protocol"]
        for name, attr, doc in (
            ("metadata_received", "received", "metadata values received"),
            ("metadata_matched", "matched", "metadata values attached to a frame"),
            ("metadata_unmatched", "unmatched",
             "metadata values with no frame within --metadata-tolerance"),
        ):
            m = CounterMetricFamily(f"pvaflow_bridge_{name}", doc, labels=labels)
            for ch in self._join.channels:
                m.add_metric(["bridge", ch.name, ch.spec.protocol], getattr(ch.stats, attr))
            yield m
        g = GaugeMetricFamily("pvaflow_bridge_metadata_queued",
                              "metadata values waiting for a frame", labels=labels)
        for ch in self._join.channels:
            g.add_metric(["bridge", ch.name, ch.spec.protocol], ch.stats.queued)
        yield g
