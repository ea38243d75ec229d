"""``pvaflow-consumer`` / ``pvaflow consume``: run a plugin in a Kafka consumer group.

Option names follow PvaPy's ``pvapy-hpc-consumer`` wherever the meaning is the same, so a
seed command line needs only ``--input-channel`` swapped for ``--input-topic``.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time
from collections.abc import Sequence
from typing import Any

from confluent_kafka.admin import AdminClient
from prometheus_client import REGISTRY

from pvaflow.control import CONTROL_TOPIC, STATUS_TOPIC, CommandBus, ComponentId, ControlAgent
from pvaflow.kafka.settings import admin_config
from pvaflow.kafka.topics import ensure_topic
from pvaflow.memory import release_large_frees
from pvaflow.metrics import serve
from pvaflow.options import Parser, add_kafka_args, add_run_args, parse
from pvaflow.plugin import PluginError, Processor, PvaPyAdapter, load_processor

from .pva_channels import PvaChannels, channel_name
from .runner import Runner, RunnerConfig
from .stats import Stats, StatsCollector

log = logging.getLogger("pvaflow.consumer")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="pvaflow-consumer", description=__doc__.splitlines()[0])
    g = p.add_argument_group("input and output")
    g.add_argument("--input-topic", required=True, help="frames topic the bridge writes")
    g.add_argument("--distributor-set", metavar="SET",
                   help="consume the bridge's set SET (topic <input-topic>.SET)")
    g.add_argument("--group", help="consumer group (default: pvaflow.<input topic>); members of "
                   "a group share frames, distinct groups each see all of them")
    g.add_argument("--output-topic", help="topic for processed frames (key = uniqueId)")
    g.add_argument("--output-partitions", type=int, default=1,
                   help="partitions when creating the output topic (default: 1)")
    g.add_argument("--dlq-topic", help="dead-letter topic for undecodable records and plugin "
                   "failures (default: <input topic>.dlq; '' disables)")
    g.add_argument("--exactly-once", action="store_true",
                   help="Kafka transactions: each output is visible to read_committed readers "
                   "exactly once")
    g.add_argument("--max-queue-size", type=int, default=1000, metavar="N",
                   help="frames produced but not yet delivered before consuming pauses; with "
                   "the producer's queue.buffering.max.kbytes it bounds memory (default: 1000)")
    g.add_argument("--batch-size", type=int, default=32,
                   help="records per consume() call (default: 32, at most --max-queue-size)")
    g.add_argument("--commit-interval", type=float, default=0.2, metavar="SECONDS",
                   help="seconds between offset commits / transactions (default: 0.2)")
    g.add_argument("--distributor-updates", type=int, help=argparse.SUPPRESS)  # PvaPy compat:
    g.add_argument("--n-distributor-sets", type=int, help=argparse.SUPPRESS)  # bridge's plan

    g = p.add_argument_group("plugin")
    g.add_argument("--processor", metavar="NAME|module:Class",
                   help="entry point name in group pvaflow.processors, or module:Class")
    g.add_argument("--processor-file", help="Python file defining the processor class")
    g.add_argument("--processor-class", help="class name in --processor-file (or a dotted "
                   "module.Class, as PvaPy accepts)")
    g.add_argument("--processor-args", default="{}", metavar="JSON",
                   help="JSON object passed to the processor's constructor")

    g = p.add_argument_group("consumers")
    g.add_argument("--n-consumers", type=int, default=1,
                   help="spawn N processes with ids consumer-id..consumer-id+N-1 in one group")
    g.add_argument("--consumer-id", type=int, default=1, help="this consumer's id (default: 1)")

    g = p.add_argument_group("control and status")
    g.add_argument("--control-topic", default=CONTROL_TOPIC,
                   help=f"control topic (default: {CONTROL_TOPIC}; '' disables topic control)")
    g.add_argument("--status-topic", default=STATUS_TOPIC,
                   help=f"status topic (default: {STATUS_TOPIC}; '' disables)")
    g.add_argument("--output-channel", help="PVA channel serving processed frames; '*' is "
                   "replaced by the consumer id")
    g.add_argument("--status-channel", help="PVA status channel ('*' = consumer id)")
    g.add_argument("--control-channel", help="PVA control channel ('*' = consumer id)")
    add_kafka_args(p)
    add_run_args(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse(build_parser(), argv)
    release_large_frees()
    try:
        config = json.loads(args.processor_args)
    except ValueError as exc:
        print(f"pvaflow-consumer: error: --processor-args is not JSON: {exc}", file=sys.stderr)
        return 2
    if not isinstance(config, dict):
        print("pvaflow-consumer: error: --processor-args must be a JSON object", file=sys.stderr)
        return 2
    if args.n_consumers > 1:
        from .spawn import spawn

        return spawn(argv, args.n_consumers, args.consumer_id, args.metrics_port)
    _pvapy_log_level(args.log_level)
    try:
        plugin = load_processor(args.processor, file=args.processor_file,
                                class_name=args.processor_class, config=config)
    except PluginError as exc:
        print(f"pvaflow-consumer: error: {exc}", file=sys.stderr)
        return 2
    return run(args, plugin)


def run(args: argparse.Namespace, plugin: Processor) -> int:
    topic = f"{args.input_topic}.{args.distributor_set}" if args.distributor_set \
        else args.input_topic
    group = args.group or f"pvaflow.{topic}"
    dlq = f"{topic}.dlq" if args.dlq_topic is None else (args.dlq_topic or None)
    cid = args.consumer_id
    out_channel = channel_name(args.output_channel, cid)
    if isinstance(plugin, PvaPyAdapter):
        plugin.inner.processorId = cid
        plugin.inner.outputChannel = out_channel or args.output_topic or "pvaflow:output"
    cfg = RunnerConfig(
        input_topics=[topic], group=group, consumer_id=cid, output_topic=args.output_topic,
        dlq_topic=dlq, bootstrap=args.bootstrap_servers, overrides=list(args.kafka_overrides),
        exactly_once=args.exactly_once, max_queue_size=max(1, args.max_queue_size),
        batch_size=args.batch_size, commit_interval=args.commit_interval,
        runtime=args.runtime, report_period=args.report_period,
    )
    for t in (args.output_topic, dlq):
        if t:
            ensure_topic(t, args.output_partitions if t == args.output_topic else 1,
                         bootstrap=args.bootstrap_servers, overrides=args.kafka_overrides,
                         strict=False)
    if not _wait_for_topic(topic, args):
        return 1
    bus = CommandBus()
    stats = Stats(plugin.get_stats)
    channels = None
    if args.output_channel or args.status_channel or args.control_channel:
        declared = plugin.inner.getStatsPvaTypes() if isinstance(plugin, PvaPyAdapter) \
            and hasattr(plugin.inner, "getStatsPvaTypes") else None
        channels = PvaChannels(
            cid, bus, output=out_channel, status=channel_name(args.status_channel, cid),
            control=channel_name(args.control_channel, cid),
            user_stats_types=PvaChannels.user_types_from(_safe_stats(plugin), declared))
    runner = Runner(plugin, cfg, bus=bus, channels=channels, stats=stats)
    labels = {"component": "consumer", "group": group, "consumer_id": str(cid), "topic": topic}
    REGISTRY.register(StatsCollector(stats, labels))
    serve(args.metrics_port)
    agent = None
    if args.control_topic and args.status_topic:
        agent = ControlAgent(
            ComponentId("consumer", group, str(cid)), handler=lambda c, a: bus.call(c, a),
            stats=runner.snapshot, bootstrap=args.bootstrap_servers,
            overrides=args.kafka_overrides, control_topic=args.control_topic,
            status_topic=args.status_topic, report_period=args.report_period or 10.0)
        runner.extra_stop = agent.stop_requested.is_set
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: runner.request_stop())
    try:
        code = runner.run()
    finally:
        if agent is not None:
            agent.close()
        if channels is not None:
            channels.stop()
    log.info("consumer %s/%d exiting with code %d", group, cid, code)
    return code


def _pvapy_log_level(level: str) -> None:
    """PvaPy plugins log through pvapy's LoggingManager (default ERROR): give it our level so
    ``--log-level debug`` shows their processing log, as ``pvapy-hpc-consumer`` does."""
    try:
        from pvapy.utility.loggingManager import LoggingManager
    except ImportError:
        return
    LoggingManager.setLogLevel(level.upper())


def _safe_stats(plugin: Processor) -> dict[str, Any]:
    try:
        return dict(plugin.get_stats())
    except Exception:
        return {}


def _wait_for_topic(topic: str, args: argparse.Namespace) -> bool:
    """The bridge creates the frames topic (it owns the partition count): wait for it."""
    admin = AdminClient(admin_config(args.bootstrap_servers, args.kafka_overrides))
    deadline = time.monotonic() + (args.runtime if args.runtime > 0 else float("inf"))
    warned = False
    while time.monotonic() < deadline:
        meta = admin.list_topics(timeout=10)  # all topics: never auto-creates this one
        t = meta.topics.get(topic)
        if t is not None and t.error is None and t.partitions:
            return True
        if not warned:
            log.info("waiting for topic %s to be created by the bridge", topic)
            warned = True
        time.sleep(0.5)
    log.error("topic %s did not appear within the runtime", topic)
    return False


if __name__ == "__main__":
    sys.exit(main())
