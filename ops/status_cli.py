"""``pvaflow status``: the pipeline-wide view as a table, from the monitor or the status topic.

The monitor's ``/status`` is asked first; without a monitor the same view is computed from the
tail of the status topic, so the command also works on a pipeline started without one.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Any

from confluent_kafka import KafkaError, KafkaException

from pvaflow.component import run_command
from pvaflow.control import STATUS_TOPIC
from pvaflow.errors import PvaflowError
from pvaflow.kafka.client import Kafka
from pvaflow.kafka.topics import read_partition
from pvaflow.options import Parser, add_kafka_args, add_log_args, parse, positive

from .monitor import STALE_AFTER, latest_from_messages, pipeline_view

DEFAULT_MONITOR = "http://127.0.0.1:6066"
TAIL = 20_000  # status records read from the topic without a monitor (several per component)
READ_TIMEOUT = 30.0  # seconds to read the status topic to its end (status --timeout)


class StatusUnavailable(PvaflowError):
    """Neither the monitor nor the status topic gave a view."""


def _reason(exc: KafkaException) -> str:
    err = exc.args[0] if exc.args else exc
    return err.str() if isinstance(err, KafkaError) else str(err)


def read_status_topic(
    topic: str = STATUS_TOPIC, bootstrap: str | None = None, overrides: Any = None,
    tail: int = TAIL, timeout: float = 30.0, *, kafka: Kafka | None = None,
) -> list[dict[str, Any]]:
    """The last ``tail`` JSON messages of the status topic, in order.

    An unreachable cluster is :class:`~pvaflow.errors.KafkaUnavailable` (exit 3), a missing
    topic or a read error :class:`StatusUnavailable`; both say which topic could not be read.
    """
    kafka = kafka if kafka is not None else Kafka(bootstrap, overrides)
    what = f"the status topic {topic} could not be read"
    try:
        kafka.check_reachable()
        if topic not in kafka.admin().list_topics(timeout=timeout).topics:
            raise StatusUnavailable(f"{what}: it does not exist (has any component run "
                                    "with this --status-topic?)")
        records = _tail(kafka, topic, tail, timeout)
    except PvaflowError as exc:
        if not exc.message.startswith(what):
            exc.message = f"{what}: {exc.message}"
        raise
    except KafkaException as exc:
        raise StatusUnavailable(f"{what}: {_reason(exc)}") from None
    out: list[dict[str, Any]] = []
    for value in records:
        try:
            message = json.loads(value or b"")
        except ValueError:
            continue
        if isinstance(message, dict):
            out.append(message)
    return out


def _tail(kafka: Kafka, topic: str, tail: int, timeout: float) -> list[bytes | None]:
    """Values of the last ``tail`` records of partition 0, up to its end."""
    records, complete = read_partition(topic, kafka, tail=tail or None, timeout=timeout)
    if not complete:
        raise StatusUnavailable(f"the status topic {topic} could not be read to its end "
                                f"within {timeout:g} s")
    return [value for _key, value in records]


def fetch_monitor(url: str, timeout: float = 5.0) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/status", timeout=timeout) as resp:
            view: dict[str, Any] = json.load(resp)
            return view
    except (OSError, ValueError, urllib.error.URLError) as exc:
        why = getattr(exc, "reason", None) or exc
        if isinstance(why, OSError) and why.strerror:
            why = why.strerror
        raise StatusUnavailable(f"the monitor at {url} did not answer ({why})") from None


def get_view(args: Any, kafka: Kafka | None = None,
             read_timeout: float = READ_TIMEOUT) -> tuple[dict[str, Any], str]:
    """The view and where it came from (``--monitor`` first unless ``--from-topic``).

    When neither answers, the error says both why the monitor did not answer and why the
    topic could not be read (with the topic's exit code: 3 when Kafka is unreachable).
    """
    monitor_error: StatusUnavailable | None = None
    if not args.from_topic:
        try:
            return fetch_monitor(args.monitor), f"monitor {args.monitor}"
        except StatusUnavailable as exc:
            monitor_error = exc
    try:
        messages = read_status_topic(args.status_topic,
                                     timeout=read_timeout,
                                     kafka=kafka if kafka is not None else Kafka.from_args(args))
    except PvaflowError as exc:
        if monitor_error is not None:
            exc.message = f"{monitor_error.message}, and {exc.message}"
        raise
    entries = latest_from_messages(messages)
    source = f"topic {args.status_topic}"
    if monitor_error is not None:
        source += f" ({monitor_error.message})"
    return pipeline_view(entries, stale_after=args.stale_after), source


def _n(v: Any) -> str:
    if isinstance(v, float) and not v.is_integer():
        return f"{v:,.1f}"
    return f"{int(v):,}" if isinstance(v, (int, float)) else str(v)


def render(view: Mapping[str, Any], components: bool = False) -> str:
    rows = [["STAGE", "UP", "IN", "OUT", "LOST", "LOST BY REASON", "LAG", "OUT/S"]]
    rows[0].append("OTHER")
    for s in view["stages"]:
        reasons = " ".join(f"{k}={_n(v)}" for k, v in s["lost"].items() if v) or "-"
        # the stage's other counters, as its schema names them (nonzero ones only)
        other = " ".join(f"{k}={_n(v)}" for k, v in (s.get("extras") or {}).items()
                         if v and isinstance(v, (int, float)))
        rows.append([s["stage"], f"{s['running']}/{s['components']}", _n(s["frames_in"]),
                     _n(s["frames_out"]), _n(s["lost_total"]), reasons, _n(s["lag"]),
                     _n(s["rate_out"]), other])
    lines = _columns(rows)
    lines.append(f"lost in the pipeline: {_n(view.get('lost_total', 0))}")
    if components:
        crow = [["COMPONENT", "STATE", "AGE S", "IN", "OUT", "OUT/S"]]
        crow += [[c["component"], c["state"], f"{c['age']:.0f}", _n(c["frames_in"]),
                  _n(c["frames_out"]), _n(c["rate_out"])] for c in view["components"]]
        lines += ["", *_columns(crow)]
    return "\n".join(lines)


def _columns(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]


def build_parser() -> Parser:
    p = Parser(prog="pvaflow status", description="Print the pipeline-wide status per stage.")
    p.add_argument("--monitor", default=DEFAULT_MONITOR, metavar="URL",
                   help="pvaflow-monitor base URL (default: %(default)s)")
    p.add_argument("--from-topic", action="store_true",
                   help="skip the monitor; compute the view from the status topic")
    p.add_argument("--status-topic", default=STATUS_TOPIC, help="(default: %(default)s)")
    p.add_argument("--stale-after", type=float, default=STALE_AFTER, metavar="SECONDS",
                   help="(with --from-topic) silent this long = stale (default: %(default)s)")
    p.add_argument("--timeout", dest="read_timeout", type=positive, default=READ_TIMEOUT,
                   metavar="SECONDS", help="(with --from-topic, or the monitor unreachable) "
                   "give up reading the status topic to its end after this long "
                   "(default: %(default)g)")
    p.add_argument("--components", "-c", action="store_true", help="also list each component")
    p.add_argument("--json", action="store_true", help="print the view as JSON")
    p.add_argument("--watch", "-w", nargs="?", type=float, const=2.0, default=None,
                   metavar="SECONDS", help="refresh every SECONDS (default 2) until Ctrl-C")
    add_kafka_args(p)
    add_log_args(p.add_argument_group("logging"))
    return p


def quiet_kafka_warnings() -> None:
    """A one-shot command reports a Kafka problem in its one error line (which carries the
    cause); the client layer's warnings would only repeat it above that line."""
    logging.getLogger("pvaflow.kafka").setLevel(logging.ERROR)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(build_parser(), argv)
    quiet_kafka_warnings()
    return run_command("pvaflow status", lambda: show(args))


def show(args: Any) -> int:
    kafka = Kafka.from_args(args)
    try:
        while True:
            view, source = get_view(args, kafka, args.read_timeout)
            text = json.dumps(view, indent=2) if args.json else render(view, args.components)
            if args.watch:
                sys.stdout.write("\x1b[H\x1b[2J")
                text += (f"\n\n{time.strftime('%H:%M:%S')} from {source}; "
                         f"every {args.watch:g} s")
            print(text, flush=True)
            if not args.watch:
                return 0
            time.sleep(args.watch)
    except KeyboardInterrupt:  # how --watch ends
        return 0


if __name__ == "__main__":
    sys.exit(main())
