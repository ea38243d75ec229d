"""Prometheus view of a collector's stats, read at scrape time (nothing on the hot path)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector as _PromCollector

if TYPE_CHECKING:
    from .runner import Collector

COUNTERS = {
    "received": ("pvaflow_collector_frames_received_total", "frames read from the input topics"),
    "emitted": ("pvaflow_collector_frames_emitted_total", "frames released in uniqueId order"),
    "missed": ("pvaflow_collector_frames_missed_total", "uniqueIds skipped after --max-delay "
               "or a full cache"),
    "late": ("pvaflow_collector_frames_late_total", "frames older than the last emitted id"),
    "duplicates": ("pvaflow_collector_frames_duplicate_total", "redelivered frames dropped"),
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
        s = c.reorder.stats
        values = {
            "received": s.received, "emitted": s.emitted, "missed": s.missed, "late": s.late,
            "duplicates": s.duplicates, "errors": c.errors, "cache_depth": c.reorder.depth,
            "lag": c.lag, "last_emitted_unique_id": c.reorder.last_emitted or 0,
        }
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


def register(collector: Collector, registry: CollectorRegistry = REGISTRY) -> None:
    registry.register(CollectorMetrics(collector))
