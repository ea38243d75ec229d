"""The collector's stats keys as the pipeline view reads them (:data:`STATUS_SCHEMA`), and the
Prometheus view of them, read at scrape time (nothing on the hot path)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector as _PromCollector

from pvaflow.status import StatusSchema

if TYPE_CHECKING:
    from .runner import Collector

# Frames lost at the collector: skipped gaps, frames behind an emitted id, frames a collector
# plugin (or the decoder) failed on. Duplicates are not lost (another copy was emitted).
STATUS_SCHEMA = StatusSchema(
    "collector", frames_in="received", frames_out="emitted",
    lost={"missed": "missed", "late": "late", "dlq": "dlq"},
    extra=("duplicates", "cache_depth"), max_keys=("last_emitted_unique_id",))

COUNTERS = {
    "received": ("pvaflow_collector_frames_received_total", "frames read from the input topics"),
    "emitted": ("pvaflow_collector_frames_emitted_total", "frames written in uniqueId order"),
    "missed": ("pvaflow_collector_frames_missed_total", "uniqueIds given up: no input partition "
               "can still deliver them (the status's missed_by says why)"),
    "late": ("pvaflow_collector_frames_late_total", "frames older than the last emitted id"),
    "duplicates": ("pvaflow_collector_frames_duplicate_total", "redelivered frames dropped"),
    "dlq": ("pvaflow_collector_frames_dlq_total", "records sent to the collector's dead-letter "
            "topic"),
    "errors": ("pvaflow_collector_errors_total", "records without a readable uniqueId or "
               "failing the plugin"),
}
GAUGES = {
    "cache_depth": ("pvaflow_collector_cache_depth_frames", "frames waiting in the reorder cache"),
    "lag": ("pvaflow_collector_consumer_lag_messages", "input records not yet read"),
    "last_emitted_unique_id": ("pvaflow_collector_last_emitted_unique_id", "last emitted id"),
}


class CollectorMetrics(_PromCollector):
    def __init__(self, collector: Collector) -> None:
        self._c = collector

    def collect(self) -> Iterator[Metric]:
        c = self._c
        values = {**c.counts(), "cache_depth": c.reorder.depth, "lag": c.lag,
                  "last_emitted_unique_id": c.reorder.last_emitted or 0}
        labels = ["component", "group", "consumer_id"]
        lv = ["collector", c.cfg.group, c.cfg.collector_id]
        for key, (name, doc) in COUNTERS.items():
            m: Metric = CounterMetricFamily(name.removesuffix("_total"), doc, labels=labels)
            m.add_metric(lv, values[key])  # type: ignore[attr-defined]
            yield m
        for key, (name, doc) in GAUGES.items():
            g = GaugeMetricFamily(name, doc, labels=labels)
            g.add_metric(lv, values[key])
            yield g
