"""``pvaflow-mirror`` / ``pvaflow mirror``: serve a Kafka topic as a PVA NTNDArray channel."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from pvaflow.component import run_component
from pvaflow.errors import ConfigError
from pvaflow.kafka.client import Kafka
from pvaflow.kafka.positions import ReplaySpec
from pvaflow.options import (
    Parser,
    add_control_args,
    add_kafka_args,
    add_replay_args,
    add_run_args,
    flags,
    parse,
)

from .cli import run_options
from .mirror import OFFSETS, Mirror

PROG = "pvaflow-mirror"


def build_parser() -> Parser:
    p = Parser(prog=PROG, description=(
        "Serve frames from a Kafka topic (a whole topic, one partition, or one consumer set) "
        "as an EPICS PVA NTNDArray channel, so pvget and image viewers can watch any stage."))
    p.add_argument(*flags("--topic"), required=True, metavar="TOPIC", help="topic to serve")
    p.add_argument("--set", dest="set_name", default=None, metavar="NAME",
                   help="serve consumer set NAME of a bridge plan (topic TOPIC.NAME)")
    p.add_argument("--partition", type=int, default=None, metavar="N",
                   help="serve only this partition (default: all)")
    p.add_argument(*flags("--output-channel"), required=True, metavar="PV",
                   help="PVA channel name to serve")
    p.add_argument("--offset", choices=tuple(OFFSETS), default="latest",
                   help="start from the newest frames or replay the topic (default: latest)")
    add_replay_args(p)
    add_control_args(p, control=None, status=None)
    p.add_argument(*flags("--mirror-id"), default=None, metavar="ID",
                   help="this mirror's id in status messages (default: the --output-channel)")
    add_kafka_args(p)
    add_run_args(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parse(parser, argv)
    topic = f"{args.topic}.{args.set_name}" if args.set_name else args.topic
    try:
        mirror = Mirror(topic, args.output_channel, partition=args.partition,
                        offset=args.offset, mirror_id=args.mirror_id,
                        replay=ReplaySpec.from_args(args))
    except ConfigError as exc:
        parser.error(exc.line())
    return run_component(mirror, run_options(PROG, args), Kafka.from_args(args))


if __name__ == "__main__":
    sys.exit(main())
