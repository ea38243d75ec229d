"""``make demo`` / ``pvaflow demo``: the whole pipeline on one machine, from nothing.

Starts a local Kafka broker (or uses ``$PVAFLOW_BOOTSTRAP``) and pvapy's area-detector
simulator, then runs bridge -> two rotate consumers -> collector, printing the
pipeline-wide status while frames flow and a final per-stage account.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from pvaflow.component import run_command
from pvaflow.errors import PvaflowError, UsageError
from pvaflow.kafka.settings import ENV_BOOTSTRAP
from pvaflow.options import Parser, add_log_args, flags, parse

from .broker import external_or_local
from .monitor import latest_from_messages, pipeline_view
from .pipeline import components, start, stop_all, with_log_format
from .simulator import SimServer, loopback_env, sim_args
from .status_cli import read_status_topic, render


def spec(bootstrap: str, channel: str, run_id: str, partitions: int,
         log_format: str = "text") -> dict[str, Any]:
    """The demo graph, in the same shape as a ``pvaflow run`` pipeline file."""
    status, control = f"demo.{run_id}.status", f"demo.{run_id}.control"
    frames, rotated = f"demo.{run_id}.frames", f"demo.{run_id}.rotated"
    graph = {
        "bootstrap_servers": bootstrap,
        "control_topic": control,
        "status_topic": status,
        "collector": {"input_topic": [rotated], "output_topic": f"demo.{run_id}.ordered",
                      "group": f"demo-{run_id}-collector", "report_period": 2,
                      "log_level": "warning"},
        "consumers": [{"name": f"demo-{run_id}-rotate", "input_topic": frames,
                       "processor": "rotate", "n_consumers": 2, "output_topic": rotated,
                       "report_period": 2, "log_level": "warning"}],
        "bridge": {"input_channel": [channel], "topic": [frames], "partitions": partitions,
                   "report_period": 2, "log_level": "warning"},
    }
    return with_log_format(graph, log_format)


@contextlib.contextmanager
def kafka(workdir: Path) -> Iterator[str]:
    if not os.environ.get(ENV_BOOTSTRAP):
        say("starting a local Kafka broker (first run resolves its jars from Maven Central) ...")
    with external_or_local(workdir / "kafka") as (bootstrap, broker):
        if broker is None:
            say(f"using the Kafka cluster at {bootstrap} (${ENV_BOOTSTRAP})")
        else:
            say(f"Kafka broker on {bootstrap}; log: {broker.log_path}")
        yield bootstrap


def say(text: str) -> None:
    print(f"[demo] {text}", flush=True)


def show_status(bootstrap: str, topic: str) -> str:
    try:
        messages = read_status_topic(topic, bootstrap, timeout=5)
    except PvaflowError as exc:
        return f"(status not available yet: {exc.line()})"
    view = pipeline_view(latest_from_messages(messages), stale_after=30)
    return render(view) if view["stages"] else "(no component has reported yet)"


def build_parser() -> Parser:
    p = Parser(prog="pvaflow demo", description=(__doc__ or "").split("\n\n")[0])
    p.add_argument(*flags("--runtime"), type=float, default=15.0, metavar="SECONDS",
                   help="how long frames flow (default: 15)")
    # the option's name before every command took --runtime
    p.add_argument("--seconds", dest="runtime", type=float, help=argparse.SUPPRESS)
    p.add_argument("--fps", type=float, default=100.0, help="simulator frame rate (default: 100)")
    p.add_argument("--size", type=int, default=128, metavar="N",
                   help="image side in pixels (default: 128)")
    p.add_argument("--partitions", type=int, default=2, metavar="N",
                   help="frames topic partitions (default: 2)")
    add_log_args(p.add_argument_group("logging"))
    # the demo talks through its [demo] lines; its own log only says what went wrong
    p.set_defaults(log_level="warning")
    for action in p._actions:
        if action.dest == "log_level":
            action.help = (action.help or "").replace("default: info", "default: warning")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(build_parser(), argv)
    return run_command("pvaflow demo", lambda: demo(args))


def demo(args: Any) -> int:
    if args.runtime <= 0 or args.fps <= 0 or args.size <= 0 or args.partitions <= 0:
        raise UsageError("--runtime, --fps, --size and --partitions must be > 0")
    run_id = uuid.uuid4().hex[:6]
    env = loopback_env()
    os.environ.update(env)
    with tempfile.TemporaryDirectory(prefix="pvaflow-demo-") as tmp, kafka(Path(tmp)) as boot:
        channel = f"demo:{run_id}:image"
        sim = SimServer(sim_args(channel, nx=args.size, ny=args.size, fps=args.fps,
                                 runtime=args.runtime + 30, n_frames=100, start_delay=2),
                        channel, env, Path(tmp) / "sim.log")
        graph = spec(boot, channel, run_id, args.partitions, args.log_format)
        logs = Path("out", f"demo-{run_id}").resolve()
        procs = start(components(graph), log_dir=logs)
        say(f"component logs: {logs}/")
        try:
            time.sleep(3)  # let consumers join their groups before the first frame
            say(f"PVA simulator: {channel}, {args.size}x{args.size} uint8 at {args.fps:g} fps")
            sim.start()
            say("pipeline: bridge -> 2 x rotate consumers -> collector (ordered by uniqueId)")
            t_end = time.monotonic() + args.runtime
            while (left := t_end - time.monotonic()) > 0:
                time.sleep(min(5.0, left))
                if any(p.poll() is not None for _, p in procs):
                    say("a component stopped early; see its messages above")
                    break
                say(f"status after {args.runtime - max(left - 5, 0):.0f} s:\n"
                    + show_status(boot, graph["status_topic"]))
            sim.stop()
            say("source stopped; letting the pipeline drain ...")
            time.sleep(4)
        finally:
            sim.stop()
            code = stop_all(procs)
        time.sleep(1)
        say("final account per stage (each component's last report):\n"
            + show_status(boot, graph["status_topic"]))
    say("done" if code == 0 else f"a component failed (exit {code})")
    return code


if __name__ == "__main__":
    sys.exit(main())
