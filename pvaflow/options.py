"""Command-line options every pvaflow command shares, so names and help read the same."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from .kafka.settings import ENV_BOOTSTRAP, parse_override

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


class Parser(argparse.ArgumentParser):
    """ArgumentParser whose errors are one line and exit 2, as the CLI promises."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def add_kafka_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("Kafka")
    g.add_argument(
        "--bootstrap-servers", "-b", metavar="HOST:PORT",
        help=f"Kafka bootstrap servers (default: ${ENV_BOOTSTRAP} or 127.0.0.1:9092)",
    )
    g.add_argument(
        "-X", dest="kafka_overrides", action="append", type=parse_override, default=[],
        metavar="KEY=VALUE",
        help="librdkafka setting, repeatable (e.g. -X linger.ms=5 -X security.protocol=SASL_SSL)",
    )


def add_run_args(parser: argparse.ArgumentParser, *, report_period: float = 10.0) -> None:
    g = parser.add_argument_group("run")
    g.add_argument("--report-period", type=float, default=report_period, metavar="SECONDS",
                   help=f"seconds between stats reports; 0 disables (default: {report_period:g})")
    g.add_argument("--runtime", type=float, default=0.0, metavar="SECONDS",
                   help="stop after this many seconds; 0 runs until stopped (default: 0)")
    g.add_argument("--log-level", "-ll", choices=LOG_LEVELS, default="info",
                   help="log level (default: info)")
    g.add_argument("--metrics-port", type=int, default=None, metavar="PORT",
                   help="serve Prometheus /metrics on this port (0 picks a free one)")


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    args = parser.parse_args(argv)
    if getattr(args, "log_level", None):
        setup_logging(args.log_level)
    return args
