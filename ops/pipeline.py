"""``pvaflow run pipeline.yaml``: start a whole graph locally, one process per component.

The file mirrors the command lines rather than inventing a second vocabulary: every key of a
component maps to the option of the same name (``distributor_updates: 3`` ->
``--distributor-updates 3``; a list repeats the option, a mapping becomes JSON, ``true`` is a
bare flag). So every CLI option works in the file, and the Helm chart's values use the same
shape. The roles are the wing nouns of the command registry (``pvaflow <noun> --help``)::

    bootstrap_servers: 127.0.0.1:9092        # optional; else $PVAFLOW_BOOTSTRAP
    X: {security.protocol: SASL_SSL}         # optional: Kafka settings of every component
    monitor: {}                              # optional
    bridge:   {input_channel: [pvapy:image], topic: frames, partitions: 4}
    consumers:                               # (``stages:`` is accepted too)
      - {name: rotate, input_topic: frames, processor: rotate, n_consumers: 2,
         output_topic: rotated}
    collector: {input_topic: [rotated], output_topic: ordered, collector_cache_size: 1000,
                X: [linger.ms=5]}

``X`` (a mapping, or a list of ``key=value``), at the top level or in a component, becomes
repeated ``-X key=value``; a component's own value wins. Secret values (``sasl.password``, ...)
never appear in a log line or in ``--dry-run``.
"""

from __future__ import annotations

import argparse
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

from pvaflow.commands import find
from pvaflow.component import run_command
from pvaflow.errors import ConfigError
from pvaflow.kafka.settings import is_secret, parse_override
from pvaflow.options import Parser, add_run_args, did_you_mean, parse
from pvaflow.process import die_with_parent

log = logging.getLogger("pvaflow.run")

# Role key in the file -> the registry command it starts. Start order: sinks first, so
# nothing is produced before its readers exist.
ROLES = (
    ("monitor", "monitor"),
    ("collector", "collector"),
    ("consumers", "consumer"),
    ("mirror", "mirror"),
    ("bridge", "bridge"),
)
ALIASES = {"stages": "consumers"}
LISTS = frozenset({"consumers"})  # roles holding a list of components
X_KEY = "X"
_SHARED = ("bootstrap_servers", "control_topic", "status_topic")
# Which top-level settings each role's command accepts (the monitor only reads status).
_SHARED_BY_ROLE = {
    "monitor": ("bootstrap_servers", "status_topic"),
    "mirror": ("bootstrap_servers",),
    "collector": _SHARED, "consumers": _SHARED, "bridge": _SHARED,
}
KNOWN_KEYS = (*(role for role, _ in ROLES), *ALIASES, *_SHARED, X_KEY)


class PipelineError(ConfigError):
    """The pipeline file does not describe a runnable graph."""


@dataclass
class Component:
    name: str
    program: str  # the registry command (pvaflow.commands), e.g. "consumer"
    args: list[str]

    def command(self) -> list[str]:
        return [sys.executable, "-m", "pvaflow.cli", self.program, *self.args]

    def shown(self) -> str:
        """The command line for a log line or ``--dry-run``: secret values masked."""
        return " ".join(["pvaflow", self.program, *mask(self.args)])


def mask(args: Sequence[str]) -> list[str]:
    """``-X sasl.password=hunter2`` -> ``-X sasl.password=***``."""
    out = list(args)
    for i, arg in enumerate(out[:-1]):
        if arg == "-X":
            key, sep, _value = out[i + 1].partition("=")
            if sep and is_secret(key):
                out[i + 1] = f"{key}=***"
    return out


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


def kafka_settings(value: Any, where: str) -> dict[str, str]:
    """An ``X:`` value (``{key: value}`` or ``["key=value", ...]``) as a dict."""
    if value is None:
        return {}
    if isinstance(value, Mapping):
        return {str(k): _setting(v) for k, v in value.items()}
    if isinstance(value, list):
        out = {}
        for item in value:
            try:
                key, text = parse_override(str(item))
            except argparse.ArgumentTypeError as exc:
                raise PipelineError(f"{where}: X: {exc}") from None
            out[key] = text
        return out
    raise PipelineError(f"{where}: X: must be a mapping {{key: value}} or a list of "
                        "\"key=value\" (librdkafka settings)")


def _setting(value: Any) -> str:
    if isinstance(value, bool):  # YAML true -> librdkafka's "true"
        return "true" if value else "false"
    return str(value)


def x_args(settings: Mapping[str, str]) -> list[str]:
    return [a for key, value in settings.items() for a in ("-X", f"{key}={value}")]


def _unknown(keys: Sequence[str]) -> str:
    return "; ".join(f"unknown key {k!r}{did_you_mean(str(k), KNOWN_KEYS)}" for k in keys)


def components(spec: Mapping[str, Any]) -> list[Component]:
    """Command lines for every component of a parsed pipeline file, in start order."""
    if not isinstance(spec, Mapping):
        raise PipelineError("a pipeline file must be a mapping (bridge:, consumers:, "
                            "collector: ...)")
    unknown = [k for k in spec if k not in KNOWN_KEYS]
    if unknown:
        raise PipelineError(_unknown(unknown),
                            hint=f"known keys: {', '.join(KNOWN_KEYS)}")
    for alias, role in ALIASES.items():
        if alias in spec and role in spec:
            raise PipelineError(f"{alias}: and {role}: name the same role; use {role}: only")
    shared_x = kafka_settings(spec.get(X_KEY), "top level")
    out = []
    for role, program in ROLES:
        find(program)  # the registry knows it (a bug here, not a user mistake, otherwise)
        key = next((k for k in (role, *[a for a, r in ALIASES.items() if r == role])
                    if k in spec), role)
        entries = spec.get(key)
        if entries is None:
            continue
        if role in LISTS:
            if not isinstance(entries, list):
                raise PipelineError(f"{key}: must be a list of processor stages")
        else:
            entries = [entries]
        shared = {k: spec[k] for k in _SHARED_BY_ROLE[role] if k in spec}
        for i, entry in enumerate(entries):
            if entry is not None and not isinstance(entry, Mapping):
                raise PipelineError(f"{key}: each component must be a mapping of its options "
                                    f"(got {type(entry).__name__})")
            opts = dict(entry or {})
            name = str(opts.pop("name", role if role not in LISTS else f"stage{i + 1}"))
            own_x = kafka_settings(opts.pop(X_KEY, None), name)
            if role in LISTS:
                opts.setdefault("group", name)
            opts = {**{k: v for k, v in shared.items() if k not in opts}, **opts}
            args = to_args(opts) + x_args({**shared_x, **own_x})
            out.append(Component(name, program, args))
    if not out:
        raise PipelineError("the pipeline file names no component")
    return out


def load(path: str | Path, log_format: str = "text") -> list[Component]:
    """The components of a pipeline file; ``log_format`` (``pvaflow run --log-format``) is
    every component's unless the file sets its own."""
    try:
        spec = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise PipelineError(f"cannot read {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise PipelineError(f"{path} is not valid YAML: {exc}") from exc
    return components(with_log_format(spec, log_format))


def with_log_format(spec: Any, log_format: str) -> Any:
    """``spec`` with ``log_format`` set on every component that does not set its own
    (``text``, the components' default, leaves it as it is)."""
    if log_format == "text" or not isinstance(spec, Mapping):
        return spec
    out = dict(spec)
    for role, _program in ROLES:
        for key in (role, *[a for a, r in ALIASES.items() if r == role]):
            entries = out.get(key)
            if isinstance(entries, list):
                out[key] = [{"log_format": log_format, **e} if isinstance(e, Mapping) else e
                            for e in entries]
            elif isinstance(entries, Mapping):  # None: the role is not there
                out[key] = {"log_format": log_format, **entries}
    return out


Running = list[tuple[Component, "subprocess.Popen[bytes]"]]


def start(parts: Sequence[Component], log_dir: Path | None = None) -> Running:
    """Start every component (in the given order) as a child process; with ``log_dir`` each
    one's output goes to ``<log_dir>/<name>.log`` instead of this terminal."""
    procs: Running = []
    for part in parts:
        log.info("starting %s: %s", part.name, part.shown())
        out = None
        if log_dir is not None:
            log_dir.mkdir(parents=True, exist_ok=True)
            out = open(log_dir / f"{part.name}.log", "wb")  # noqa: SIM115 - child owns it
        # Own process group: Ctrl-C reaches only this parent, which stops the children one
        # by one in its order (a child that got the terminal's signal too would take this
        # parent's SIGTERM for a second one and skip its clean stop).
        procs.append((part, subprocess.Popen(part.command(), stdout=out, stderr=out,
                                             preexec_fn=die_with_parent, process_group=0)))
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


def build_parser() -> Parser:
    parser = Parser(prog="pvaflow run", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("file", help="pipeline YAML file")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the command lines (secrets masked) and exit")
    add_run_args(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(build_parser(), argv)

    def body() -> int:
        parts = load(args.file, args.log_format)
        if args.dry_run:
            for part in parts:
                print(f"{part.name}: {part.shown()}")
            return 0
        return run(parts, args.runtime)

    return run_command("pvaflow run", body)


if __name__ == "__main__":
    sys.exit(main())
