"""``pvaflow control TARGET COMMAND [ARGS]``: send a command, print who answered and who not.

The known components come from the latest status messages (the monitor's ``/status``, or the
status topic): a target matching none of them is refused before anything is sent, and the
running ones it matches are the replies to wait for.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from collections.abc import Sequence
from typing import Any

from confluent_kafka import OFFSET_END, KafkaException, TopicPartition

from pvaflow.component import as_pvaflow_error, run_command
from pvaflow.control import COMMANDS, CONTROL_TOPIC, STATUS_TOPIC, ComponentId, command_message
from pvaflow.errors import PvaflowError
from pvaflow.kafka.client import Kafka
from pvaflow.kafka.topics import ensure_topic, watermarks
from pvaflow.options import Parser, add_kafka_args, add_log_args, parse

from .monitor import STALE_AFTER
from .status_cli import DEFAULT_MONITOR, get_view, quiet_kafka_warnings

PROG = "pvaflow control"


def build_parser() -> Parser:
    p = Parser(prog="pvaflow control", description=(
        "Send configure / reset_stats / get_stats / stop to one component (kind/group/id), a "
        "group, a kind, or all, and print the replies."))
    p.add_argument("target", help="all | KIND | GROUP | KIND/GROUP | KIND/GROUP/ID")
    p.add_argument("command", help=" | ".join(COMMANDS))
    p.add_argument("args", nargs="?", default="{}", help="JSON object (for configure)")
    p.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS",
                   help="wait this long for replies (default: %(default)s)")
    p.add_argument("--monitor", default=DEFAULT_MONITOR, metavar="URL",
                   help="where to learn which components exist (default: %(default)s)")
    p.add_argument("--from-topic", action="store_true",
                   help="learn the components from the status topic, not the monitor")
    p.add_argument("--stale-after", type=float, default=STALE_AFTER, help=argparse.SUPPRESS)
    p.add_argument("--control-topic", default=CONTROL_TOPIC, help="(default: %(default)s)")
    p.add_argument("--status-topic", default=STATUS_TOPIC, help="(default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print the replies as JSON lines")
    add_kafka_args(p)
    add_log_args(p.add_argument_group("logging"))
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parse(parser, argv)
    quiet_kafka_warnings()
    try:
        cmd_args = json.loads(args.args)
    except ValueError as exc:
        parser.error(f"ARGS must be a JSON object: {exc}")
    if not isinstance(cmd_args, dict):
        parser.error("ARGS must be a JSON object, e.g. '{\"x\": 1}'")
    try:
        message = command_message(args.target, args.command, cmd_args)
    except ValueError as exc:
        parser.error(str(exc))
    return run_command(PROG, lambda: control(parser, args, message))


def control(parser: Parser, args: Any, message: dict[str, Any]) -> int:
    kafka = Kafka.from_args(args)
    try:
        view, _source = get_view(args, kafka)
    except PvaflowError as exc:
        exc.message = f"cannot list components: {exc.message}"
        raise
    matching = [c for c in view["components"]
                if ComponentId.parse(c["component"]).matches(args.target)]
    if not matching:
        known = sorted({c["component"] for c in view["components"]})
        parser.error(f"unknown target {args.target!r}; known components: "
                     f"{', '.join(known) or 'none (is anything running?)'}")
    expected = {c["component"] for c in matching if c["state"] != "stopped"}
    if not expected:
        raise PvaflowError(f"every component matching {args.target!r} has stopped: "
                           f"{', '.join(sorted(c['component'] for c in matching))}")
    try:
        replies = send_and_wait(kafka, args, message, expected)
    except KafkaException as exc:
        raise as_pvaflow_error(exc, kafka) from None
    return report(replies, expected, args.timeout, args.json)


def send_and_wait(
    kafka: Kafka, args: Any, message: dict[str, Any], expected: set[str]
) -> dict[str, dict[str, Any]]:
    """Listen on the status topic from its end, send, collect replies to this request_id."""
    kafka.check_reachable()
    ensure_topic(args.control_topic, 1, admin=kafka.admin(), strict=False)
    consumer = kafka.consumer(f"pvaflow-control-cli-{uuid.uuid4().hex[:8]}")
    producer = kafka.producer(enable_idempotence=False, linger_ms=0)
    try:
        _low, high = watermarks(consumer, args.status_topic)
        consumer.assign([TopicPartition(args.status_topic, 0, high if high >= 0 else OFFSET_END)])
        producer.produce(args.control_topic, key=args.target.encode(),
                         value=json.dumps(message).encode())
        if producer.flush(10):
            raise kafka.health.unavailable("could not send the command to Kafka", kafka.bootstrap)
        replies: dict[str, dict[str, Any]] = {}
        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline and not expected <= replies.keys():
            msg = consumer.poll(0.2)
            if msg is None or msg.error() is not None:
                continue
            try:
                reply = json.loads(msg.value() or b"")
            except ValueError:
                continue
            if reply.get("type") == "reply" and reply.get("request_id") == message["request_id"]:
                replies[str(reply.get("component"))] = reply
        return replies
    finally:
        consumer.close()


def report(
    replies: dict[str, dict[str, Any]], expected: set[str], timeout: float, as_json: bool
) -> int:
    failed = False
    for name in sorted(replies):
        r = replies[name]
        failed |= not r.get("ok")
        if as_json:
            print(json.dumps(r))
        elif r.get("ok"):
            result = r.get("result") or {}
            print(f"{name}: ok" + (f" {json.dumps(result)}" if result else ""))
        else:
            print(f"{name}: error: {r.get('error')}")
    missing = sorted(expected - replies.keys())
    if missing:
        print(f"no reply within {timeout:g} s from: {', '.join(missing)}", file=sys.stderr)
    return 1 if missing or failed else 0


if __name__ == "__main__":
    sys.exit(main())
