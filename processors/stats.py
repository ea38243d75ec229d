"""Consumer statistics: plain counters on the hot path, read by reports, status and /metrics.

The data-plane loop only increments ints and one histogram bucket per frame; Prometheus reads
them at scrape time through a custom collector, so ``/metrics`` costs nothing per frame.
:data:`STATUS_SCHEMA` sits here, next to the keys it names, so a renamed key fails the
schema test instead of showing zero in the monitor's pipeline view.
"""

from __future__ import annotations

import bisect
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from pvaflow.metrics import LATENCY_BUCKETS, Rate
from pvaflow.status import StatusSchema

log = logging.getLogger(__name__)

STATUS_SCHEMA = StatusSchema(
    "consumer", frames_in="received", frames_out="processed",
    lost={"dlq": "dlq", "sequence_gaps": "sequence_gaps", "skipped": "skipped"},
    extra=("errors", "outputs"))


class Histogram:
    """Cumulative-at-read histogram in seconds (Prometheus semantics, no locking per sample)."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, seconds)] += 1
        self.sum += seconds

    def buckets(self) -> list[tuple[str, float]]:
        out, acc = [], 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            acc += n
            out.append(("+Inf" if bound == float("inf") else repr(float(bound)), float(acc)))
        return out

    def count(self) -> int:
        return sum(self.counts)

    def quantile(self, q: float) -> float:
        """Upper bucket bound below which a fraction ``q`` of samples fall (0 if empty)."""
        total = self.count()
        if not total:
            return 0.0
        acc = 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            acc += n
            if acc >= q * total:
                return bound
        return float("inf")


class PartitionSeq:
    """Per-partition sequence check: the bridge numbers records 0,1,2,... per partition.

    A restarted bridge numbers from 0 again under a new session (``pf.bsid``), so a number
    that is not ahead of the last one is a redelivery only within one session; across
    sessions the count restarts. The session header is read only then and on a partition's
    first record, which keeps the per-record cost at an integer compare.
    """

    __slots__ = ("gaps", "last", "repeats", "session")

    def __init__(self) -> None:
        self.last = -1
        self.gaps = 0
        self.repeats = 0
        self.session: bytes | None = None

    def see(self, seq: int, session: Callable[[], bytes | None]) -> None:
        """Count ``seq``; ``session`` reads the record's bridge session when it is needed."""
        last = self.last
        if last >= 0 and seq > last:
            self.gaps += seq - last - 1
        else:
            current = session()
            if last >= 0 and current == self.session:
                self.repeats += 1  # a redelivery after a rebalance or restart, not a loss
                return
            self.session = current  # a partition's first record, or a new bridge session
        self.last = seq


class Stats:
    """Everything the runner counts. Only the runner thread writes; readers take snapshots."""

    def __init__(self, plugin_stats: Callable[[], dict[str, Any]] = dict) -> None:
        self._plugin_stats = plugin_stats
        self.plugin_error: str | None = None
        self.reset()
        self.lag: dict[tuple[str, int], int] = {}
        self.producer_queue = 0

    def reset(self) -> None:
        self.started = time.time()
        self.received = 0
        self.bytes_in = 0
        self.processed = 0
        self.outputs = 0
        self.bytes_out = 0
        self.errors = 0
        self.decode_errors = 0
        self.dlq = 0
        self.skipped = 0  # --skip-initial-updates
        self.batches = 0  # process_batch calls
        self.first_unique_id: int | None = None
        self.last_unique_id: int | None = None
        self.seq: dict[tuple[str, int], PartitionSeq] = {}
        self.processing = Histogram()
        self.end_to_end = Histogram()
        self._rate = Rate()

    # -- hot path -------------------------------------------------------------------------

    def partition(self, topic: str, partition: int) -> PartitionSeq:
        key = (topic, partition)
        p = self.seq.get(key)
        if p is None:
            p = self.seq[key] = PartitionSeq()
        return p

    def forget_partition(self, topic: str, partition: int) -> None:
        """On revoke the next owner continues the sequence; our view of it restarts."""
        p = self.seq.get((topic, partition))
        if p is not None:
            p.last = -1

    def saw_uid(self, uid: int) -> None:
        if self.first_unique_id is None:
            self.first_unique_id = uid
        self.last_unique_id = uid

    # -- readers --------------------------------------------------------------------------

    @property
    def sequence_gaps(self) -> int:
        return sum(p.gaps for p in list(self.seq.values()))

    def update_rate(self) -> float:
        """Processed frames/s over the last second or more; call from the runner thread."""
        return self._rate.update(self.processed)

    def plugin_stats(self) -> dict[str, Any] | None:
        """The plugin's own stats, or None when its ``get_stats`` raised: a plugin's stats
        must never break status publishing, but its author has to hear about it (once, the
        status would repeat it every period)."""
        try:
            return dict(self._plugin_stats())
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            if self.plugin_error is None:
                log.warning("plugin get_stats() failed, its stats are left out: %s", error)
            self.plugin_error = error
            return None

    def snapshot(self) -> dict[str, Any]:
        """The status dict (:data:`STATUS_SCHEMA` says which keys the monitor reads)."""
        elapsed = max(time.time() - self.started, 1e-9)
        plugin = self.plugin_stats()
        if plugin is None:
            plugin = {"error": self.plugin_error}
        seqs = dict(self.seq)
        return {
            "received": self.received,
            "processed": self.processed,
            "errors": self.errors,
            "decode_errors": self.decode_errors,
            "dlq": self.dlq,
            "skipped": self.skipped,
            "batches": self.batches,
            "outputs": self.outputs,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "first_unique_id": self.first_unique_id,
            "last_unique_id": self.last_unique_id,
            "sequence_gaps": sum(p.gaps for p in seqs.values()),
            "sequence_repeats": sum(p.repeats for p in seqs.values()),
            "partition_gaps": {f"{t}[{p}]": s.gaps for (t, p), s in seqs.items()},
            "lag": sum(self.lag.values()),
            "rate": round(self._rate.value, 3),
            "average_rate": round(self.processed / elapsed, 3),
            "runtime": round(elapsed, 3),
            "processing_p50_s": self.processing.quantile(0.5),
            "processing_p99_s": self.processing.quantile(0.99),
            "producer_queue": self.producer_queue,
            "plugin": plugin,
        }


class StatsCollector(Collector):
    """Exposes a :class:`Stats` to prometheus-client under the shared naming scheme."""

    def __init__(self, stats: Stats, labels: dict[str, str]) -> None:
        self.stats = stats
        self.labels = labels

    def _l(self, **extra: str) -> tuple[list[str], list[str]]:
        d = {**self.labels, **extra}
        return list(d), list(d.values())

    def collect(self) -> Iterator[Metric]:
        s = self.stats
        names, values = self._l()
        counters = (
            ("pvaflow_frames_in", "frames consumed from the input topic", s.received),
            ("pvaflow_bytes_in", "frame bytes consumed", s.bytes_in),
            ("pvaflow_frames_processed", "frames the plugin processed", s.processed),
            ("pvaflow_frames_out", "frames produced to the output", s.outputs),
            ("pvaflow_bytes_out", "frame bytes produced", s.bytes_out),
            ("pvaflow_processing_errors", "plugin exceptions and undecodable records",
             s.errors + s.decode_errors),
            ("pvaflow_dlq_frames", "records sent to the dead-letter topic", s.dlq),
            ("pvaflow_sequence_gaps", "records missing between bridge and consumer",
             s.sequence_gaps),
        )
        for name, doc, value in counters:
            c = CounterMetricFamily(name, doc, labels=names)
            c.add_metric(values, value)
            yield c
        for name, doc, hist in (
            ("pvaflow_processing_latency_seconds", "plugin time per frame", s.processing),
            ("pvaflow_end_to_end_latency_seconds", "frame timestamp to processed", s.end_to_end),
        ):
            h = HistogramMetricFamily(name, doc, labels=names)
            h.add_metric(values, hist.buckets(), hist.sum)
            yield h
        base = {k: v for k, v in self.labels.items() if k != "topic"}
        lag = GaugeMetricFamily("pvaflow_consumer_lag_messages", "consumer lag per partition",
                                labels=[*base, "topic", "partition"])
        for (topic, part), n in dict(s.lag).items():
            lag.add_metric([*base.values(), topic, str(part)], n)
        yield lag
        q = GaugeMetricFamily("pvaflow_producer_queue_messages",
                              "messages awaiting delivery", labels=names)
        q.add_metric(values, s.producer_queue)
        yield q
