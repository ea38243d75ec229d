"""Per-channel counters, the periodic report and the Prometheus view of them.

Counters are plain ints, each written by one thread only (intake or delivery callback), so
the hot path takes no lock; Prometheus reads them at scrape time through a custom collector
instead of paying for a locked ``Counter.inc`` per frame.
"""

from __future__ import annotations

import bisect
import json
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from pvaflow.metrics import LATENCY_BUCKETS
from pvaflow.status import StatusSchema

DROP_REASONS = ("buffer_full", "too_large", "invalid", "produce_error", "unflushed",
                "codec_error")

# How the monitor reads :func:`totals`; renaming one of these keys must fail the schema test,
# not silently show zero in the pipeline view.
STATUS_SCHEMA = StatusSchema(
    "bridge", frames_in="received", frames_out="delivered",
    lost={"source_gaps": "missed", "overruns": "overruns", "dropped": "dropped",
          "delivery_errors": "delivery_errors"},
    extra=("produced", "in_flight", "compressing", "codec_seconds", "missed_at_start"))


@dataclass
class ChannelStats:
    """Everything counted for one input channel. Accounting invariant once flushed:
    ``received == delivered + delivery_errors + sum(dropped)``."""

    channel: str
    topic: str
    received: int = 0
    bytes_received: int = 0
    produced: int = 0
    bytes_produced: int = 0
    delivered: int = 0
    bytes_delivered: int = 0
    delivery_errors: int = 0
    missed: int = 0            # uniqueIds never seen (gaps), whatever their cause
    missed_at_start: int = 0   # of those, published before the first frame the bridge saw
    overruns: int = 0          # PVA monitor overruns reported by pvAccess
    queue_rejected: int = 0    # refused by a full client (PvObjectQueue) queue
    restarts: int = 0          # uniqueId went backwards: the source restarted
    duplicates: int = 0        # same uniqueId again (a reconnect re-sends the current value)
    empty: int = 0             # updates without a value (a fresh record's initial state)
    # --codec: frames handed to the codec stage (intake thread) and leaving it (its sender
    # thread), frames the bridge compressed and the CPU seconds that took (sender thread)
    codec_queued: int = 0
    codec_done: int = 0
    codec_frames: int = 0
    codec_seconds: float = 0.0
    first_id: int | None = None
    last_id: int | None = None
    dropped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DROP_REASONS, 0))
    latency_buckets: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    latency_sum: float = 0.0

    @property
    def dropped_total(self) -> int:
        return sum(self.dropped.values())

    @property
    def compressing(self) -> int:
        """Frames in the codec stage: received, not yet produced or dropped."""
        return self.codec_queued - self.codec_done

    @property
    def in_flight(self) -> int:
        return self.produced - self.delivered - self.delivery_errors

    def observe_latency(self, seconds: float) -> None:
        self.latency_buckets[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.latency_sum += seconds

    def snapshot(self) -> dict[str, Any]:
        return {
            "channel": self.channel, "topic": self.topic, "received": self.received,
            "bytes_received": self.bytes_received, "produced": self.produced,
            "bytes_produced": self.bytes_produced, "delivered": self.delivered,
            "bytes_delivered": self.bytes_delivered, "delivery_errors": self.delivery_errors,
            "dropped": self.dropped_total, "dropped_by_reason": dict(self.dropped),
            "missed": self.missed, "missed_at_start": self.missed_at_start,
            "overruns": self.overruns,
            "queue_rejected": self.queue_rejected, "restarts": self.restarts,
            "duplicates": self.duplicates, "empty": self.empty, "in_flight": self.in_flight,
            "compressing": self.compressing, "codec_frames": self.codec_frames,
            "codec_seconds": round(self.codec_seconds, 6),
            "first_id": self.first_id, "last_id": self.last_id,
        }

    def reset(self) -> None:
        keep = (self.channel, self.topic)
        self.__init__(*keep)  # type: ignore[misc]


class Reporter:
    """Formats the periodic stdout report: totals plus rates since the previous report."""

    def __init__(self, stats: Sequence[ChannelStats]) -> None:
        self._stats = stats
        self._t0 = self._last_t = time.monotonic()
        self._last: dict[str, tuple[int, int, int]] = {}

    def report(self, final: bool = False) -> str:
        now = time.monotonic()
        dt = max(now - self._last_t, 1e-9)
        lines = []
        for s in self._stats:
            prev = self._last.get(s.channel, (0, 0, 0))
            rate = (s.received - prev[0]) / dt
            drate = (s.delivered - prev[1]) / dt
            mbps = (s.bytes_delivered - prev[2]) / dt / 1e6
            self._last[s.channel] = (s.received, s.delivered, s.bytes_delivered)
            lines.append(
                f"{'final ' if final else ''}bridge statistics {s.channel} -> {s.topic} "
                f"(runtime {now - self._t0:.1f}s)\n"
                f"    received: {s.received} ({rate:.1f} fps)  missed: {s.missed}"
                + (f" ({s.missed_at_start} before the first frame)" if s.missed_at_start
                   else "")
                + f"  overruns: {s.overruns}  queue rejected: {s.queue_rejected}  "
                f"restarts: {s.restarts}\n"
                f"    produced: {s.produced}  delivered: {s.delivered} ({drate:.1f} fps, "
                f"{mbps:.2f} MB/s)  in flight: {s.in_flight}  delivery errors: "
                f"{s.delivery_errors}  dropped: {s.dropped_total}"
                + (f" {_nonzero(s.dropped)}" if s.dropped_total else "")
                + (_codec_line(s) if s.codec_queued or s.codec_frames else "")
            )
        self._last_t = now
        return "\n".join(lines)


def totals(stats: Iterable[ChannelStats]) -> dict[str, Any]:
    """The status of the whole bridge: counters summed over its channels (uniqueIds of
    different channels do not add up: the lowest first and highest last are kept)."""
    total: dict[str, Any] = {}
    for s in stats:
        for k, v in s.snapshot().items():
            if k in ("first_id", "last_id"):
                if v is not None:
                    pick = min if k == "first_id" else max
                    total[k] = v if total.get(k) is None else pick(total[k], v)
            elif isinstance(v, int | float) and not isinstance(v, bool):
                total[k] = total.get(k, 0) + v
    return total


def final_json(stats: Iterable[ChannelStats]) -> str:
    """One machine-readable line for scripts and tests: ``pvaflow-bridge final {...}``."""
    return "pvaflow-bridge final " + json.dumps([s.snapshot() for s in stats])


def parse_final(output: str) -> list[dict[str, Any]]:
    for line in reversed(output.splitlines()):
        if line.startswith("pvaflow-bridge final "):
            result: list[dict[str, Any]] = json.loads(line.split(" ", 2)[2])
            return result
    raise ValueError("no final statistics line in the output")


def _codec_line(s: ChannelStats) -> str:
    per_frame = s.codec_seconds / s.codec_frames * 1e3 if s.codec_frames else 0.0
    ratio = s.bytes_received / s.bytes_produced if s.bytes_produced else 0.0
    return (f"\n    compressed: {s.codec_frames} ({s.codec_seconds:.2f} s CPU, "
            f"{per_frame:.2f} ms/frame)  compressing: {s.compressing}  "
            f"received/produced bytes: {ratio:.2f}")


def _nonzero(d: dict[str, int]) -> dict[str, int]:
    return {k: v for k, v in d.items() if v}


_COUNTERS: tuple[tuple[str, str, str], ...] = (
    ("frames_received", "received", "frames received from PVA"),
    ("bytes_received", "bytes_received", "array bytes received from PVA"),
    ("frames_produced", "produced", "frames accepted by the Kafka producer"),
    ("bytes_produced", "bytes_produced", "bytes accepted by the Kafka producer"),
    ("frames_delivered", "delivered", "frames acknowledged by Kafka"),
    ("bytes_delivered", "bytes_delivered", "bytes acknowledged by Kafka"),
    ("delivery_errors", "delivery_errors", "frames Kafka failed to deliver"),
    ("source_missed_frames", "missed", "frames missing from the uniqueId sequence"),
    ("source_missed_at_start_frames", "missed_at_start",
     "frames published before the bridge's first frame (part of source_missed_frames)"),
    ("source_overruns", "overruns", "PVA monitor overruns"),
    ("client_queue_rejected_frames", "queue_rejected", "frames refused by a full client queue"),
    ("source_restarts", "restarts", "source restarts (uniqueId went backwards)"),
    ("codec_frames", "codec_frames", "frames the bridge compressed (--codec)"),
    ("codec_seconds", "codec_seconds", "CPU seconds the bridge spent compressing (--codec)"),
)


class BridgeCollector(Collector):
    """Prometheus collector over the live :class:`ChannelStats` (read at scrape time)."""

    def __init__(self, stats: Sequence[ChannelStats], queue_depth: Any = None) -> None:
        self._stats = stats
        self._queue_depth = queue_depth

    def collect(self) -> Iterator[Metric]:
        labels = ["component", "channel", "topic"]
        for name, attr, doc in _COUNTERS:
            m = CounterMetricFamily(f"pvaflow_bridge_{name}", doc, labels=labels)
            for s in self._stats:
                m.add_metric(["bridge", s.channel, s.topic], getattr(s, attr))
            yield m
        dropped = CounterMetricFamily(
            "pvaflow_bridge_frames_dropped", "frames received but never delivered, by reason",
            labels=[*labels, "reason"],
        )
        for s in self._stats:
            for reason, n in s.dropped.items():
                dropped.add_metric(["bridge", s.channel, s.topic, reason], n)
        yield dropped
        inflight = GaugeMetricFamily(
            "pvaflow_bridge_in_flight_frames", "produced, not yet acknowledged", labels=labels)
        for s in self._stats:
            inflight.add_metric(["bridge", s.channel, s.topic], s.in_flight)
        yield inflight
        compressing = GaugeMetricFamily(
            "pvaflow_bridge_codec_pending_frames",
            "frames in the codec stage (received, not yet produced)", labels=labels)
        for s in self._stats:
            compressing.add_metric(["bridge", s.channel, s.topic], s.compressing)
        yield compressing
        if self._queue_depth is not None:
            depth = GaugeMetricFamily(
                "pvaflow_bridge_producer_queue_messages",
                "messages held in the Kafka producer's buffer", labels=["component"])
            depth.add_metric(["bridge"], float(self._queue_depth()))
            yield depth
        hist = HistogramMetricFamily(
            "pvaflow_bridge_delivery_latency_seconds", "produce() to delivery report",
            labels=labels)
        for s in self._stats:
            cumulative, buckets = 0, []
            for bound, n in zip([*LATENCY_BUCKETS, float("inf")], s.latency_buckets, strict=True):
                cumulative += n
                buckets.append((_le(bound), float(cumulative)))
            hist.add_metric(["bridge", s.channel, s.topic], buckets, s.latency_sum)
        yield hist


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(float(bound))
