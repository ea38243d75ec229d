"""``pvaflow-monitor``: the pipeline-wide view, a faust-streaming app.

Every component publishes its stats to the status topic each report period (see
:mod:`pvaflow.control`). One faust agent (concurrency 1) keeps the latest message per component
in a Table; the Table's changelog topic is what lets a restarted monitor come back with the same
totals. Status messages read twice (a restart, a rebalance: :mod:`.monitor_resume`) never put
an older total over a newer one (:func:`replayed`). The web server serves ``/status`` (JSON)
and ``/metrics`` (Prometheus text), both computed from the Table on request, and Kubernetes'
probes: ``/healthz`` (the event loop answers and the agent runs) and ``/readyz`` (the status
topic is assigned and Kafka answers).

What a stage's frames in, out and lost are comes from the :class:`~pvaflow.status.StatusSchema`
every status message carries, so the monitor knows no wing's stats keys. The aggregation
(:func:`pipeline_view`) is plain Python so ``pvaflow status`` can compute the same view straight
from the status topic when no monitor is running; faust is imported only when the monitor
itself starts.

The monitor reads ``-b``, ``-X`` and ``PVAFLOW_KAFKA_*`` like every other command: the status
topic is created and the cluster's reachability checked with the same librdkafka settings, and
:mod:`pvaflow.kafka.aio` turns them into faust's broker URLs and credentials (SASL PLAIN /
SCRAM, TLS).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from confluent_kafka import KafkaException
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from pvaflow.component import as_pvaflow_error, run_command
from pvaflow.control import STATUS_TOPIC
from pvaflow.kafka.aio import AioSettings
from pvaflow.kafka.client import Kafka
from pvaflow.kafka.topics import Replication, broker_default_replication, ensure_topic
from pvaflow.options import Parser, add_kafka_args, add_run_args, parse, set_log_identity
from pvaflow.status import STAGE_ORDER, StatusSchema, generic

from . import page
from .thumbnail import Thumbnails

log = logging.getLogger(__name__)

APP_ID = "pvaflow-monitor"
STALE_AFTER = 30.0
SESSION_TIMEOUT = 10.0  # seconds; see build_app
PROM_CONTENT_TYPE = "text/plain; version=0.0.4"


# Optional stats key every kind may report: messages waiting in front of the component.
LAG_KEY = "lag"
# Position of each known kind in the view (sources first); unknown kinds sort after them.
ORDER = {kind: i for i, kind in enumerate(STAGE_ORDER)}


def schema_of(message: Mapping[str, Any]) -> StatusSchema:
    """The schema a status message carries (:func:`pvaflow.status.generic` when it has none,
    e.g. from an older component)."""
    kind = str(message.get("kind", "?"))
    raw = message.get("schema")
    if isinstance(raw, Mapping):
        try:
            return StatusSchema.from_json({"kind": kind, **raw})
        except (TypeError, ValueError, AttributeError):
            log.debug("ignoring malformed schema in the status of %s", message.get("component"))
    return generic(kind)


def _num(stats: Mapping[str, Any], key: str) -> float:
    v = stats.get(key)
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return v
    return 0


def remember(previous: Mapping[str, Any] | None, message: Mapping[str, Any],
             offset: int | None = None) -> dict[str, Any]:
    """Table entry for a status message: the message plus rates against the previous one, and
    the message's offset in the status topic when known (see :func:`replayed`)."""
    entry: dict[str, Any] = {"msg": dict(message), "rate_in": 0.0, "rate_out": 0.0}
    if offset is not None:
        entry["offset"] = offset
    schema = schema_of(message)
    if previous:
        old = previous["msg"]
        dt = float(message.get("time", 0)) - float(old.get("time", 0))
        if dt > 0:
            new_s, old_s = message.get("stats") or {}, old.get("stats") or {}
            for name, key in (("rate_in", schema.frames_in), ("rate_out", schema.frames_out)):
                delta = _num(new_s, key) - _num(old_s, key)
                entry[name] = round(delta / dt, 3) if delta >= 0 else 0.0
    return entry


# Stats keys naming the topics a component reads and writes (a string or a list of them), and
# per-partition mappings keyed ``topic[partition]`` (the consumer's ``partition_gaps``): the
# status page labels the pipeline graph's arrows with them.
TOPIC_KEYS = {"input_topic": "in", "input_topics": "in", "output_topic": "out",
              "output_topics": "out"}
PARTITION_KEYS = ("partition_gaps",)


def stats_topics(stats: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """(topics read, topics written) as far as a component's stats name them."""
    found: dict[str, list[str]] = {"in": [], "out": []}
    for key, side in TOPIC_KEYS.items():
        v = stats.get(key)
        names = [v] if isinstance(v, str) else v if isinstance(v, list) else []
        found[side] += [n for n in names if isinstance(n, str) and n]
    for key in PARTITION_KEYS:
        v = stats.get(key)
        if isinstance(v, Mapping):
            found["in"] += [str(k).rpartition("[")[0] for k in v if "[" in str(k)]
    return (list(dict.fromkeys(t for t in found["in"] if t)),
            list(dict.fromkeys(t for t in found["out"] if t)))


def component_state(msg: Mapping[str, Any], now: float, stale_after: float) -> str:
    if msg.get("final"):
        return "stopped"
    return "stale" if now - float(msg.get("time", 0)) > stale_after else "running"


# Keys of a stage in the view; an extra stats key with one of these names is only in "extras".
_STAGE_KEYS = frozenset({"stage", "kind", "group", "components", "running", "frames_in",
                         "frames_out", "lost", "lost_total", "lag", "rate_in", "rate_out",
                         "extras", "topics_in", "topics_out"})


def pipeline_view(
    entries: Mapping[str, Mapping[str, Any]], now: float | None = None,
    stale_after: float = STALE_AFTER,
) -> dict[str, Any]:
    """Per-stage totals (a stage = kind + group) from the latest entry of each component.

    What counts as frames in, out and lost comes from the schema each status message carries
    (:mod:`pvaflow.status`); ``extra`` keys are summed (``max_keys`` maxed) into the stage's
    ``extras`` and, for the table and older readers, also as top-level keys of the stage.
    """
    now = time.time() if now is None else now
    stages: dict[tuple[str, str], dict[str, Any]] = {}
    components = []
    for name in sorted(entries):
        entry = entries[name]
        msg = entry["msg"]
        kind_name, group = str(msg.get("kind", "?")), str(msg.get("group", "?"))
        schema = schema_of(msg)
        stats = msg.get("stats") or {}
        state = component_state(msg, now, stale_after)
        components.append({
            "component": name, "kind": kind_name, "group": group, "id": msg.get("id"),
            "state": state, "age": round(now - float(msg.get("time", 0)), 3),
            "frames_in": _num(stats, schema.frames_in),
            "frames_out": _num(stats, schema.frames_out),
            "rate_out": entry.get("rate_out", 0.0), "stats": stats,
        })
        st = stages.setdefault((kind_name, group), {
            "stage": f"{kind_name}/{group}", "kind": kind_name, "group": group,
            "components": 0, "running": 0, "frames_in": 0, "frames_out": 0,
            "lost": {}, "lost_total": 0, "lag": 0, "rate_in": 0.0, "rate_out": 0.0,
            "extras": {}, "topics_in": [], "topics_out": [],
        })
        st["components"] += 1
        running = state == "running"
        st["running"] += running
        st["frames_in"] += _num(stats, schema.frames_in)
        st["frames_out"] += _num(stats, schema.frames_out)
        for reason, key in schema.lost.items():
            n = _num(stats, key)
            st["lost"][reason] = st["lost"].get(reason, 0) + n
            st["lost_total"] += n
        extras = st["extras"]
        for key in schema.extra:
            extras[key] = extras.get(key, 0) + _num(stats, key)
        for key in schema.max_keys:
            extras[key] = max(extras.get(key, 0), _num(stats, key))
        st["lag"] += _num(stats, LAG_KEY)
        t_in, t_out = stats_topics(stats)
        st["topics_in"] += [t for t in t_in if t not in st["topics_in"]]
        st["topics_out"] += [t for t in t_out if t not in st["topics_out"]]
        if running:  # a stopped component's last rate is history, not throughput
            st["rate_in"] = round(st["rate_in"] + entry.get("rate_in", 0.0), 3)
            st["rate_out"] = round(st["rate_out"] + entry.get("rate_out", 0.0), 3)
    for st in stages.values():
        st.update({k: v for k, v in st["extras"].items() if k not in _STAGE_KEYS})
    ordered = sorted(stages.values(),
                     key=lambda s: (ORDER.get(s["kind"], len(ORDER)), s["kind"], s["group"]))
    return {
        "time": now, "stages": ordered, "components": components,
        "lost_total": sum(s["lost_total"] for s in ordered),
    }


def replayed(previous: Mapping[str, Any] | None, message: Mapping[str, Any],
             offset: int) -> bool:
    """Whether the entry already reflects this status message or a later one.

    The monitor reads some status messages twice: after a restart faust starts again at the
    committed offset, which can be behind the changelog the Table came back from, and after
    every rebalance the monitor seeks back on purpose (:mod:`.monitor_resume`). Applying such
    a message again would put an older total over a newer one, for a while or, when its
    component has stopped, for good. A replay is at or before the entry's offset *and* no
    newer: a status topic deleted and created again counts offsets from 0, with newer times.

    >>> entry = remember(None, {"time": 20.0}, offset=7)
    >>> replayed(entry, {"time": 10.0}, 3), replayed(entry, {"time": 30.0}, 8)
    (True, False)
    """
    if not previous or previous.get("offset") is None:
        return False
    return (offset <= int(previous["offset"])
            and float(message.get("time", 0)) <= float(previous["msg"].get("time", 0)))


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
    kafka: AioSettings | str, *, app_id: str = APP_ID, status_topic: str = STATUS_TOPIC,
    web_host: str = "127.0.0.1", web_port: int = 6066, stale_after: float = STALE_AFTER,
    data_dir: str | None = None, thumbnails: Thumbnails | None = None,
    kafka_check: Callable[[], str | None] | None = None, replication: int = 1,
) -> tuple[Any, Callable[[], dict[str, Any]]]:
    """The faust app and a function returning the current view (for other exporters).

    ``kafka`` says where and how to connect (:class:`~pvaflow.kafka.aio.AioSettings`, from the
    same ``-b`` / ``-X`` / ``PVAFLOW_KAFKA_*`` settings every command reads), or is a plain
    bootstrap string for a PLAINTEXT cluster. ``thumbnails`` feeds the status page's
    pictures (:mod:`pvaflow.ops.page`). ``kafka_check`` (blocking; run off the event
    loop) returns why Kafka is not usable, or None, for ``/readyz``. ``replication`` is the
    replication factor of the Table's changelog topic.

    The group session timeout is 10 s, not faust's 60: a monitor restarted after a crash
    (SIGKILL, a node lost) waits for the dead member's session to end before it is given the
    status topic again, and showed nothing for a minute.
    """
    import faust

    from .monitor_resume import ReseekAfterRebalance

    aio = kafka if isinstance(kafka, AioSettings) else AioSettings.from_config(
        {"bootstrap.servers": kafka})
    # faust writes its app directory even with an in-memory store; not into the cwd, which
    # may be read-only in a pod (and is the source tree in tests).
    data_dir = data_dir or os.path.join(tempfile.gettempdir(), "pvaflow-monitor", app_id)
    os.makedirs(data_dir, exist_ok=True)
    app = faust.App(
        app_id, **aio.faust_settings(), store="memory://", web_host=web_host,
        web_port=web_port, web_enabled=True, topic_replication_factor=replication,
        topic_partitions=1, consumer_auto_offset_reset="earliest",
        broker_session_timeout=SESSION_TIMEOUT,
        datadir=data_dir, Table=_changelog_awaiting_table(faust.Table),
    )
    topic = app.topic(status_topic, key_type=bytes, value_type=bytes, key_serializer="raw",
                      value_serializer="raw", partitions=1)
    latest: Any = app.Table("latest", default=None, partitions=1)  # a ChangelogAwaitingTable

    app.sensors.add(ReseekAfterRebalance(aio, app_id, status_topic))

    @app.agent(topic, concurrency=1)
    async def ingest(stream: Any) -> None:
        async for event in stream.events():
            raw, offset = event.value, event.message.offset
            try:
                msg = json.loads(raw)
            except ValueError:
                log.warning("ignoring non-JSON status record %r", raw[:100])
                continue
            if isinstance(msg, dict) and msg.get("type") == "status" and msg.get("component"):
                previous = latest.get(msg["component"])
                if replayed(previous, msg, offset):
                    continue
                latest[msg["component"]] = remember(previous, msg, offset)
                await latest.changelog_written()

    def view() -> dict[str, Any]:
        return pipeline_view(dict(latest.items()), stale_after=stale_after)

    page.register(app, view, thumbnails)

    @app.page("/status")
    async def status_page(web: Any, request: Any) -> Any:
        return web.json(view())

    @app.page("/metrics")
    async def metrics_page(web: Any, request: Any) -> Any:
        # aiohttp adds the charset itself and refuses one inside content_type.
        return web.text(metrics_text(view()).decode(), content_type=PROM_CONTENT_TYPE)

    @app.page("/healthz")
    async def healthz_page(web: Any, request: Any) -> Any:
        # Answering at all means the event loop turns; the agent must be alive too.
        return _probe(web, agent_problem(ingest))

    @app.page("/readyz")
    async def readyz_page(web: Any, request: Any) -> Any:
        reason = agent_problem(ingest) or assignment_problem(app, status_topic)
        if reason is None and kafka_check is not None:
            reason = await asyncio.get_running_loop().run_in_executor(None, kafka_check)
        return _probe(web, reason)

    return app, view


def _changelog_awaiting_table(base: type[Any]) -> type[Any]:
    """faust's Table, whose writer can wait until its last change is in the changelog.

    faust commits a source offset after flushing its producer buffer, but that flush gives up
    after 0.1 s without progress (``ProducerBuffer.flush_atmost``), so on a loaded machine the
    offset of a status message can be committed while its Table change still waits in the
    buffer. A monitor killed then comes back without that change and never reads the message
    again (seen as a restarted monitor missing the final totals). The agent awaits each
    change's delivery before it takes the next message, so an offset is only acknowledged,
    and committed, after its change is on the broker. Status messages are few (one per
    component per report period), so the wait costs nothing that matters.
    """

    class ChangelogAwaitingTable(base):
        _last_change: asyncio.Future[Any] | None = None

        def send_changelog(self, *args: Any, **kwargs: Any) -> Any:
            self._last_change = fut = super().send_changelog(*args, **kwargs)
            return fut

        async def changelog_written(self) -> None:
            fut, self._last_change = self._last_change, None
            if fut is not None:
                await fut

    return ChangelogAwaitingTable


def _probe(web: Any, reason: str | None) -> Any:
    return web.text(f"{reason or 'ok'}\n", status=503 if reason else 200)


def agent_problem(agent: Any) -> str | None:
    """Why the status agent is not working (crashed, or all its actors ended), or None."""
    if agent.crashed:
        return f"the status agent crashed: {agent.crash_reason!r}"
    tasks = [a.actor_task for a in list(agent._actors) if a.actor_task is not None]
    if agent.started and tasks and all(t.done() for t in tasks):
        return "the status agent has stopped"
    return None


def assignment_problem(app: Any, status_topic: str) -> str | None:
    if not any(tp.topic == status_topic for tp in app.consumer.assignment()):
        return f"status topic {status_topic} not assigned yet"
    return None


def kafka_checker(kafka: Kafka, status_topic: str, timeout: float = 3.0
                  ) -> Callable[[], str | None]:
    """A readiness check: the cluster answers a metadata request for the status topic."""
    admin: list[Any] = []

    def check() -> str | None:
        if not admin:
            admin.append(kafka.admin())
        try:
            md = admin[0].list_topics(topic=status_topic, timeout=timeout)
        except KafkaException as exc:
            return f"Kafka at {kafka.bootstrap} unreachable ({exc.args[0] if exc.args else exc})"
        if not md.brokers:
            return f"Kafka at {kafka.bootstrap} unreachable (no broker answered)"
        return None

    return check


def build_parser() -> Parser:
    p = Parser(prog="pvaflow-monitor", description=(
        "Keep the latest status of every pvaflow component (faust Table, recovered from its "
        "changelog after a restart) and serve the pipeline-wide view at /status (JSON) and "
        "/metrics (Prometheus), and a status page with the pipeline graph and thumbnails "
        "at /."))
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
    p.add_argument("--thumbnail-topic", action="append", default=[], metavar="TOPIC",
                   dest="thumbnail_topics",
                   help="show a thumbnail of the latest frame of TOPIC on the status page "
                        "(read at most once a second; repeatable)")
    add_kafka_args(p)
    add_run_args(p)
    return p


def prepare(args: Any) -> tuple[AioSettings, int]:
    """Everything before the faust worker starts, with the settings every command uses: the
    asyncio clients' settings (a setting they cannot honour is a ConfigError), the cluster's
    reachability (KafkaUnavailable, exit 3), the status topic, and the replication factor
    for faust's changelog topic (``--replication-factor``, else the broker's default, as
    for every topic pvaflow creates)."""
    kafka = Kafka.from_args(args)
    aio = AioSettings.from_kafka(kafka)
    aio.log_ignored()
    kafka.check_reachable()
    replication = Replication.from_args(args)
    try:
        admin = kafka.admin()
        ensure_topic(args.status_topic, 1, admin=admin, strict=False, replication=replication)
        factor = replication.factor if replication.factor > 0 else (
            broker_default_replication(admin) or 1)
    except KafkaException as exc:
        raise as_pvaflow_error(exc, kafka) from None
    log.info("monitor: Kafka %s, status topic %s", aio.describe(), args.status_topic)
    return aio, factor


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(build_parser(), argv)
    prog = "pvaflow-monitor"

    def body() -> int:
        set_log_identity("monitor", args.app_id,
                         os.environ.get("POD_NAME") or socket.gethostname())
        aio, replication = prepare(args)
        return serve(args, aio, replication)

    return run_command(prog, body)


def serve(args: Any, aio: AioSettings, replication: int = 1) -> int:
    """Run the faust worker until it is stopped (SIGINT/SIGTERM, or ``--runtime``)."""
    import faust

    thumbnails = (Thumbnails(Kafka.from_args(args), args.thumbnail_topics)
                  if args.thumbnail_topics else None)
    app, view = build_app(aio, app_id=args.app_id, status_topic=args.status_topic,
                          web_host=args.web_host, web_port=args.web_port,
                          stale_after=args.stale_after, data_dir=args.data_dir,
                          thumbnails=thumbnails,
                          kafka_check=kafka_checker(Kafka.from_args(args), args.status_topic),
                          replication=replication)
    if args.metrics_port is not None:
        from prometheus_client import REGISTRY

        from pvaflow.metrics import serve as serve_metrics

        REGISTRY.register(ViewMetrics(view))
        serve_metrics(args.metrics_port)
    if args.runtime > 0:  # the worker's own SIGTERM handling gives a clean shutdown
        timer = threading.Timer(args.runtime, os.kill, (os.getpid(), signal.SIGTERM))
        timer.daemon = True
        timer.start()
    # faust would configure logging itself (colour, on stdout): keep the handler -ll and
    # --log-format set up, so its lines and aiokafka's read like every other pvaflow line.
    worker = faust.Worker(app, loglevel=args.log_level, quiet=True, redirect_stdouts=False,
                          override_logging=False)
    worker.spinner = None  # it writes terminal escapes to stdout, a log file in a pod
    try:
        worker.execute_from_commandline()
    finally:
        if thumbnails is not None:
            thumbnails.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
