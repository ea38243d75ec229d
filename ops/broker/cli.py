"""``pvaflow-broker``: argument parsing and the fetch/run/start/stop/status commands."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from pvaflow.component import fail
from pvaflow.errors import PvaflowError
from pvaflow.options import Parser, add_log_args, parse, positive, whole_in

from .cluster import LocalCluster
from .daemon import clear_state, describe, running_pids, write_cluster_state, write_state
from .errors import BrokerError
from .lifecycle import LocalBroker
from .maven import (
    DEFAULT_KAFKA_VERSION,
    VERSION_RE,
    default_cache_root,
    default_kafka_version,
    fetch_kafka,
)
from .procs import pid_alive, stop_pids
from .security import PLAINTEXT, SASL_SSL, SECURITY_MODES, SecurityFiles, describe_clients


def _version(text: str) -> str:
    if not VERSION_RE.match(text):
        raise argparse.ArgumentTypeError(f"not a Kafka version: {text!r}")
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="pvaflow-broker",
        description=(
            "Run a real Apache Kafka broker (KRaft), or with --brokers N a local\n"
            "N-node cluster, on 127.0.0.1 for pvaflow development, tests and demos. Jars come\n"
            "from Maven Central (needs mvn and java) and are cached under $PVAFLOW_CACHE\n"
            "(default ~/.cache/pvaflow)."
        ),
        epilog=(
            "examples:\n"
            "  pvaflow-broker run                 # foreground on 127.0.0.1:9092, Ctrl-C stops\n"
            "  pvaflow-broker start --port 0      # background on a free port\n"
            "  pvaflow-broker run --brokers 3     # 3-node cluster on 9092-9094 (fault tests)\n"
            "  pvaflow-broker start --security sasl_ssl  # SASL_SSL listener (SCRAM-SHA-512)\n"
            "  set -a; . <data-dir>/security/client.env  # its client settings, for every command\n"
            "  export PVAFLOW_BOOTSTRAP=$(pvaflow-broker status --bootstrap)\n"
            "  pvaflow-broker stop"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def common(p: argparse.ArgumentParser, *, ports: bool, timeout: float | None) -> None:
        add_log_args(p.add_argument_group("logging"))
        p.add_argument("--kafka-version", type=_version, default=None,
                       help=f"Kafka version ($KAFKA_VERSION, default {DEFAULT_KAFKA_VERSION})")
        p.add_argument("--cache-dir", type=Path, default=None,
                       help="cache root for jars ($PVAFLOW_CACHE, default ~/.cache/pvaflow)")
        if ports or timeout is not None:
            p.add_argument("--data-dir", type=Path, default=None,
                           help="broker data + logs (default <cache>/broker-<version>, "
                                "<cache>/cluster<N>-<version> with --brokers N)")
            p.add_argument("--brokers", type=whole_in(1, 9), default=1,
                           help="number of brokers: N > 1 runs a local N-node KRaft cluster "
                                "(replication factor 3, min ISR 2) for fault tests; stop and "
                                "status use it only to find the default data dir")
            p.add_argument("--security", choices=SECURITY_MODES, default=PLAINTEXT,
                           help="plaintext (default) or sasl_ssl: the client port becomes a "
                                "SASL_SSL listener (SCRAM-SHA-512, TLS with a CA made for the "
                                "data dir); the client settings, CA and password file are "
                                "written to <data-dir>/security/ (the password is never "
                                "printed); stop and status use it only to find the default "
                                "data dir")
        if ports:
            p.add_argument("--port", type=whole_in(0, 65535), default=9092,
                           help="client port on 127.0.0.1 (default 9092; 0 = any free port); "
                                "a cluster uses PORT..PORT+N-1")
            p.add_argument("--controller-port", type=whole_in(0, 65535), default=0,
                           help="KRaft controller port (default 0 = any free port); "
                                "a cluster uses PORT..PORT+N-1")
        if timeout is not None:
            p.add_argument("--timeout", type=positive, default=timeout,
                           help=f"seconds to wait (default {timeout:g})")

    p = sub.add_parser("fetch", help="resolve the Kafka jars with Maven and print where they are")
    common(p, ports=False, timeout=None)
    p.add_argument("--force", action="store_true", help="resolve again even if cached")
    p = sub.add_parser("run", help="run in the foreground until SIGINT/SIGTERM")
    common(p, ports=True, timeout=60.0)
    p = sub.add_parser("start", help="start in the background and record it in the data dir")
    common(p, ports=True, timeout=60.0)
    p = sub.add_parser("stop", help="stop the background broker recorded in the data dir")
    common(p, ports=False, timeout=20.0)
    p = sub.add_parser("status", help="print the recorded broker; exit 1 if it is not running")
    common(p, ports=False, timeout=20.0)
    p.add_argument("--bootstrap", action="store_true", help="print only host:port")
    return parser


def _data_dir(args: argparse.Namespace) -> Path:
    if args.data_dir is not None:
        return Path(args.data_dir).resolve()
    root = args.cache_dir if args.cache_dir is not None else default_cache_root()
    version = args.kafka_version or default_kafka_version()
    # A secured broker gets its own default directory: its storage holds the SCRAM user.
    suffix = f"-{SASL_SSL}" if args.security == SASL_SSL else ""
    if args.brokers > 1:
        return root / f"cluster{args.brokers}-{version}{suffix}"
    return root / f"broker-{version}{suffix}"


def _make_broker(args: argparse.Namespace, data_dir: Path) -> LocalBroker:
    return LocalBroker(
        data_dir, args.port or None, controller_port=args.controller_port or None,
        kafka_version=args.kafka_version, cache_root=args.cache_dir,
        start_timeout=args.timeout, security=args.security,
    )


def _make_cluster(args: argparse.Namespace, data_dir: Path) -> LocalCluster:
    def ports(first: int) -> list[int] | None:
        return [first + i for i in range(args.brokers)] if first else None

    return LocalCluster(
        data_dir, args.brokers, ports=ports(args.port),
        controller_ports=ports(args.controller_port), kafka_version=args.kafka_version,
        cache_root=args.cache_dir, start_timeout=args.timeout, security=args.security,
    )


def _announce(line: str, files: SecurityFiles | None, bootstrap: str) -> None:
    """The ``key=value`` line scripts parse (stdout) and, when secured, where the client
    files are plus the client settings with the password masked (stderr)."""
    if files is not None:
        line += f" security={SASL_SSL} client_config={files.client_properties_path}"
    print(line, flush=True)
    if files is not None:
        print(describe_clients(files, bootstrap), file=sys.stderr, flush=True)


def _cmd_run_cluster(args: argparse.Namespace, data_dir: Path) -> int:
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    cluster = _make_cluster(args, data_dir)
    try:
        cluster.start()
        pids = [p for p in cluster.pids if p is not None]
        write_cluster_state(cluster, pids)
        _announce(f"bootstrap={cluster.bootstrap} pids={','.join(map(str, pids))} "
                  f"log={cluster.brokers[0].log_path}", cluster.security_files,
                  cluster.bootstrap)
        print(f"{args.brokers} brokers started in {cluster.last_start_seconds:.1f} s; "
              "Ctrl-C stops", file=sys.stderr)
        # A member that dies (or is killed for a fault test) is reported, not fatal: the
        # rest of the cluster keeps serving; only the loss of every member ends the run.
        reported: set[int] = set()
        while not stop.wait(0.5):
            for b in cluster.brokers:
                if not b.is_running() and b.node_id not in reported:
                    reported.add(b.node_id)
                    print(f"pvaflow-broker: node {b.node_id} ({b.bootstrap}) exited",
                          file=sys.stderr, flush=True)
            if len(reported) == len(cluster.brokers):
                print(f"pvaflow-broker: error: every broker exited\n{cluster.log_tail()}",
                      file=sys.stderr)
                return 1
        print("stopping...", file=sys.stderr, flush=True)
        return 0
    finally:
        cluster.stop()
        clear_state(data_dir)
        for s, h in old.items():
            signal.signal(s, h)


def _cmd_run(args: argparse.Namespace, data_dir: Path) -> int:
    if (running := running_pids(data_dir)) is not None:
        raise BrokerError(f"a broker already runs on {data_dir}: {describe(running[1])}")
    if args.brokers > 1:
        return _cmd_run_cluster(args, data_dir)
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    broker = _make_broker(args, data_dir)
    try:
        broker.start()
        assert broker.pid is not None
        write_state(broker, broker.pid)
        _announce(f"bootstrap={broker.bootstrap} pid={broker.pid} log={broker.log_path}",
                  broker.security_files, broker.bootstrap)
        print(f"started in {broker.last_start_seconds:.1f} s; Ctrl-C stops", file=sys.stderr)
        while not stop.wait(0.5):
            if not broker.is_running():
                print(f"pvaflow-broker: error: Kafka exited unexpectedly\n{broker.log_tail()}",
                      file=sys.stderr)
                return 1
        print("stopping...", file=sys.stderr, flush=True)
        return 0
    finally:
        broker.stop()
        clear_state(data_dir)
        for s, h in old.items():
            signal.signal(s, h)


def _cmd_start(args: argparse.Namespace, data_dir: Path) -> int:
    if (running := running_pids(data_dir)) is not None:
        print(f"already running: {describe(running[1])}")
        return 0
    if args.brokers > 1:
        cluster = _make_cluster(args, data_dir)
        cluster.start()
        pids = cluster.detach()
        write_cluster_state(cluster, pids)
        _announce(f"bootstrap={cluster.bootstrap} pids={','.join(map(str, pids))} "
                  f"log={cluster.brokers[0].log_path}", cluster.security_files,
                  cluster.bootstrap)
        return 0
    broker = _make_broker(args, data_dir)
    broker.start()
    pid = broker.detach()
    write_state(broker, pid)
    _announce(f"bootstrap={broker.bootstrap} pid={pid} log={broker.log_path}",
              broker.security_files, broker.bootstrap)
    return 0


def _cmd_stop(args: argparse.Namespace, data_dir: Path) -> int:
    running = running_pids(data_dir)
    if running is None:
        clear_state(data_dir)
        print(f"no broker running on {data_dir}", file=sys.stderr)
        return 0
    pids, state = running
    stop_pids(pids, args.timeout)
    if survivors := [p for p in pids if pid_alive(p)]:
        raise BrokerError(f"pid {', '.join(map(str, survivors))} survived SIGKILL")
    clear_state(data_dir)
    label = "pids" if "pids" in state else "pid"
    print(f"stopped {label}={','.join(map(str, pids))} ({state['bootstrap']})")
    return 0


def _cmd_status(args: argparse.Namespace, data_dir: Path) -> int:
    running = running_pids(data_dir)
    if running is None:
        print(f"no broker running on {data_dir}", file=sys.stderr)
        return 1
    print(running[1]["bootstrap"] if args.bootstrap else describe(running[1]))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``pvaflow-broker``; returns the exit status."""
    args = parse(build_parser(), argv)
    try:
        if args.command == "fetch":
            t0 = time.monotonic()
            libs = fetch_kafka(args.kafka_version, cache_root=args.cache_dir, force=args.force)
            n = len(list(libs.glob("*.jar")))
            print(libs)
            print(f"{n} jars, {time.monotonic() - t0:.1f} s", file=sys.stderr)
            return 0
        data_dir = _data_dir(args)
        commands: dict[str, Callable[[argparse.Namespace, Path], int]] = {
            "run": _cmd_run, "start": _cmd_start, "stop": _cmd_stop, "status": _cmd_status,
        }
        return commands[args.command](args, data_dir)
    except PvaflowError as exc:
        return fail("pvaflow-broker", exc)
    except KeyboardInterrupt:
        return 130
