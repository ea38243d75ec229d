"""``pvaflow-consumer`` / ``pvaflow consumer``: run a plugin in a Kafka consumer group.

Option names and short forms follow PvaPy's ``pvapy-hpc-consumer`` wherever the meaning is the
same, so a seed command line needs only ``--input-channel`` swapped for ``--input-topic``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pvaflow.codecs import SAME, installed_codecs, output_codec
from pvaflow.component import RunOptions, run_command, run_component
from pvaflow.control import CONTROL_TOPIC, STATUS_TOPIC
from pvaflow.errors import UsageError
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
from pvaflow.plugin import Processor, PvaPyAdapter, load_processor
from pvaflow.pva_channels import channel_name

from .runner import Runner, RunnerConfig

PROG = "pvaflow-consumer"


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog=PROG, description=__doc__.splitlines()[0])
    g = p.add_argument_group("input and output")
    g.add_argument(*flags("--input-topic"), required=True, metavar="TOPIC",
                   help="frames topic the bridge writes")
    g.add_argument(*flags("--distributor-set"), metavar="SET",
                   help="consume the bridge's set SET (topic <input-topic>.SET)")
    g.add_argument(*flags("--group"), metavar="GROUP",
                   help="consumer group (default: pvaflow.<input topic>); members of a group "
                   "share frames, distinct groups each see all of them")
    g.add_argument(*flags("--output-topic"), metavar="TOPIC",
                   help="topic for processed frames (key = uniqueId)")
    g.add_argument("--output-partitions", type=positive_int, metavar="N",
                   help="partitions when creating the output topic (default: as many as the "
                   "input topic). With at least as many as the input, each output goes to "
                   "the partition number of its input, so every output partition holds one "
                   "input partition's frames in uniqueId order and a collector can merge "
                   "them without giving ids up; with fewer, outputs are spread by key hash")
    g.add_argument(*flags("--output-channel"), metavar="PV",
                   help="PVA channel serving processed frames ('*' = consumer id)")
    g.add_argument("--output-codec", type=_output_codec, default=SAME, metavar="CODEC",
                   help="codec of the outputs: same (as received; new pixels are compressed "
                   "again with the input's codec), none (uncompressed) or a codec name "
                   f"({', '.join(installed_codecs())}) (default: same)")
    g.add_argument("--dlq-topic", metavar="TOPIC",
                   help="dead-letter topic for undecodable records and plugin failures "
                   "(default: <input topic>.dlq; '' disables)")
    g.add_argument("--exactly-once", action="store_true",
                   help="Kafka transactions: each output is visible to read_committed readers "
                   "exactly once")
    g.add_argument("--max-queue-size", type=positive_int, default=1000, metavar="N",
                   help="frames produced but not yet delivered before consuming pauses; with "
                   "the producer's queue.buffering.max.kbytes it bounds memory (default: 1000)")
    g.add_argument("--batch-size", type=positive_int, default=32, metavar="N",
                   help="records per consume() call (default: 32, at most --max-queue-size)")
    add_commit_interval(g, "offset commits / transactions")
    # PvaPy compatibility: the bridge owns the distributor plan, these are accepted and unused.
    g.add_argument(*flags("--distributor-updates"), type=int, metavar="N",
                   help=argparse.SUPPRESS)
    g.add_argument(*flags("--n-distributor-sets"), type=int, metavar="N",
                   help=argparse.SUPPRESS)

    add_plugin_args(p)
    g = p.add_argument_group("frames to the plugin (PvaPy's options, same meaning)")
    g.add_argument(*flags("--accumulate-objects"), type=int, default=-1, metavar="N",
                   help="hold frames until N have arrived, then hand them to the plugin: "
                        "process_batch() gets N at a time, a plugin without one (PvaPy's) "
                        "gets them one by one as PvaPy's receiver queue releases them; "
                        "<= 0: no accumulation (default: -1)")
    g.add_argument(*flags("--accumulation-timeout"), type=non_negative, default=1.0,
                   metavar="SECONDS",
                   help="with --accumulate-objects: when no frame arrived for this long, the "
                        "frames held so far go to the plugin anyway (default: 1)")
    g.add_argument(*flags("--skip-initial-updates"), type=int, default=0, metavar="N",
                   help="do not process the first N frames this consumer receives (they are "
                        "counted as skipped and committed); PvaPy's default of 1 drops a PVA "
                        "monitor's stale first update, which a topic does not have "
                        "(default: 0)")
    g.add_argument(*flags("--oid-field"), default="uniqueId", metavar="NAME",
                   help="frame id for the first/last id statistics: uniqueId, or the name of "
                        "an NTNDArray attribute holding an integer (default: uniqueId)")
    g.add_argument(*flags("--oid-offset"), type=int, default=0, metavar="N",
                   help="accepted for PvaPy command lines: missed frames are counted from the "
                        "bridge's per-partition sequence numbers, which need no id step")
    add_replay_args(p)

    g = p.add_argument_group("consumers")
    g.add_argument(*flags("--n-consumers"), type=positive_int, default=1, metavar="N",
                   help="run N processes with ids consumer-id..consumer-id+N-1 in one group "
                   "(default: 1, in this process)")
    g.add_argument(*flags("--consumer-id"), type=int, default=1, metavar="ID",
                   help="this consumer's id (default: 1)")
    g.add_argument(*flags("--consumer-id-list"), type=id_list, metavar="IDS",
                   help="run one consumer per id, e.g. 1,3,5 or range(1,9,2) (overrides "
                        "--consumer-id and --n-consumers, as in PvaPy)")

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


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse(build_parser(), argv)
    ids = args.consumer_id_list or list(range(args.consumer_id,
                                              args.consumer_id + args.n_consumers))
    if len(ids) > 1:
        from .spawn import spawn

        return spawn(argv, ids, args.metrics_port)
    args.consumer_id = ids[0]
    reuse_frame_memory()
    _pvapy_log_level(args.log_level)
    return run_command(PROG, lambda: run(args))


def run(args: argparse.Namespace) -> int:
    """One consumer in this process. The plugin is loaded before Kafka is asked anything: a
    plugin that cannot load is a usage error whatever the state of the cluster."""
    cfg = config(args)
    plugin = load_processor(args.processor, file=args.processor_file,
                            class_name=args.processor_class, config=args.processor_args)
    _name_pvapy_plugin(plugin, cfg, args.output_topic)
    return run_component(Runner(plugin, cfg), RunOptions.from_args(PROG, args),
                         Kafka.from_args(args))


def config(args: argparse.Namespace) -> RunnerConfig:
    topic = f"{args.input_topic}.{args.distributor_set}" if args.distributor_set \
        else args.input_topic
    cid = args.consumer_id
    group = args.group or f"pvaflow.{topic}"
    replay = ReplaySpec.from_args(args)
    return RunnerConfig(
        input_topic=topic, group=replay_group(group, replay) if replay else group,
        consumer_id=cid, replay=replay,
        output_topic=args.output_topic, output_partitions=args.output_partitions,
        output_codec=args.output_codec,
        dlq_topic=f"{topic}.dlq" if args.dlq_topic is None else (args.dlq_topic or None),
        exactly_once=args.exactly_once, max_queue_size=args.max_queue_size,
        batch_size=args.batch_size, commit_interval=commit_interval(args),
        topic_wait=args.runtime, output_channel=channel_name(args.output_channel, cid),
        status_channel=channel_name(args.status_channel, cid),
        control_channel=channel_name(args.control_channel, cid),
        accumulate_objects=args.accumulate_objects,
        accumulation_timeout=args.accumulation_timeout,
        skip_initial_updates=args.skip_initial_updates, oid_field=args.oid_field,
        replication=Replication.from_args(args))


def _name_pvapy_plugin(plugin: Processor, cfg: RunnerConfig, output_topic: str | None) -> None:
    """PvaPy plugins read their id and output channel from attributes pvapy-hpc-consumer
    sets before start; set them the same way."""
    if isinstance(plugin, PvaPyAdapter):
        plugin.inner.processorId = cfg.consumer_id
        plugin.inner.objectIdField = cfg.oid_field
        plugin.inner.outputChannel = cfg.output_channel or output_topic or "pvaflow:output"


def _pvapy_log_level(level: str) -> None:
    """PvaPy plugins log through pvapy's LoggingManager (default ERROR): give it our level so
    ``--log-level debug`` shows their processing log, as ``pvapy-hpc-consumer`` does."""
    try:
        from pvapy.utility.loggingManager import LoggingManager
    except ImportError:
        return
    LoggingManager.setLogLevel(level.upper())


if __name__ == "__main__":
    sys.exit(main())
