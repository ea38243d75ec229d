"""``pvaflow-bridge`` / ``pvaflow bridge``: PVA NTNDArray channels -> Kafka topics."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pvaflow.codecs import NONE, installed_codecs
from pvaflow.component import RunOptions, run_component
from pvaflow.control import CONTROL_TOPIC, STATUS_TOPIC
from pvaflow.errors import ConfigError
from pvaflow.kafka.client import Kafka
from pvaflow.kafka.settings import parse_override
from pvaflow.kafka.topics import Replication
from pvaflow.memory import reuse_frame_memory
from pvaflow.options import (
    Parser,
    add_control_args,
    add_kafka_args,
    add_run_args,
    flags,
    non_negative,
    parse,
    positive_int,
)

from .bridge import Bridge, BridgeConfig
from .compress import DEFAULT_BACKLOG_MB, DEFAULT_THREADS
from .intake import FORMATS
from .metadata import DEFAULT_QUEUE_SIZE, DEFAULT_TOLERANCE
from .plan import parse_sets

PROG = "pvaflow-bridge"


def build_parser() -> Parser:
    p = Parser(prog=PROG, description=(
        "Monitor EPICS PVA NTNDArray channels and produce every frame to Kafka, routed by "
        "the distributor plan (uniqueId blocks -> partitions / consumer-set topics)."))
    g = p.add_argument_group("input (PVA)")
    g.add_argument(*flags("--input-channel"), dest="input_channels", action="append",
                   required=True, metavar="PV",
                   help="PVA channel to monitor, repeatable (one topic per channel)")
    g.add_argument(*flags("--server-queue-size"), type=int, default=100, metavar="N",
                   help="server-side monitor queue, record[queueSize=N]; 0 disables "
                        "(default: 100)")
    g.add_argument(*flags("--receiver-queue-size"), type=int, default=-1, metavar="N",
                   help="client-side PvObjectQueue of N frames (N x the frame size in "
                        "memory; 0, pvapy's unbounded queue, is refused); -1: none, frames "
                        "are produced from the monitor callback and a stall backs up into "
                        "the server queue, as PvaPy's default does. A client queue copies "
                        "every frame once more and, on a busy machine, lost frames where "
                        "-1 lost none: see docs/bridge.md (default: -1)")
    m = p.add_argument_group("metadata channels (joined to frames by timestamp)")
    m.add_argument(*flags("--metadata-channels"), dest="metadata_channels", action="append",
                   default=[], metavar="URL,...",
                   help="PVA/CA channels whose values are attached to the frames as "
                        "attributes named after the channel: pva://NAME,ca://NAME (no "
                        "protocol: CA, as PvaPy); see docs/bridge.md")
    m.add_argument("--metadata-tolerance", type=non_negative, default=DEFAULT_TOLERANCE,
                   metavar="SECONDS",
                   help="a value goes to the frame nearest to its timestamp within this; "
                        "values with no frame that near are counted as metadata_unmatched "
                        f"(default: {DEFAULT_TOLERANCE})")
    m.add_argument("--metadata-queue-size", type=positive_int, default=DEFAULT_QUEUE_SIZE,
                   metavar="N",
                   help="values held per metadata channel waiting for a frame; the oldest "
                        f"leaves (unmatched) when full (default: {DEFAULT_QUEUE_SIZE})")
    o = p.add_argument_group("output (Kafka)")
    o.add_argument(*flags("--topic"), dest="topics", action="append", default=[],
                   metavar="TOPIC",
                   help="topic per --input-channel, in order (default: the channel name with "
                        "':' -> '.'); with sets the topics are TOPIC.<set>")
    o.add_argument("--shared-topic", action="store_true",
                   help="send every channel to the one --topic (records carry pf.src)")
    o.add_argument("--partitions", type=positive_int, default=1, metavar="N",
                   help="partitions per topic; missing topics are created, an existing topic "
                        "with another count is refused (default: 1)")
    o.add_argument("--topic-config", action="append", type=parse_override, default=[],
                   metavar="KEY=VALUE",
                   help="config for topics the bridge creates, e.g. retention.ms=3600000")
    o.add_argument("--format", dest="fmt", choices=FORMATS, default="native",
                   help="record format: native (pvaflow headers, zero-copy) or ad00 (ESS "
                        "FlatBuffers, no codec field; see docs/bridge.md) (default: native)")
    o.add_argument("--max-buffer-wait", type=non_negative, default=2.0, metavar="SECONDS",
                   help="how long a frame waits for room when the producer buffer "
                        "(-X queue.buffering.max.kbytes) is full before it is dropped and "
                        "counted (default: 2)")
    o.add_argument("--flush-timeout", type=non_negative, default=30.0, metavar="SECONDS",
                   help="at exit, how long to wait for outstanding deliveries (default: 30)")
    c = p.add_argument_group("compression (areaDetector codecs)")
    c.add_argument("--codec", type=bridge_codec, default=None, metavar="NAME",
                   help="compress uncompressed frames with this codec before producing "
                        f"({', '.join(installed_codecs())}); frames that arrive compressed "
                        "are forwarded as they are (default: none)")
    c.add_argument("--codec-threads", type=positive_int, default=DEFAULT_THREADS, metavar="N",
                   help=f"threads compressing (default: {DEFAULT_THREADS})")
    c.add_argument("--codec-backlog", type=positive_int, default=None, metavar="N",
                   help="frames waiting for or in compression before intake waits "
                        "(default: 4 x --codec-threads)")
    c.add_argument("--codec-backlog-mb", type=positive_int, default=DEFAULT_BACKLOG_MB,
                   metavar="MB",
                   help="source megabytes waiting for or in compression before intake waits "
                        f"(default: {DEFAULT_BACKLOG_MB})")
    d = p.add_argument_group("distribution (PvaPy distributor semantics)")
    d.add_argument(*flags("--distributor-updates"), type=positive_int, default=1, metavar="N",
                   help="sequential updates per block: block b = (uniqueId - first) // N "
                        "(default: 1)")
    # no short form: PvaPy's -ds is the consumer's --distributor-set
    d.add_argument("--distributor-sets", default="", metavar="A,B,...",
                   help="consumer sets: block b goes to topic TOPIC.<set b %% S>, partition "
                        "(b // S) %% P")
    d.add_argument("--distributor-first", default="1", metavar="ID|auto",
                   help="uniqueId of block 0; 'auto' = the first uniqueId received "
                        "(default: 1)")
    add_control_args(p, control=None, status=None)
    p.add_argument(*flags("--bridge-id"), default="1", metavar="ID",
                   help="this bridge's id in status messages (default: 1)")
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
        fmt=args.fmt, topic_config=dict(args.topic_config), max_wait=args.max_buffer_wait,
        flush_timeout=args.flush_timeout, bridge_id=args.bridge_id,
        codec=args.codec, codec_threads=args.codec_threads, codec_backlog=args.codec_backlog,
        codec_backlog_mb=args.codec_backlog_mb, metadata_channels=args.metadata_channels,
        metadata_tolerance=args.metadata_tolerance,
        metadata_queue_size=args.metadata_queue_size,
        replication=Replication.from_args(args),
    )


def bridge_codec(value: str) -> str | None:
    """argparse ``type=`` for ``--codec``: an installed codec name, or ``none``."""
    if value == NONE:
        return None
    names = installed_codecs()
    if value not in names:
        raise argparse.ArgumentTypeError(f"choose none or one of {', '.join(names)}")
    return value


def run_options(prog: str, args: argparse.Namespace) -> RunOptions:
    """Control and status are off unless asked for; asking for one brings the other along
    at its usual name, as a monitor expects both."""
    options = RunOptions.from_args(prog, args)
    if options.control_topic or options.status_topic:
        options.control_topic = options.control_topic or CONTROL_TOPIC
        options.status_topic = options.status_topic or STATUS_TOPIC
    return options


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parse(parser, argv)
    reuse_frame_memory()
    try:
        bridge = Bridge(config_from_args(args))
    except ConfigError as exc:
        parser.error(exc.line())
    return run_component(bridge, run_options(PROG, args), Kafka.from_args(args))


if __name__ == "__main__":
    sys.exit(main())
