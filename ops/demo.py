"""``make demo`` / ``pvaflow demo``: the whole pipeline on one machine, from nothing.

Starts a local Kafka broker (or uses ``$PVAFLOW_BOOTSTRAP``) and pvapy's area-detector
simulator, then runs bridge -> two rotate consumers -> collector, printing the
pipeline-wide status while frames flow and a final per-stage account.

``--realistic`` streams compressed detector-like frames instead: an HDF5 file of diffraction
frames (``pvaflow.ops.synthetic``, bslz4 chunks) served by the simulator as it stores them
(``-if FILE -hds /entry/data/data -hcm``), forwarded compressed by the bridge, decoded and
rotated by the consumers, and written by the collector to one HDF5 file whose path the demo
prints at the end.
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
from .synthetic import DATASET


def spec(bootstrap: str, channel: str, run_id: str, partitions: int,
         output_dir: Path | None = None, log_format: str = "text") -> dict[str, Any]:
    """The demo graph, in the same shape as a ``pvaflow run`` pipeline file; with
    ``output_dir`` the collector also writes the ordered frames to an HDF5 file there."""
    status, control = f"demo.{run_id}.status", f"demo.{run_id}.control"
    frames, rotated = f"demo.{run_id}.frames", f"demo.{run_id}.rotated"
    graph: dict[str, Any] = {
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
    if output_dir is not None:
        graph["collector"].update(output_dir=str(output_dir), output_format="h5")
    return with_log_format(graph, log_format)


def hdf5_result(output_dir: Path) -> str:
    """Where the collector's HDF5 output is and what it holds (one line for the user)."""
    import h5py
    import hdf5plugin  # noqa: F401  (registers the bitshuffle filter with h5py)

    files = sorted(output_dir.glob("*.h5"))
    if not files:
        return f"no HDF5 file was written in {output_dir}"
    if len(files) > 1:  # a collector writing one file per frame
        return f"{len(files)} HDF5 files (one per frame) in {output_dir}"
    with h5py.File(files[0], "r") as f:
        data = f[DATASET]
        plist = data.id.get_create_plist()
        filters = ", ".join(plist.get_filter(i)[3].decode(errors="replace")
                            for i in range(plist.get_nfilters())) or "no filter"
        return (f"HDF5 file {files[0]}: {DATASET} {data.shape} {data.dtype}, {filters}; "
                f"open it with h5py after 'import hdf5plugin'")


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
    p.add_argument("--fps", type=float, default=None,
                   help="simulator frame rate (default: 100, --realistic 10)")
    p.add_argument("--size", type=int, default=None, metavar="N",
                   help="image side in pixels (default: 128, --realistic 1024)")
    p.add_argument("--realistic", action="store_true",
                   help="stream compressed (bslz4) diffraction frames from an HDF5 file and "
                        "write the ordered output to an HDF5 file")
    p.add_argument("--frames", type=int, default=20, metavar="N",
                   help="distinct frames in the --realistic source file, streamed round-robin "
                        "(default: 20)")
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


def source(args: Any, channel: str, env: dict[str, str], tmp: Path) -> tuple[SimServer, str]:
    """The simulator (random uint8 frames, or --realistic: compressed frames from a file)
    and a line describing it."""
    common: dict[str, Any] = {"fps": args.fps, "runtime": args.runtime + 30, "start_delay": 2}
    if not args.realistic:
        return (SimServer(sim_args(channel, nx=args.size, ny=args.size, n_frames=100, **common),
                          channel, env, tmp / "sim.log"),
                f"{args.size}x{args.size} uint8 at {args.fps:g} fps")
    from .synthetic import write_hdf5

    path = tmp / "realistic.h5"
    frames = write_hdf5(path, args.frames, (args.size, args.size), codec="bslz4")
    ratio = frames.nbytes / max(path.stat().st_size, 1)
    return (SimServer(sim_args(channel, n_frames=args.frames, input_file=path,
                               hdf5_dataset=DATASET, hdf5_compressed=True, **common),
                      channel, env, tmp / "sim.log"),
            f"{args.frames} diffraction frames {args.size}x{args.size} uint16 streamed as "
            f"bslz4 (~{ratio:.1f}x) at {args.fps:g} fps")


def demo(args: Any) -> int:
    if args.fps is None:
        args.fps = 10.0 if args.realistic else 100.0
    if args.size is None:
        args.size = 1024 if args.realistic else 128
    if args.runtime <= 0 or args.fps <= 0 or args.size <= 0 or args.partitions <= 0:
        raise UsageError("--runtime, --fps, --size and --partitions must be > 0")
    if args.frames <= 0:
        raise UsageError("--frames must be > 0")
    run_id = uuid.uuid4().hex[:6]
    env = loopback_env()
    os.environ.update(env)
    with tempfile.TemporaryDirectory(prefix="pvaflow-demo-") as tmp, kafka(Path(tmp)) as boot:
        channel = f"demo:{run_id}:image"
        sim, described = source(args, channel, env, Path(tmp))
        logs = Path("out", f"demo-{run_id}").resolve()
        output_dir = logs / "h5" if args.realistic else None
        graph = spec(boot, channel, run_id, args.partitions, output_dir, args.log_format)
        procs = start(components(graph), log_dir=logs)
        say(f"component logs: {logs}/")
        try:
            time.sleep(3)  # let consumers join their groups before the first frame
            say(f"PVA simulator: {channel}, {described}")
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
        if output_dir is not None:
            say(hdf5_result(output_dir))
    say("done" if code == 0 else f"a component failed (exit {code})")
    return code


if __name__ == "__main__":
    sys.exit(main())
