"""Prometheus plumbing shared by every component.

Names follow ``pvaflow_<thing>_<unit>_total`` with seconds as the base unit; every series
carries the ``component`` label, and the wings add ``group``, ``consumer_id`` and ``topic``.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, start_http_server

log = logging.getLogger(__name__)

# Latency buckets from 100 us to 60 s: frames take microseconds to process, seconds end to end.
LATENCY_BUCKETS = (
    1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2,
    0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60,
)


def serve(port: int | None, registry: CollectorRegistry = REGISTRY) -> int | None:
    """Start /metrics on 0.0.0.0:``port`` (0 = any free port); returns the bound port."""
    if port is None:
        return None
    server, _thread = start_http_server(port, registry=registry)
    bound = int(server.server_port)
    log.info("serving Prometheus metrics on port %d", bound)
    return bound


def consumer_lag(stats_json: str | bytes) -> dict[tuple[str, int], int]:
    """Per-partition lag from a librdkafka statistics callback (only assigned partitions)."""
    stats: dict[str, Any] = json.loads(stats_json)
    lag: dict[tuple[str, int], int] = {}
    for topic, t in stats.get("topics", {}).items():
        for pid, p in t.get("partitions", {}).items():
            if int(pid) < 0 or p.get("fetch_state") in (None, "none", "stopped"):
                continue
            # consumer_lag_stored is -1 until offsets are stored, and pvaflow commits
            # explicitly without storing them, so fall back to the committed-offset lag.
            value = p.get("consumer_lag_stored", -1)
            if value is None or value < 0:
                value = p.get("consumer_lag", -1)
            if value is not None and value >= 0:
                lag[(topic, int(pid))] = int(value)
    return lag
