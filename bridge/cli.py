"""``pvaflow-bridge`` / ``pvaflow bridge``: PVA NTNDArray channels -> Kafka topics."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from collections.abc import Sequence
from types import FrameType
from typing import Any

from prometheus_client import REGISTRY

from pvaflow import metrics
from pvaflow.kafka.settings import parse_override
from pvaflow.kafka.topics import TopicError
from pvaflow.memory import release_large_frees
from pvaflow.options import Parser, add_kafka_args, add_run_args, parse

from .bridge import Bridge, BridgeConfig, ConfigError
from .intake import FORMATS
from .plan import PlanError, parse_sets
from .stats import BridgeCollector, Reporter, final_json

log = logging.getLogger("pvaflow.bridge")
TICK = 0.2  # seconds between connection checks


def build_parser() -> Parser:
    p = Parser(prog="pvaflow-bridge", description=(
        "Monitor EPICS PVA NTNDArray channels and produce every frame to Kafka, routed by "
        "the distributor plan (uniqueId blocks -> partitions / consumer-set topics)."))
    g = p.add_argument_group("input (PVA)")
    g.add_argument("--input-channel", "-ic", dest="input_channels", action="append",
                   required=True, metavar="CHANNEL",
                   help="PVA channel to monitor, repeatable (one topic per channel)")
    g.add_argument("--server-queue-size", "-sqs", type=int, default=100, metavar="N",
                   help="server-side monitor queue, record[queueSize=N]; 0 disables "
                        "(default: 100)")
    g.add_argument("--receiver-queue-size", "-rqs", type=int, default=100, metavar="N",
                   help="client-side PvObjectQueue length; -1 disables it and produces "
                        "straight from the monitor callback (default: 100)")
    o = p.add_argument_group("output (Kafka)")
    o.add_argument("--topic", "-t", dest="topics", action="append", default=[],
                   metavar="TOPIC",
                   help="topic per --input-channel, in order (default: the channel name with "
                        "':' -> '.'); with sets the topics are TOPIC.<set>")
    o.add_argument("--shared-topic", action="store_true",
                   help="send every channel to the one --topic (records carry pf.src)")
    o.add_argument("--partitions", "-p", type=int, default=1, metavar="P",
                   help="partitions per topic; missing topics are created, an existing topic "
                        "with another count is refused (default: 1)")
    o.add_argument("--topic-config", action="append", type=parse_override, default=[],
                   metavar="KEY=VALUE",
                   help="config for topics the bridge creates, e.g. retention.ms=3600000")
    o.add_argument("--format", dest="fmt", choices=FORMATS, default="native",
                   help="record format: native (pvaflow headers, zero-copy) or ad00 (ESS "
                        "FlatBuffers, no codec field; see docs/bridge.md) (default: native)")
    o.add_argument("--max-buffer-wait", type=float, default=2.0, metavar="SECONDS",
                   help="how long a frame waits for room when the producer buffer "
                        "(-X queue.buffering.max.kbytes) is full before it is dropped and "
                        "counted (default: 2)")
    o.add_argument("--flush-timeout", type=float, default=30.0, metavar="SECONDS",
                   help="at exit, how long to wait for outstanding deliveries (default: 30)")
    d = p.add_argument_group("distribution (PvaPy distributor semantics)")
    d.add_argument("--distributor-updates", "-du", type=int, default=1, metavar="N",
                   help="sequential updates per block: block b = (uniqueId - first) // N "
                        "(default: 1)")
    d.add_argument("--distributor-sets", "-ds", default="", metavar="A,B,...",
                   help="consumer sets: block b goes to topic TOPIC.<set b %% S>, partition "
                        "(b // S) %% P")
    d.add_argument("--distributor-first", default="1", metavar="ID|auto",
                   help="uniqueId of block 0; 'auto' = the first uniqueId received "
                        "(default: 1)")
    c = p.add_argument_group("control (optional)")
    c.add_argument("--control-topic", default=None,
                   help="listen for commands (get_stats, reset_stats, stop) on this topic")
    c.add_argument("--status-topic", default=None,
                   help="publish stats to this topic each report period")
    c.add_argument("--bridge-id", default="1", help="this bridge's id in status (default: 1)")
    add_kafka_args(p)
    add_run_args(p)
    return p


def config_from_args(args: argparse.Namespace) -> BridgeConfig:
    first: int | None
    if args.distributor_first == "auto":
        first = None
    else:
        try:
            first = int(args.distributor_first)
        except ValueError:
            raise ConfigError(f"--distributor-first takes an integer or 'auto', got "
                              f"{args.distributor_first!r}") from None
    return BridgeConfig(
        channels=list(args.input_channels), topics=list(args.topics),
        shared_topic=args.shared_topic, partitions=args.partitions,
        updates=args.distributor_updates, sets=parse_sets(args.distributor_sets), first=first,
        server_queue_size=args.server_queue_size, receiver_queue_size=args.receiver_queue_size,
        fmt=args.fmt, bootstrap=args.bootstrap_servers, overrides=list(args.kafka_overrides),
        topic_config=dict(args.topic_config), max_wait=args.max_buffer_wait,
        flush_timeout=args.flush_timeout,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parse(parser, argv)
    release_large_frees()
    try:
        bridge = Bridge(config_from_args(args))
    except (ConfigError, PlanError) as exc:
        parser.error(str(exc))
        return 2
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s: stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        bridge.start()
    except TopicError as exc:
        print(f"pvaflow-bridge: error: {exc}", file=sys.stderr)
        bridge.stop()
        return 2
    collector = BridgeCollector(bridge.stats, bridge.queue_depth)
    REGISTRY.register(collector)
    metrics.serve(args.metrics_port)
    agent = _control_agent(args, bridge, stop)
    reporter = Reporter(bridge.stats)
    started = time.monotonic()
    period = args.report_period if args.report_period > 0 else 1.0
    next_report = started + period
    bridge.check_connections()
    while not stop.is_set():
        timeout = min(next_report - time.monotonic(), TICK)
        if args.runtime > 0:
            timeout = min(timeout, started + args.runtime - time.monotonic())
        stop.wait(max(timeout, 0.0))
        bridge.check_connections()
        if args.runtime > 0 and time.monotonic() >= started + args.runtime:
            log.info("runtime of %gs reached: stopping", args.runtime)
            break
        if agent is not None and agent.stop_requested.is_set():
            break
        if time.monotonic() >= next_report:
            next_report += period
            bridge.update_counters()
            if args.report_period > 0:
                print(reporter.report(), flush=True)
    bridge.stop()
    if agent is not None:
        agent.close()
    print(reporter.report(final=True), flush=True)
    print(final_json(bridge.stats), flush=True)
    REGISTRY.unregister(collector)
    return 0


def _control_agent(args: argparse.Namespace, bridge: Bridge, stop: threading.Event) -> Any:
    if not (args.control_topic or args.status_topic):
        return None
    from pvaflow.control import CONTROL_TOPIC, STATUS_TOPIC, ComponentId, ControlAgent

    def stats() -> dict[str, Any]:
        bridge.update_counters()
        total: dict[str, Any] = {}
        for s in bridge.stats:
            for k, v in s.snapshot().items():
                if isinstance(v, int) and not isinstance(v, bool):
                    total[k] = total.get(k, 0) + v
        return total

    def handler(command: str, _args: dict[str, Any]) -> dict[str, Any] | None:
        if command == "get_stats":
            return stats()
        if command == "reset_stats":
            for s in bridge.stats:
                s.reset()
            return None
        if command == "stop":
            stop.set()
            return None
        raise ValueError(f"the bridge does not support {command!r}")

    return ControlAgent(
        ComponentId("bridge", "bridge", args.bridge_id), handler=handler, stats=stats,
        bootstrap=args.bootstrap_servers, overrides=args.kafka_overrides,
        control_topic=args.control_topic or CONTROL_TOPIC,
        status_topic=args.status_topic or STATUS_TOPIC, report_period=args.report_period)


if __name__ == "__main__":
    sys.exit(main())
