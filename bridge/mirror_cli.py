"""``pvaflow-mirror`` / ``pvaflow mirror``: serve a Kafka topic as a PVA NTNDArray channel."""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Sequence
from types import FrameType

from prometheus_client import REGISTRY

from pvaflow import metrics
from pvaflow.options import Parser, add_kafka_args, add_run_args, parse

from .mirror import OFFSETS, Mirror, MirrorCollector

log = logging.getLogger("pvaflow.mirror")


def build_parser() -> Parser:
    p = Parser(prog="pvaflow-mirror", description=(
        "Serve frames from a Kafka topic (a whole topic, one partition, or one consumer set) "
        "as an EPICS PVA NTNDArray channel, so pvget and image viewers can watch any stage."))
    p.add_argument("--topic", "-t", required=True, help="topic to serve")
    p.add_argument("--set", dest="set_name", default=None, metavar="NAME",
                   help="serve consumer set NAME of a bridge plan (topic TOPIC.NAME)")
    p.add_argument("--partition", type=int, default=None,
                   help="serve only this partition (default: all)")
    p.add_argument("--output-channel", "-oc", required=True, metavar="CHANNEL",
                   help="PVA channel name to serve")
    p.add_argument("--offset", choices=tuple(OFFSETS), default="latest",
                   help="start from the newest frames or replay the topic (default: latest)")
    add_kafka_args(p)
    add_run_args(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parse(parser, argv)
    topic = f"{args.topic}.{args.set_name}" if args.set_name else args.topic
    try:
        mirror = Mirror(topic, args.output_channel, bootstrap=args.bootstrap_servers,
                        overrides=args.kafka_overrides, partition=args.partition,
                        offset=args.offset)
    except ValueError as exc:
        print(f"pvaflow-mirror: error: {exc}", file=sys.stderr)
        return 2
    REGISTRY.register(MirrorCollector(mirror.stats, topic, args.output_channel))
    metrics.serve(args.metrics_port)
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    worker = threading.Thread(target=mirror.run, args=(stop,), name="mirror", daemon=True)
    worker.start()
    started = time.monotonic()
    period = args.report_period if args.report_period > 0 else 1.0
    while not stop.wait(min(period, max(started + args.runtime - time.monotonic(), 0.01))
                        if args.runtime > 0 else period):
        if args.runtime > 0 and time.monotonic() >= started + args.runtime:
            stop.set()
            break
        if args.report_period > 0:
            s = mirror.stats
            print(f"mirror statistics {topic} -> {args.output_channel}: received {s.received}"
                  f"  served {s.served}  invalid {s.invalid}  last uniqueId {s.last_id}",
                  flush=True)
    worker.join(timeout=10)
    mirror.close()
    print("pvaflow-mirror final " + json.dumps(mirror.stats.snapshot()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
