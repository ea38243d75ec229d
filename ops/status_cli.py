"""``pvaflow status``: the pipeline-wide view as a table, from the monitor or the status topic.

The monitor's ``/status`` is asked first; without a monitor the same view is computed from the
tail of the status topic, so the command also works on a pipeline started without one.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Any

from confluent_kafka import KafkaException

from pvaflow.control import STATUS_TOPIC
from pvaflow.errors import PvaflowError
from pvaflow.kafka.topics import read_partition
from pvaflow.options import Parser, add_kafka_args, parse

from .monitor import STALE_AFTER, latest_from_messages, pipeline_view

DEFAULT_MONITOR = "http://127.0.0.1:6066"
TAIL = 20_000  # status records read from the topic without a monitor (several per component)


class StatusUnavailable(PvaflowError):
    pass


def read_status_topic(
    topic: str = STATUS_TOPIC, bootstrap: str | None = None, overrides: Any = None,
    tail: int = TAIL, timeout: float = 15.0,
) -> list[dict[str, Any]]:
    """The last ``tail`` JSON messages of the status topic, in order."""
    try:
        records, _complete = read_partition(topic, bootstrap, overrides, tail=tail,
                                            timeout=timeout)
    except KafkaException as exc:
        raise StatusUnavailable(f"cannot read {topic}: {exc}") from exc
    out: list[dict[str, Any]] = []
    for _key, value in records:
        try:
            out.append(json.loads(value or b""))
        except ValueError:
            continue
    return out


def fetch_monitor(url: str, timeout: float = 5.0) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/status", timeout=timeout) as resp:
            view: dict[str, Any] = json.load(resp)
            return view
    except (OSError, ValueError, urllib.error.URLError) as exc:
        raise StatusUnavailable(f"monitor {url} did not answer: {exc}") from exc


def get_view(args: Any) -> tuple[dict[str, Any], str]:
    """The view and where it came from (``--monitor`` first unless ``--from-topic``)."""
    errors = []
    if not args.from_topic:
        try:
            return fetch_monitor(args.monitor), f"monitor {args.monitor}"
        except StatusUnavailable as exc:
            errors.append(str(exc))
    messages = read_status_topic(args.status_topic, args.bootstrap_servers, args.kafka_overrides)
    entries = latest_from_messages(messages)
    return pipeline_view(entries, stale_after=args.stale_after), f"topic {args.status_topic}" + (
        f" ({errors[0]})" if errors else "")


def _n(v: Any) -> str:
    if isinstance(v, float) and not v.is_integer():
        return f"{v:,.1f}"
    return f"{int(v):,}" if isinstance(v, (int, float)) else str(v)


def render(view: Mapping[str, Any], components: bool = False) -> str:
    rows = [["STAGE", "UP", "IN", "OUT", "LOST", "LOST BY REASON", "LAG", "OUT/S"]]
    for s in view["stages"]:
        reasons = " ".join(f"{k}={_n(v)}" for k, v in s["lost"].items() if v) or "-"
        extra = ""
        if s["kind"] == "collector":
            extra = f" dup={_n(s.get('duplicates', 0))} cache={_n(s.get('cache_depth', 0))}"
        rows.append([s["stage"], f"{s['running']}/{s['components']}", _n(s["frames_in"]),
                     _n(s["frames_out"]), _n(s["lost_total"]), reasons + extra, _n(s["lag"]),
                     _n(s["rate_out"])])
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
    p.add_argument("--components", "-c", action="store_true", help="also list each component")
    p.add_argument("--json", action="store_true", help="print the view as JSON")
    p.add_argument("--watch", "-w", nargs="?", type=float, const=2.0, default=None,
                   metavar="SECONDS", help="refresh every SECONDS (default 2) until Ctrl-C")
    add_kafka_args(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(build_parser(), argv)
    try:
        while True:
            try:
                view, source = get_view(args)
            except StatusUnavailable as exc:
                print(f"pvaflow status: {exc}", file=sys.stderr)
                return 1
            text = json.dumps(view, indent=2) if args.json else render(view, args.components)
            if args.watch:
                sys.stdout.write("\x1b[H\x1b[2J")
                text += f"\n\n{time.strftime('%H:%M:%S')} from {source}; every {args.watch:g} s"
            print(text, flush=True)
            if not args.watch:
                return 0
            time.sleep(args.watch)
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
