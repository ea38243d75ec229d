"""``pvaflow run pipeline.yaml``: start a whole graph locally, one process per component.

The file mirrors the command lines rather than inventing a second vocabulary: every key of a
component maps to the option of the same name (``distributor_updates: 3`` ->
``--distributor-updates 3``; a list repeats the option, a mapping becomes JSON, ``true`` is a
bare flag). So every CLI option works in the file, and the Helm chart's values use the same
shape::

    bootstrap_servers: 127.0.0.1:9092        # optional; else $PVAFLOW_BOOTSTRAP
    monitor: {}                              # optional
    bridge:   {input_channel: [pvapy:image], topic: frames, partitions: 4}
    stages:
      - {name: rotate, input_topic: frames, processor: rotate, n_consumers: 2,
         output_topic: rotated}
    collector: {input_topic: [rotated], output_topic: ordered, collector_cache_size: 1000}
"""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pvaflow.errors import ConfigError
from pvaflow.options import Parser, add_run_args, parse

log = logging.getLogger("pvaflow.run")

# Start order: sinks first, so nothing is produced before its readers exist.
ROLES = (
    ("monitor", "pvaflow.ops.monitor"),
    ("collector", "pvaflow.collectors.cli"),
    ("stages", "pvaflow.processors.cli"),
    ("mirror", "pvaflow.bridge.mirror_cli"),
    ("bridge", "pvaflow.bridge.cli"),
)
_SHARED = ("bootstrap_servers", "control_topic", "status_topic")
# Which top-level settings each role's command accepts (the monitor only reads status).
_SHARED_BY_ROLE = {
    "monitor": ("bootstrap_servers", "status_topic"),
    "mirror": ("bootstrap_servers",),
    "collector": _SHARED, "stages": _SHARED, "bridge": _SHARED,
}


class PipelineError(ConfigError):
    """The pipeline file does not describe a runnable graph."""


@dataclass
class Component:
    name: str
    module: str
    args: list[str]

    def command(self) -> list[str]:
        boot = f"import sys; from {self.module} import main; sys.exit(main(sys.argv[1:]))"
        return [sys.executable, "-c", boot, *self.args]


def to_args(options: Mapping[str, Any]) -> list[str]:
    """``{"input_topic": ["a", "b"], "exactly_once": True}`` -> CLI arguments."""
    args: list[str] = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if value is None or value is False:
            continue
        if value is True:
            args.append(flag)
        elif isinstance(value, list | tuple):
            for item in value:
                args += [flag, _text(item)]
        else:
            args += [flag, _text(value)]
    return args


def _text(value: Any) -> str:
    return json.dumps(value) if isinstance(value, Mapping) else str(value)


def components(spec: Mapping[str, Any]) -> list[Component]:
    """Command lines for every component of a parsed pipeline file, in start order."""
    if not isinstance(spec, Mapping):
        raise PipelineError("a pipeline file must be a mapping (bridge:, stages:, collector: ...)")
    known = {role for role, _ in ROLES} | set(_SHARED)
    unknown = set(spec) - known
    if unknown:
        raise PipelineError(f"unknown keys {sorted(unknown)}; known: {sorted(known)}")
    out = []
    for role, module in ROLES:
        entries = spec.get(role)
        if entries is None:
            continue
        if role == "stages":
            if not isinstance(entries, list):
                raise PipelineError("stages: must be a list of processor stages")
        else:
            entries = [entries]
        shared = {k: spec[k] for k in _SHARED_BY_ROLE[role] if k in spec}
        for i, entry in enumerate(entries):
            opts = dict(entry or {})
            name = str(opts.pop("name", role if role != "stages" else f"stage{i + 1}"))
            if role == "stages":
                opts.setdefault("group", name)
            opts = {**{k: v for k, v in shared.items() if k not in opts}, **opts}
            out.append(Component(name, module, to_args(opts)))
    if not out:
        raise PipelineError("the pipeline file names no component")
    return out


def load(path: str | Path) -> list[Component]:
    try:
        spec = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise PipelineError(f"cannot read {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise PipelineError(f"{path} is not valid YAML: {exc}") from exc
    return components(spec)


Running = list[tuple[Component, "subprocess.Popen[bytes]"]]


def start(parts: Sequence[Component], log_dir: Path | None = None) -> Running:
    """Start every component (in the given order) as a child process; with ``log_dir`` each
    one's output goes to ``<log_dir>/<name>.log`` instead of this terminal."""
    procs: Running = []
    for part in parts:
        log.info("starting %s: %s %s", part.name, part.module, " ".join(part.args))
        out = None
        if log_dir is not None:
            log_dir.mkdir(parents=True, exist_ok=True)
            out = open(log_dir / f"{part.name}.log", "wb")  # noqa: SIM115 - child owns it
        procs.append((part, subprocess.Popen(part.command(), stdout=out, stderr=out)))
        if out is not None:
            out.close()
    return procs


def run(parts: Sequence[Component], runtime: float = 0.0, grace: float = 20.0) -> int:
    """Start every component; stop all when one exits, on SIGINT/SIGTERM, or after runtime.

    Returns 0 when every component exited cleanly, else the first non-zero exit code.
    """
    stopping = False

    def request_stop(signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True

    old = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    procs: Running = []
    try:
        procs = start(parts)
        deadline = time.monotonic() + runtime if runtime > 0 else float("inf")
        while not stopping and time.monotonic() < deadline:
            if any(p.poll() is not None for _, p in procs):
                break
            time.sleep(0.2)
    finally:
        code = stop_all(procs, grace)
        for s, handler in old.items():
            signal.signal(s, handler)
    return code


def stop_all(procs: Running, grace: float = 20.0) -> int:
    """SIGTERM in reverse start order (the source first, so downstream can drain what is in
    flight), SIGKILL after ``grace``; returns the first failure's exit code or 0."""
    for _part, p in reversed(procs):
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(grace)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    code = 0
    for part, p in procs:
        rc = p.returncode
        if rc not in (0, -signal.SIGTERM):
            log.error("%s exited with %s", part.name, rc)
            code = code or (rc if rc > 0 else 1)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    parser = Parser(prog="pvaflow run", description=__doc__.split("\n\n")[0])
    parser.add_argument("file", help="pipeline YAML file")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the command lines and exit")
    add_run_args(parser)
    args = parse(parser, argv)
    try:
        parts = load(args.file)
    except PipelineError as exc:
        print(f"pvaflow run: error: {exc}", file=sys.stderr)
        return 2
    if args.dry_run:
        for part in parts:
            print(f"{part.name}: {part.module} {' '.join(part.args)}")
        return 0
    return run(parts, args.runtime)


if __name__ == "__main__":
    sys.exit(main())
