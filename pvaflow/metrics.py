"""Prometheus plumbing and health probes shared by every component.

Names follow ``pvaflow_<thing>_<unit>_total`` with seconds as the base unit; every series
carries the ``component`` label, and the wings add ``group``, ``consumer_id`` and ``topic``.

The metrics port also answers Kubernetes' probes: ``/healthz`` (the process loop is alive: it
turns 503 once the loop has not come round for ``stall_after`` seconds, so a wedged process is
restarted) and ``/readyz`` (the component is connected: its own condition, for example a PVA
channel connected or partitions assigned, and a reachable Kafka cluster).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import REGISTRY, CollectorRegistry, make_wsgi_app
from prometheus_client.core import CounterMetricFamily
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

# Latency buckets from 100 us to 60 s: frames take microseconds to process, seconds end to end.
LATENCY_BUCKETS = (
    1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2,
    0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60,
)


STALL_AFTER = 60.0  # seconds without a loop turn before /healthz reports a stall

Environ = dict[str, Any]
StartResponse = Callable[[str, list[tuple[str, str]]], Any]



class Rate:
    """Events per second over the last ``window`` seconds or more, for a status's ``rate``.

    The window moves only once it is full, so several readers (the status publisher, a PVA
    status channel, ``control get_stats``) share one window instead of shortening each
    other's:

    >>> r = Rate()
    >>> r.update(0)  # within the first second: still 0
    0.0
    """

    def __init__(self, window: float = 1.0) -> None:
        self.window = window
        self.value = 0.0
        self._mark = (time.monotonic(), 0)

    def update(self, count: int) -> float:
        """The rate, given the running ``count`` (a counter reset restarts at 0)."""
        now = time.monotonic()
        t0, n0 = self._mark
        if now - t0 >= self.window:
            self.value = (count - n0) / (now - t0) if count >= n0 else 0.0
            self._mark = (now, count)
        return self.value

class Probes:
    """Liveness from a heartbeat the loop beats; readiness from a function that returns None
    when ready, else the reason it is not (called per probe, from the server's thread)."""

    def __init__(self, stall_after: float = STALL_AFTER,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stall_after = stall_after
        self._clock = clock
        self._beat = clock()
        self.not_ready: Callable[[], str | None] = lambda: "starting"

    def beat(self) -> None:
        self._beat = self._clock()

    def live(self) -> tuple[bool, str]:
        idle = self._clock() - self._beat
        if idle > self.stall_after:
            return False, f"stalled: the loop has not come round for {idle:.0f} s"
        return True, "ok"

    def ready(self) -> tuple[bool, str]:
        try:
            reason = self.not_ready()
        except Exception as exc:  # a probe must answer, whatever the component does
            reason = f"readiness check failed: {exc}"
        return (True, "ok") if reason is None else (False, reason)


def _app(registry: CollectorRegistry, probes: Probes | None) -> Callable[..., Iterable[bytes]]:
    metrics_app = make_wsgi_app(registry)

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        if probes is not None and path in ("/healthz", "/readyz"):
            ok, text = probes.live() if path == "/healthz" else probes.ready()
            start_response("200 OK" if ok else "503 Service Unavailable",
                           [("Content-Type", "text/plain; charset=utf-8")])
            return [text.encode() + b"\n"]
        return metrics_app(environ, start_response)

    return app


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Probes every few seconds must not flood the log."""


def serve(port: int | None, registry: CollectorRegistry = REGISTRY,
          probes: Probes | None = None) -> int | None:
    """Serve /metrics (and /healthz, /readyz with ``probes``) on 0.0.0.0:``port`` (0 = any free
    port) from a daemon thread; returns the bound port."""
    if port is None:
        return None
    server = make_server("0.0.0.0", port, _app(registry, probes), ThreadingWSGIServer,
                         handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    bound = int(server.server_port)
    log.info("serving Prometheus metrics%s on port %d",
             " and health probes" if probes else "", bound)
    return bound


def thread_cpu(task_dir: str = "/proc/self/task") -> Iterator[tuple[tuple[str, str], str, float]]:
    """(thread key, name, CPU seconds) of every live thread in ``task_dir`` (a process's
    ``/proc/<pid>/task``); the key is (thread id, start time), which a reused id does not share."""
    tick = os.sysconf("SC_CLK_TCK")
    try:
        tids = os.listdir(task_dir)
    except OSError:
        return
    for tid in tids:
        try:
            with open(f"{task_dir}/{tid}/stat") as fh:
                text = fh.read()
        except OSError:
            continue  # the thread ended between the listing and the read
        name = text[text.find("(") + 1:text.rfind(")")]
        fields = text[text.rfind(")") + 2:].split()
        yield (tid, fields[19]), name, (int(fields[11]) + int(fields[12])) / tick


def kafka_threads_cpu(task_dir: str = "/proc/self/task") -> dict[tuple[str, str], float]:
    """:func:`thread_cpu` of the librdkafka threads only (librdkafka names them ``rdk:*``)."""
    return {key: cpu for key, name, cpu in thread_cpu(task_dir) if name.startswith("rdk:")}


class KafkaThreadsCpu(Collector):
    """``pvaflow_kafka_threads_cpu_seconds_total``: CPU of this process's librdkafka threads.

    Why: an idempotent or transactional producer (every pvaflow producer) whose broker answers
    slower than ``linger.ms`` can busy-wait in its librdkafka broker thread (docs/operations.md,
    "Large frames: batch.size"). ``process_cpu_seconds_total`` cannot tell that from the
    component's own work; this counter can. Threads are the ones named ``rdk:*``; a thread that
    ended keeps its last reading (folded into one sum, so memory stays with the live threads),
    and the counter never goes back.

    >>> c = KafkaThreadsCpu("bridge", task_dir="/nonexistent")
    >>> [s.value for s in next(iter(c.collect())).samples]
    [0.0]
    """

    def __init__(self, component: str, task_dir: str = "/proc/self/task") -> None:
        self.component = component
        self._task_dir = task_dir
        self._live: dict[tuple[str, str], float] = {}  # (tid, start time) -> CPU seconds
        self._ended = 0.0
        self._lock = threading.Lock()

    def collect(self) -> Iterator[CounterMetricFamily]:
        with self._lock:
            now = kafka_threads_cpu(self._task_dir)
            for key in self._live.keys() - now.keys():
                self._ended += self._live.pop(key)
            for key, cpu in now.items():
                self._live[key] = max(cpu, self._live.get(key, 0.0))
            total = self._ended + sum(self._live.values())
        family = CounterMetricFamily(
            "pvaflow_kafka_threads_cpu_seconds",
            "CPU seconds spent in this process's librdkafka threads", labels=["component"])
        family.add_metric([self.component], total)
        yield family


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
