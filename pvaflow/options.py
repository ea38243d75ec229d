"""Command-line options every pvaflow command shares, so names, short forms, metavars and help
read the same everywhere.

PvaPy's short forms mean what they mean in ``pvapy-hpc-consumer`` / ``pvapy-hpc-collector`` on
every command that has the option (``-ic -oc -sc -cc -pf -pc -pa -nc -id -rt -rp -ll -sqs -rqs
-ccs -du -ds -v``), and no short form means two things: :data:`SHORT_FORMS` is the one table,
and the option adders below take their flags from it. An unknown option is refused in one
line that suggests the closest known one, as click does::

    pvaflow-consumer: error: unrecognized arguments: --input-topc (did you mean --input-topic?)
"""

from __future__ import annotations

import argparse
import difflib
import json
import logging
import re
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from .kafka.settings import ENV_BOOTSTRAP, parse_override

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
LOG_FORMATS = ("text", "json")

# long option -> its short form, for every command that has the option.
SHORT_FORMS: dict[str, str] = {
    "--input-channel": "-ic", "--output-channel": "-oc", "--status-channel": "-sc",
    "--control-channel": "-cc", "--processor-file": "-pf", "--processor-class": "-pc",
    "--processor-args": "-pa", "--n-consumers": "-nc", "--runtime": "-rt",
    "--report-period": "-rp", "--log-level": "-ll", "--server-queue-size": "-sqs",
    "--receiver-queue-size": "-rqs", "--collector-cache-size": "-ccs",
    "--distributor-updates": "-du", "--distributor-set": "-ds",
    "--n-distributor-sets": "-nds", "--input-topic": "-it", "--output-topic": "-ot",
    "--bootstrap-servers": "-b", "--group": "-g", "--topic": "-t",
    "--metadata-channels": "-mc",
    "--accumulate-objects": "-ao", "--accumulation-timeout": "-at",
    "--skip-initial-updates": "-siu", "--oid-field": "-of", "--oid-offset": "-oo",
    "--consumer-id-list": "-cid", "--producer-id-list": "-pid",
    # each component's own id is -id, as PvaPy's --consumer-id / --collector-id
    "--consumer-id": "-id", "--collector-id": "-id", "--bridge-id": "-id", "--mirror-id": "-id",
}

# The same metavar for the same kind of value everywhere.
METAVARS = {"topic": "TOPIC", "channel": "PV", "seconds": "SECONDS", "count": "N",
            "file": "FILE", "json": "JSON", "id": "ID", "port": "PORT", "group": "GROUP"}


def flags(long: str) -> list[str]:
    """``--input-channel`` -> ``["--input-channel", "-ic"]`` (the long form first)."""
    short = SHORT_FORMS.get(long)
    return [long, short] if short else [long]


class Parser(argparse.ArgumentParser):
    """ArgumentParser whose errors are one line, suggest the closest option, and exit 2; every
    command gets ``-v/--version``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        from . import __version__

        self.add_argument("-v", "--version", action="version",
                          version=f"{self.prog} (pvaflow) {__version__}")

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None,
    ) -> tuple[argparse.Namespace, list[str]]:
        """An unknown ``--option`` is reported first (with its suggestion), before argparse
        would complain about a missing required option and hide the typo."""
        argv = list(sys.argv[1:] if args is None else args)
        known = _option_strings(self)
        for token in argv:
            if token == "--":
                break
            name = token.split("=", 1)[0]
            if name.startswith("--") and not any(o.startswith(name) for o in known):
                self.error(f"unrecognized arguments: {name}")
        return super().parse_known_args(argv, namespace)

    def error(self, message: str) -> NoReturn:
        hint = self._did_you_mean(message)
        self.exit(2, f"{self.prog}: error: {message}{hint} (see --help)\n")

    def _did_you_mean(self, message: str) -> str:
        match = re.search(r"unrecognized arguments: (\S+)", message)
        if not match:
            return ""
        wrong = match.group(1).split("=", 1)[0]
        known = _option_strings(self)
        close = difflib.get_close_matches(wrong, known, n=1, cutoff=0.6)
        return f" (did you mean {close[0]}?)" if close else ""


def _option_strings(parser: argparse.ArgumentParser) -> list[str]:
    """Every option of ``parser`` and of its subcommands (argparse reports a subcommand's
    unknown option from the top parser)."""
    out: list[str] = []
    for action in parser._actions:
        out += action.option_strings
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                out += _option_strings(sub)
    return out


def did_you_mean(word: str, choices: Sequence[str]) -> str:
    """`` (did you mean X?)`` for the closest of ``choices``, or ''."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.5)
    return f" (did you mean {close[0]}?)" if close else ""


# Seconds between transactions (and offset commits). A read_committed reader, librdkafka's
# default, sees an output only when its transaction commits, so for such a reader the interval
# is a wait every frame pays: half of it on average, plus the commit (500 fps of 128x128
# frames, source to such a reader, p50 139 ms with 0.2 s and 60 ms with 0.05 s; see
# docs/operations.md). A shorter one costs the broker a transaction per interval.
COMMIT_INTERVAL = 0.2
LATENCY_COMMIT_INTERVAL = 0.05


def add_commit_interval(group: argparse._ArgumentGroup, what: str) -> None:
    """``--commit-interval``, whose default follows ``--latency`` (see :func:`commit_interval`)."""
    group.add_argument(
        "--commit-interval", type=non_negative, default=None, metavar="SECONDS",
        help=f"seconds between {what} (default: {COMMIT_INTERVAL:g}; "
             f"{LATENCY_COMMIT_INTERVAL:g} with --latency)")


def commit_interval(args: argparse.Namespace) -> float:
    """``--commit-interval`` as given, else the default of the settings profile in use.

    >>> commit_interval(argparse.Namespace(commit_interval=None, kafka_profile="latency"))
    0.05
    """
    if args.commit_interval is not None:
        return float(args.commit_interval)
    return LATENCY_COMMIT_INTERVAL if args.kafka_profile == "latency" else COMMIT_INTERVAL


def add_kafka_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("Kafka")
    g.add_argument(
        *flags("--bootstrap-servers"), metavar="HOST:PORT[,...]",
        help=f"Kafka bootstrap servers (default: ${ENV_BOOTSTRAP} or 127.0.0.1:9092)",
    )
    g.add_argument(
        "-X", dest="kafka_overrides", action="append", type=parse_override, default=[],
        metavar="KEY=VALUE",
        help="librdkafka setting, repeatable (e.g. -X linger.ms=5 -X security.protocol=SASL_SSL)",
    )
    g.add_argument(
        "--latency", dest="kafka_profile", action="store_const", const="latency",
        default=None,
        help="settings for low latency (interactive use): producers send at once "
             "(linger.ms=0), fetches wait at most 10 ms, consumers and collectors commit "
             f"every {LATENCY_COMMIT_INTERVAL:g} s, at more CPU per frame in this command and the "
             "broker; -X and --commit-interval still override (default: settings for "
             "throughput, see docs/operations.md)")
    g.add_argument(
        "--kafka-timeout", type=float, default=120.0, metavar="SECONDS",
        help="give up (exit 3) when no broker has answered for this long; 0 waits forever "
             "(default: 120)")
    g.add_argument(
        "--replication-factor", type=replication_factor, default=-1, metavar="N",
        help="replicas of each topic this command creates; -1 is the broker's "
             "default.replication.factor (default: -1)")
    g.add_argument(
        "--min-insync-replicas", type=non_negative_int, default=0, metavar="N",
        help="min.insync.replicas of each topic this command creates; 0 is automatic: 2 "
             "when replicated 3 or more times, else 1 (default: 0)")


def add_run_args(parser: argparse.ArgumentParser, *, report_period: float = 10.0) -> None:
    g = parser.add_argument_group("run")
    g.add_argument(*flags("--report-period"), type=float, default=report_period,
                   metavar="SECONDS",
                   help=f"seconds between stats reports; 0 disables (default: {report_period:g})")
    g.add_argument(*flags("--runtime"), type=float, default=0.0, metavar="SECONDS",
                   help="stop after this many seconds; 0 runs until stopped (default: 0)")
    add_log_args(g)
    g.add_argument("--metrics-port", type=int, default=None, metavar="PORT",
                   help="serve Prometheus /metrics and the /healthz, /readyz probes on this "
                        "port (0 picks a free one)")
    g.add_argument("--stall-after", type=non_negative, default=60.0, metavar="SECONDS",
                   help="/healthz turns 503 when the work loop has not come round for this "
                        "long (default: 60)")


def add_log_args(group: Any) -> None:
    group.add_argument(*flags("--log-level"), choices=LOG_LEVELS, default="info",
                       metavar="LEVEL", help=f"{' | '.join(LOG_LEVELS)} (default: info)")
    group.add_argument("--log-format", choices=LOG_FORMATS, default="text",
                       help="text, or json: one JSON object per line for log stacks "
                            "(default: text)")


def add_control_args(parser: argparse.ArgumentParser, *, control: str | None,
                     status: str | None, pva: bool = False) -> None:
    """The control and status topics (and, with ``pva``, PvaPy's PVA channels)."""
    g = parser.add_argument_group("control and status")
    g.add_argument("--control-topic", default=control, metavar="TOPIC",
                   help=f"control topic ('' disables) (default: {control})")
    g.add_argument("--status-topic", default=status, metavar="TOPIC",
                   help=f"status topic ('' disables) (default: {status})")
    if pva:
        g.add_argument(*flags("--status-channel"), metavar="PV",
                       help="PVA status channel ('*' = this component's id)")
        g.add_argument(*flags("--control-channel"), metavar="PV",
                       help="PVA control channel ('*' = this component's id)")


def add_plugin_args(parser: argparse.ArgumentParser, title: str = "plugin") -> None:
    g = parser.add_argument_group(title)
    g.add_argument("--processor", metavar="NAME|module:Class",
                   help="entry point name in group pvaflow.processors, or module:Class")
    g.add_argument(*flags("--processor-file"), metavar="FILE",
                   help="Python file defining the processor class")
    g.add_argument(*flags("--processor-class"), metavar="NAME",
                   help="class name in --processor-file (or a dotted module.Class, as PvaPy "
                        "accepts)")
    g.add_argument(*flags("--processor-args"), type=json_object, default={}, metavar="JSON",
                   help="JSON object passed to the processor's constructor")


def json_object(text: str) -> dict[str, Any]:
    """argparse ``type=`` for a JSON object option."""
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not JSON ({exc}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object like '{{\"x\": 1}}', "
                                         f"got {text!r}")
    return value


def _whole(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def positive_int(text: str) -> int:
    """argparse ``type=`` for counts that must be at least 1."""
    value = _whole(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def whole_in(low: int, high: int) -> Callable[[str], int]:
    """argparse ``type=`` for a whole number in ``low..high`` (a port, a broker count).

    >>> whole_in(1, 9)("3")
    3
    """
    def check(text: str) -> int:
        value = _whole(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be {low} to {high}, got {value}")
        return value
    check.__name__ = f"whole number {low}..{high}"
    return check


def id_list(text: str) -> list[int]:
    """PvaPy's id list: ``1,3,5`` or ``range(first, last+1[, step])``."""
    spec = text.strip()
    try:
        m = re.fullmatch(r"range\(([^)]*)\)", spec)
        if m:
            ids = list(range(*(int(x) for x in m.group(1).split(","))))
        else:
            ids = [int(x) for x in spec.strip("[]").split(",") if x.strip()]
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(
            f"expected ids like 1,2,3 or range(1,4), got {text!r}") from None
    if not ids:
        raise argparse.ArgumentTypeError(f"no ids in {text!r}")
    if len(set(ids)) != len(ids):
        raise argparse.ArgumentTypeError(f"an id appears twice in {text!r}")
    return ids


def replication_factor(text: str) -> int:
    """argparse ``type=`` for ``--replication-factor``: ``-1`` or a positive integer."""
    value = _whole(text)
    if value == 0 or value < -1:
        raise argparse.ArgumentTypeError(
            f"expected -1 (the broker's default) or a positive integer, got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    """argparse ``type=`` for a count where 0 means automatic."""
    value = _whole(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text!r}")
    return value


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def non_negative(text: str) -> float:
    """argparse ``type=`` for durations."""
    value = _number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {value:g}")
    return value


def positive(text: str) -> float:
    """argparse ``type=`` for durations and rates that must be above 0."""
    value = _number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {value:g}")
    return value


# -- logging -----------------------------------------------------------------------------------

_identity: dict[str, str] = {}


def set_log_identity(component: str, group: str, ident: str) -> None:
    """Who this process is, for ``--log-format json`` (the lifecycle calls it)."""
    _identity.update(component=component, group=group, id=ident)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, component, group, id, logger, message, and
    ``unique_id`` when a log call passes ``extra={"unique_id": ...}``."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                    + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(), **_identity, "logger": record.name,
            "message": record.getMessage(),
        }
        uid = getattr(record, "unique_id", None)
        if uid is not None:
            out["unique_id"] = uid
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out)


def setup_logging(level: str, fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper()))


def parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    args = parser.parse_args(argv)
    if getattr(args, "log_level", None):
        setup_logging(args.log_level, getattr(args, "log_format", "text"))
    return args


def add_replay_args(parser: argparse.ArgumentParser) -> None:
    """``--from-time / --to-time / --from-offset``: reprocess a recorded window of the input
    (see :mod:`pvaflow.kafka.positions` for the time grammar and the replay group)."""
    from .kafka.positions import offset_arg, time_arg

    g = parser.add_argument_group(
        "reprocessing (reads in the group <group>.replay-<window>, never the live group)")
    g.add_argument("--from-time", type=time_arg, metavar="TIME",
                   help="start at the first record at or after TIME: ISO 8601 "
                        "(2024-05-01T22:00, local unless a zone is given), 'now', "
                        "'1h ago', '30 min ago', 'yesterday 22:00', 'today 06:00', "
                        "HH:MM or @EPOCH-SECONDS")
    g.add_argument("--to-time", type=time_arg, metavar="TIME",
                   help="stop each partition at its first record after TIME and exit when "
                        "all are done (same grammar)")
    g.add_argument("--from-offset", type=offset_arg, metavar="N",
                   help="start every partition at offset N")
