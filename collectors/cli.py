"""``pvaflow-collector`` / ``pvaflow collect``: option names follow ``pvapy-hpc-collector``."""

from __future__ import annotations

import json
import logging
import signal
import sys
from collections.abc import Sequence
from typing import Any

from pvaflow.control import CONTROL_TOPIC, STATUS_TOPIC
from pvaflow.memory import release_large_frees
from pvaflow.metrics import serve
from pvaflow.options import Parser, add_kafka_args, add_run_args, parse

from .outputs import FORMATS, FileWriter, Output, PvaOutput
from .state import STATE_TOPIC

log = logging.getLogger("pvaflow.collector")


def build_parser() -> Parser:
    p = Parser(prog="pvaflow-collector", description=(
        "Gather processed frames from one or more topics, reorder them by uniqueId with a "
        "bounded cache and a time bound, drop duplicates, count gaps and late frames, run an "
        "optional collector plugin, and write an ordered topic, a PVA channel and/or files."))
    g = p.add_argument_group("input")
    g.add_argument("--input-topic", "-it", action="append", required=True, metavar="TOPIC",
                   help="processor output topic to gather; repeatable")
    g.add_argument("--group", "-g", default="pvaflow-collector",
                   help="consumer group, also the key of the saved state (default: %(default)s)")
    g.add_argument("--collector-id", "-id", default="1",
                   help="collector id in status and control (default: %(default)s)")
    r = p.add_argument_group("reorder")
    r.add_argument("--collector-cache-size", "-ccs", type=_positive_int, default=1000,
                   metavar="N", help="frames held while waiting for a gap (default: %(default)s)")
    r.add_argument("--max-delay", type=_non_negative, default=5.0, metavar="SECONDS",
                   help="longest a frame waits for a missing one before the gap is counted as "
                        "missed (default: %(default)s)")
    r.add_argument("--commit-interval", type=_non_negative, default=0.2, metavar="SECONDS",
                   help="seconds between transactions of output + state + offsets "
                        "(default: %(default)s)")
    r.add_argument("--state-topic", default=STATE_TOPIC,
                   help="compacted topic holding the last emitted uniqueId (default: %(default)s)")
    r.add_argument("--late-topic", metavar="TOPIC", help="send late frames here (not emitted)")
    pl = p.add_argument_group("collector plugin (same API and loading as processors)")
    pl.add_argument("--processor", "-p", metavar="NAME|module:Class",
                    help="plugin by entry-point name or module:Class")
    pl.add_argument("--processor-file", "-pf", metavar="FILE", help="plugin source file")
    pl.add_argument("--processor-class", "-pc", metavar="NAME", help="plugin class name")
    pl.add_argument("--processor-args", "-pa", type=_json_object, default={}, metavar="JSON",
                    help="plugin configuration as a JSON object")
    o = p.add_argument_group("output")
    o.add_argument("--output-topic", "-ot", metavar="TOPIC",
                   help="ordered output topic (one partition, written transactionally)")
    o.add_argument("--output-channel", "-oc", metavar="PV", help="serve ordered frames over PVA")
    o.add_argument("--output-dir", metavar="DIR", help="write one file per frame here")
    o.add_argument("--output-format", choices=FORMATS, default="npy",
                   help="file format for --output-dir (default: %(default)s)")
    c = p.add_argument_group("control")
    c.add_argument("--control-topic", default=CONTROL_TOPIC, help="(default: %(default)s)")
    c.add_argument("--status-topic", default=STATUS_TOPIC, help="(default: %(default)s)")
    add_kafka_args(p)
    add_run_args(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parse(parser, argv)
    release_large_frees()
    if not (args.output_topic or args.output_channel or args.output_dir):
        log.warning("no output given (--output-topic/--output-channel/--output-dir): "
                    "frames are reordered and counted only")
    from pvaflow.plugin import PluginError, Processor, load_processor

    from .runner import Collector, CollectorConfig

    plugin: Processor | None = None
    if args.processor or args.processor_file or args.processor_class:
        try:
            plugin = load_processor(args.processor, file=args.processor_file,
                                    class_name=args.processor_class, config=args.processor_args)
        except PluginError as exc:
            parser.error(str(exc))
    sinks: list[Output] = []
    if args.output_dir:
        sinks.append(FileWriter(args.output_dir, args.output_format))
    if args.output_channel:
        sinks.append(PvaOutput(args.output_channel))
    cfg = CollectorConfig(
        input_topics=args.input_topic, group=args.group, collector_id=args.collector_id,
        bootstrap=args.bootstrap_servers, overrides=args.kafka_overrides,
        output_topic=args.output_topic, late_topic=args.late_topic, state_topic=args.state_topic,
        cache_size=args.collector_cache_size, max_delay=args.max_delay,
        commit_interval=args.commit_interval, report_period=args.report_period,
        runtime=args.runtime, control_topic=args.control_topic, status_topic=args.status_topic,
    )
    collector = Collector(cfg, plugin=plugin, sinks=sinks)
    if args.metrics_port is not None:
        from .stats import register

        register(collector)
        serve(args.metrics_port)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: collector.stop())
    code = collector.run()
    log.info("final stats: %s", json.dumps(collector.stats()))
    return code


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(text)
    return value


def _non_negative(text: str) -> float:
    value = float(text)
    if value < 0:
        raise ValueError(text)
    return value


def _json_object(text: str) -> dict[str, Any]:
    value = json.loads(text)
    if not isinstance(value, dict):
        raise ValueError(text)
    return value


_positive_int.__name__ = "positive integer"
_non_negative.__name__ = "non-negative number"
_json_object.__name__ = "JSON object"

if __name__ == "__main__":
    sys.exit(main())
