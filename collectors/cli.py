"""``pvaflow-collector`` / ``pvaflow collect``: option names follow ``pvapy-hpc-collector``."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from pvaflow.codecs import SAME, installed_codecs, output_codec
from pvaflow.component import RunOptions, run_component
from pvaflow.control import CONTROL_TOPIC, STATUS_TOPIC
from pvaflow.errors import PvaflowError, UsageError
from pvaflow.hdf5 import COMPRESSIONS
from pvaflow.kafka.client import Kafka
from pvaflow.kafka.positions import ReplaySpec, replay_group
from pvaflow.kafka.topics import Replication
from pvaflow.memory import reuse_frame_memory
from pvaflow.options import (
    Parser,
    add_commit_interval,
    add_control_args,
    add_kafka_args,
    add_plugin_args,
    add_replay_args,
    add_run_args,
    commit_interval,
    flags,
    id_list,
    non_negative,
    parse,
    positive_int,
)
from pvaflow.pva_channels import channel_name

from .outputs import FORMATS, Output, PvaOutput, file_output
from .state import STATE_TOPIC

log = logging.getLogger("pvaflow.collector")

PROG = "pvaflow-collector"


def build_parser() -> Parser:
    p = Parser(prog=PROG, description=(
        "Gather processed frames from one or more topics, merge their partitions in uniqueId "
        "order (an id is given up only when no partition can still deliver it), drop "
        "duplicates, count gaps and late frames, run an optional collector plugin, and write "
        "an ordered topic, a PVA channel and/or files."))
    g = p.add_argument_group("input")
    g.add_argument(*flags("--input-topic"), action="append", required=True, metavar="TOPIC",
                   help="processor output topic to gather; repeatable; with "
                        "--producer-id-list a '*' in it stands for each producer id")
    g.add_argument(*flags("--producer-id-list"), type=id_list, metavar="IDS",
                   help="as PvaPy: one input per producer id, e.g. 1,2 or range(1,5): "
                        "--input-topic 'proc-*' reads proc-1, proc-2, ...")
    g.add_argument(*flags("--group"), default="pvaflow-collector", metavar="GROUP",
                   help="consumer group, also the key of the saved state (default: %(default)s)")
    g.add_argument(*flags("--collector-id"), default="1", metavar="ID",
                   help="collector id in status and control (default: %(default)s)")
    r = p.add_argument_group("reorder")
    r.add_argument(*flags("--collector-cache-size"), type=positive_int, default=1000,
                   metavar="N", help="frames held while waiting for a gap; a partition that "
                   "runs ahead is paused before it fills (default: %(default)s)")
    r.add_argument(*flags("--oid-field"), default="uniqueId", metavar="NAME",
                   help="reorder by this id: uniqueId (the record key, fastest), or the name "
                        "of an NTNDArray attribute holding an integer (each frame is "
                        "decoded; frames without it go to the DLQ) (default: uniqueId)")
    r.add_argument(*flags("--oid-offset"), type=positive_int, default=1, metavar="N",
                   help="ids step by N (they must all leave the same remainder mod N): the "
                        "id after 7 is 7+N, so no gap is waited for in between (default: 1)")
    r.add_argument(*flags("--skip-initial-updates"), type=int, default=0, metavar="N",
                   help="drop the first N records received (counted as skipped, committed); "
                        "PvaPy's default of 1 drops a PVA monitor's stale first update, "
                        "which a topic does not have (default: 0)")
    r.add_argument("--max-delay", type=non_negative, default=5.0, metavar="SECONDS",
                   help="a partition that holds the next ids back must have been silent this "
                        "long before it may stop holding the others back: then its ids are "
                        "given up if the processors' group has processed its input partition "
                        "to the end, or, for records not written by a pvaflow processor, at "
                        "once; an id any partition may still deliver is never given up "
                        "(default: %(default)s)")
    add_commit_interval(r, "transactions of output + state + offsets")
    r.add_argument("--state-topic", default=STATE_TOPIC, metavar="TOPIC",
                   help="compacted topic holding the last emitted uniqueId (default: %(default)s)")
    r.add_argument("--late-topic", metavar="TOPIC", help="send late frames here (not emitted)")
    r.add_argument("--dlq-topic", metavar="TOPIC",
                   help="dead-letter topic for records without a uniqueId, undecodable frames "
                        "and collector plugin failures, written in the same transactions as "
                        "the output (default: <first input topic>.collector.dlq; '' disables: "
                        "such frames are dropped and counted as errors)")
    add_plugin_args(p, "collector plugin (same API and loading as processors)")
    add_replay_args(p)
    o = p.add_argument_group("output")
    o.add_argument(*flags("--output-topic"), metavar="TOPIC",
                   help="ordered output topic (one partition, written transactionally)")
    o.add_argument(*flags("--output-channel"), metavar="PV", help="serve ordered frames over PVA")
    o.add_argument("--output-codec", type=_output_codec, default=SAME, metavar="CODEC",
                   help="codec of every output (topic, channel, files): same (as received), "
                   "none (uncompressed) or a codec name "
                   f"({', '.join(installed_codecs())}) (default: same)")
    o.add_argument("--output-dir", metavar="DIR",
                   help="write files here: one per frame (npy, tiff) or one per collector, "
                   "<group>.<collector-id>.h5 (h5)")
    o.add_argument("--output-format", choices=FORMATS, default="npy",
                   help="file format for --output-dir (default: %(default)s)")
    o.add_argument("--h5-compression", choices=COMPRESSIONS, default="bslz4",
                   help="h5 chunks: bslz4 (bslz4 frames are written as they came, others "
                   "compressed once) or none (plain pixels) (default: %(default)s)")
    add_control_args(p, control=CONTROL_TOPIC, status=STATUS_TOPIC, pva=True)
    add_kafka_args(p)
    add_run_args(p)
    return p


def _output_codec(value: str) -> str:
    """``output_codec`` as argparse wants a type to fail: one usage line, exit 2."""
    try:
        return output_codec(value)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(exc.line().removeprefix("--output-codec ")) from None


def dlq_topic(args_dlq: str | None, input_topics: Sequence[str]) -> str | None:
    """``None`` (not given) is the default name; ``''`` disables the DLQ."""
    if args_dlq is None:
        return f"{input_topics[0]}.collector.dlq"
    return args_dlq or None


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parse(parser, argv)
    from pvaflow.plugin import PluginError, Processor, load_processor

    from .runner import Collector, CollectorConfig

    plugin: Processor | None = None
    if args.processor or args.processor_file or args.processor_class:
        try:
            plugin = load_processor(args.processor, file=args.processor_file,
                                    class_name=args.processor_class, config=args.processor_args)
        except PluginError as exc:
            parser.error(str(exc))
    reuse_frame_memory()
    if not (args.output_topic or args.output_channel or args.output_dir):
        log.warning("no output given (--output-topic/--output-channel/--output-dir): "
                    "frames are reordered and counted only")
    sinks: list[Output] = []
    try:
        if args.output_dir:
            sinks.append(file_output(args.output_dir, args.output_format,
                                     name=f"{args.group}.{args.collector_id}",
                                     h5_compression=args.h5_compression))
    except OSError as exc:
        parser.error(f"--output-dir {args.output_dir}: {exc.strerror or exc}")
    try:
        replay = ReplaySpec.from_args(args)
    except PvaflowError as exc:
        parser.error(exc.line())
    topics: list[str] = []
    for t in args.input_topic:  # 'proc-*' with -pid 1,2: proc-1, proc-2
        ids = args.producer_id_list if args.producer_id_list and "*" in t else None
        topics += [t.replace("*", str(pid)) for pid in ids] if ids else [t]
    cfg = CollectorConfig(
        input_topics=topics, oid_field=args.oid_field, oid_offset=args.oid_offset,
        skip_initial_updates=args.skip_initial_updates, collector_id=args.collector_id,
        replay=replay,
        group=replay_group(args.group, replay) if replay else args.group,
        output_topic=args.output_topic, late_topic=args.late_topic,
        dlq_topic=dlq_topic(args.dlq_topic, topics), state_topic=args.state_topic,
        cache_size=args.collector_cache_size, max_delay=args.max_delay,
        commit_interval=commit_interval(args), replication=Replication.from_args(args),
        output_codec=args.output_codec,
        status_channel=channel_name(args.status_channel, args.collector_id),
        control_channel=channel_name(args.control_channel, args.collector_id),
    )
    if args.output_channel:
        sinks.append(PvaOutput(args.output_channel))
    collector = Collector(cfg, plugin=plugin, sinks=sinks)
    return run_component(collector, RunOptions.from_args(PROG, args), Kafka.from_args(args))


if __name__ == "__main__":
    sys.exit(main())
