"""``pvaflow-monitor``: the pipeline-wide view, a faust-streaming app.

Every component publishes its stats to the status topic each report period (see
:mod:`pvaflow.control`). One faust agent (concurrency 1) keeps the latest message per component
in a Table; the Table's changelog topic is what lets a restarted monitor come back with the same
totals. The web server serves ``/status`` (JSON) and ``/metrics`` (Prometheus text), both
computed from the Table on request.

The aggregation (:func:`pipeline_view`) is plain Python so ``pvaflow status`` can compute the
same view straight from the status topic when no monitor is running; faust is imported only
when the monitor itself starts.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from pvaflow.control import STATUS_TOPIC
from pvaflow.kafka.settings import bootstrap as resolve_bootstrap
from pvaflow.options import Parser, add_kafka_args, add_run_args, parse

log = logging.getLogger(__name__)

APP_ID = "pvaflow-monitor"
STALE_AFTER = 30.0
PROM_CONTENT_TYPE = "text/plain; version=0.0.4"


@dataclass(frozen=True)
class StageKind:
    """How one kind of component maps onto frames in / out / lost. Each loss reason lists the
    stats keys that may carry it (first present wins), so renamed keys degrade gracefully."""

    frames_in: str
    frames_out: str
    lost: Mapping[str, tuple[str, ...]]
    extra: tuple[str, ...] = ()


KINDS: dict[str, StageKind] = {
    "bridge": StageKind("received", "delivered", {
        "source_gaps": ("source_gaps", "missed"), "overruns": ("overruns",),
        "dropped": ("dropped",), "delivery_errors": ("delivery_errors",),
    }, ("produced", "in_flight")),
    "consumer": StageKind("received", "processed", {
        "dlq": ("dlq",), "sequence_gaps": ("sequence_gaps",),
    }, ("errors", "outputs")),
    "collector": StageKind("received", "emitted", {
        "missed": ("missed",), "late": ("late",),
    }, ("duplicates", "cache_depth", "last_emitted_unique_id")),
}
GENERIC = StageKind("received", "processed", {})
ORDER = {"bridge": 0, "consumer": 1, "collector": 2}


def _num(stats: Mapping[str, Any], *keys: str) -> float:
    for k in keys:
        v = stats.get(k)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return v
    return 0


def remember(previous: Mapping[str, Any] | None, message: Mapping[str, Any]) -> dict[str, Any]:
    """Table entry for a status message: the message plus rates against the previous one."""
    entry: dict[str, Any] = {"msg": dict(message), "rate_in": 0.0, "rate_out": 0.0}
    kind = KINDS.get(str(message.get("kind")), GENERIC)
    if previous:
        old = previous["msg"]
        dt = float(message.get("time", 0)) - float(old.get("time", 0))
        if dt > 0:
            new_s, old_s = message.get("stats") or {}, old.get("stats") or {}
            for name, key in (("rate_in", kind.frames_in), ("rate_out", kind.frames_out)):
                delta = _num(new_s, key) - _num(old_s, key)
                entry[name] = round(delta / dt, 3) if delta >= 0 else 0.0
    return entry


def component_state(msg: Mapping[str, Any], now: float, stale_after: float) -> str:
    if msg.get("final"):
        return "stopped"
    return "stale" if now - float(msg.get("time", 0)) > stale_after else "running"


def pipeline_view(
    entries: Mapping[str, Mapping[str, Any]], now: float | None = None,
    stale_after: float = STALE_AFTER,
) -> dict[str, Any]:
    """Per-stage totals (a stage = kind + group) from the latest entry of each component."""
    now = time.time() if now is None else now
    stages: dict[tuple[str, str], dict[str, Any]] = {}
    components = []
    for name in sorted(entries):
        entry = entries[name]
        msg = entry["msg"]
        kind_name, group = str(msg.get("kind", "?")), str(msg.get("group", "?"))
        kind = KINDS.get(kind_name, GENERIC)
        stats = msg.get("stats") or {}
        state = component_state(msg, now, stale_after)
        components.append({
            "component": name, "kind": kind_name, "group": group, "id": msg.get("id"),
            "state": state, "age": round(now - float(msg.get("time", 0)), 3),
            "frames_in": _num(stats, kind.frames_in), "frames_out": _num(stats, kind.frames_out),
            "rate_out": entry.get("rate_out", 0.0), "stats": stats,
        })
        st = stages.setdefault((kind_name, group), {
            "stage": f"{kind_name}/{group}", "kind": kind_name, "group": group,
            "components": 0, "running": 0, "frames_in": 0, "frames_out": 0,
            "lost": dict.fromkeys(kind.lost, 0), "lost_total": 0, "lag": 0,
            "rate_in": 0.0, "rate_out": 0.0, **dict.fromkeys(kind.extra, 0),
        })
        st["components"] += 1
        running = state == "running"
        st["running"] += running
        st["frames_in"] += _num(stats, kind.frames_in)
        st["frames_out"] += _num(stats, kind.frames_out)
        for reason, keys in kind.lost.items():
            n = _num(stats, *keys)
            st["lost"][reason] += n
            st["lost_total"] += n
        for key in kind.extra:
            value = _num(stats, key)
            st[key] = max(st[key], value) if key == "last_emitted_unique_id" else st[key] + value
        st["lag"] += _num(stats, "lag")
        if running:  # a stopped component's last rate is history, not throughput
            st["rate_in"] = round(st["rate_in"] + entry.get("rate_in", 0.0), 3)
            st["rate_out"] = round(st["rate_out"] + entry.get("rate_out", 0.0), 3)
    ordered = sorted(stages.values(), key=lambda s: (ORDER.get(s["kind"], 9), s["group"]))
    return {
        "time": now, "stages": ordered, "components": components,
        "lost_total": sum(s["lost_total"] for s in ordered),
    }


def latest_from_messages(messages: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """What the Table holds, rebuilt from status messages in topic order."""
    entries: dict[str, dict[str, Any]] = {}
    for m in messages:
        if m.get("type") == "status" and m.get("component"):
            entries[m["component"]] = remember(entries.get(m["component"]), m)
    return entries


class ViewMetrics(Collector):
    """Prometheus metrics computed from the view at scrape time."""

    def __init__(self, view: Any) -> None:
        self._view = view

    def collect(self) -> Iterator[Metric]:
        v = self._view()
        labels = ["stage", "kind", "group"]
        fin = CounterMetricFamily("pvaflow_stage_frames_in", "frames into the stage", labels=labels)
        fout = CounterMetricFamily("pvaflow_stage_frames_out", "frames out of the stage",
                                   labels=labels)
        lost = CounterMetricFamily("pvaflow_stage_frames_lost", "frames lost in the stage",
                                   labels=[*labels, "reason"])
        lag = GaugeMetricFamily("pvaflow_stage_lag_messages", "consumer lag", labels=labels)
        rate = GaugeMetricFamily("pvaflow_stage_rate_frames_per_second", "frames out per s",
                                 labels=labels)
        comps = GaugeMetricFamily("pvaflow_stage_components", "components by state",
                                  labels=[*labels, "state"])
        for s in v["stages"]:
            lv = [s["stage"], s["kind"], s["group"]]
            fin.add_metric(lv, s["frames_in"])
            fout.add_metric(lv, s["frames_out"])
            for reason, n in s["lost"].items():
                lost.add_metric([*lv, reason], n)
            lag.add_metric(lv, s["lag"])
            rate.add_metric(lv, s["rate_out"])
            comps.add_metric([*lv, "running"], s["running"])
            comps.add_metric([*lv, "not_running"], s["components"] - s["running"])
        yield from (fin, fout, lost, lag, rate, comps)


def metrics_text(view: Mapping[str, Any]) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ViewMetrics(lambda: view))
    return generate_latest(registry)


# -- the faust app --------------------------------------------------------------------------

def build_app(
    bootstrap: str, *, app_id: str = APP_ID, status_topic: str = STATUS_TOPIC,
    web_host: str = "127.0.0.1", web_port: int = 6066, stale_after: float = STALE_AFTER,
    data_dir: str | None = None,
) -> tuple[Any, Callable[[], dict[str, Any]]]:
    """The faust app and a function returning the current view (for other exporters)."""
    import faust
    # faust writes its app directory even with an in-memory store; not into the cwd, which
    # may be read-only in a pod (and is the source tree in tests).
    data_dir = data_dir or os.path.join(tempfile.gettempdir(), "pvaflow-monitor", app_id)
    os.makedirs(data_dir, exist_ok=True)
    app = faust.App(
        app_id, broker=f"kafka://{bootstrap}", store="memory://", web_host=web_host,
        web_port=web_port, web_enabled=True, topic_replication_factor=1, topic_partitions=1,
        consumer_auto_offset_reset="earliest",
        datadir=data_dir,
    )
    topic = app.topic(status_topic, key_type=bytes, value_type=bytes, key_serializer="raw",
                      value_serializer="raw", partitions=1)
    latest = app.Table("latest", default=None, partitions=1)

    @app.agent(topic, concurrency=1)
    async def ingest(stream: Any) -> None:
        async for raw in stream:
            try:
                msg = json.loads(raw)
            except ValueError:
                log.warning("ignoring non-JSON status record %r", raw[:100])
                continue
            if isinstance(msg, dict) and msg.get("type") == "status" and msg.get("component"):
                latest[msg["component"]] = remember(latest.get(msg["component"]), msg)

    def view() -> dict[str, Any]:
        return pipeline_view(dict(latest.items()), stale_after=stale_after)

    @app.page("/status")
    async def status_page(web: Any, request: Any) -> Any:
        return web.json(view())

    @app.page("/metrics")
    async def metrics_page(web: Any, request: Any) -> Any:
        # aiohttp adds the charset itself and refuses one inside content_type.
        return web.text(metrics_text(view()).decode(), content_type=PROM_CONTENT_TYPE)

    return app, view


def build_parser() -> Parser:
    p = Parser(prog="pvaflow-monitor", description=(
        "Keep the latest status of every pvaflow component (faust Table, recovered from its "
        "changelog after a restart) and serve the pipeline-wide view at /status (JSON) and "
        "/metrics (Prometheus)."))
    p.add_argument("--status-topic", default=STATUS_TOPIC, help="(default: %(default)s)")
    p.add_argument("--app-id", default=APP_ID,
                   help="faust app id: consumer group and changelog prefix (default: %(default)s)")
    p.add_argument("--web-host", default="127.0.0.1",
                   help="address of the HTTP server (default: %(default)s; 0.0.0.0 in a pod)")
    p.add_argument("--web-port", type=int, default=6066, help="(default: %(default)s)")
    p.add_argument("--data-dir", default=None, metavar="DIR",
                   help="faust's app directory (default: <tmp>/pvaflow-monitor/<app-id>)")
    p.add_argument("--stale-after", type=float, default=STALE_AFTER, metavar="SECONDS",
                   help="a component silent this long shows as stale (default: %(default)s)")
    add_kafka_args(p)
    add_run_args(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(build_parser(), argv)
    if args.kafka_overrides:
        log.warning("-X settings do not apply to the faust (aiokafka) clients; ignored")
    import faust

    from pvaflow.kafka.topics import ensure_topic

    bootstrap = resolve_bootstrap(args.bootstrap_servers)
    ensure_topic(args.status_topic, 1, bootstrap=bootstrap, strict=False)
    app, view = build_app(bootstrap, app_id=args.app_id, status_topic=args.status_topic,
                          web_host=args.web_host, web_port=args.web_port,
                          stale_after=args.stale_after, data_dir=args.data_dir)
    if args.metrics_port is not None:
        from prometheus_client import REGISTRY

        from pvaflow.metrics import serve

        REGISTRY.register(ViewMetrics(view))
        serve(args.metrics_port)
    if args.runtime > 0:  # the worker's own SIGTERM handling gives a clean shutdown
        timer = threading.Timer(args.runtime, os.kill, (os.getpid(), signal.SIGTERM))
        timer.daemon = True
        timer.start()
    worker = faust.Worker(app, loglevel=args.log_level, quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()
    return 0


if __name__ == "__main__":
    sys.exit(main())
