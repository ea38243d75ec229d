"""The one registry of pvaflow's commands: the umbrella ``pvaflow`` command, the console
scripts (``pvaflow-bridge``, ...) and ``pvaflow run`` all read it.

Targets are ``module:function`` strings, imported only when their command runs: the core names
its wings here without importing them (dependencies point one way).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .errors import UsageError
from .options import did_you_mean

Main = Callable[[Sequence[str] | None], int]


@dataclass(frozen=True)
class Command:
    name: str
    target: str  # "module:function", the function takes argv and returns the exit code
    help: str
    aliases: tuple[str, ...] = ()
    script: str | None = None  # console script name, if it has one

    def load(self) -> Main:
        module, _, function = self.target.partition(":")
        main: Main = getattr(importlib.import_module(module), function or "main")
        return main


COMMANDS: tuple[Command, ...] = (
    Command("broker", "pvaflow.ops.broker.cli:main",
            "run a local Kafka broker, or a 3-broker cluster (KRaft), from Maven Central jars",
            script="pvaflow-broker"),
    Command("bridge", "pvaflow.bridge.cli:main", "PVA NTNDArray channels -> Kafka topics",
            script="pvaflow-bridge"),
    Command("mirror", "pvaflow.bridge.mirror_cli:main",
            "serve a Kafka topic as a PVA NTNDArray channel", script="pvaflow-mirror"),
    Command("consumer", "pvaflow.processors.cli:main",
            "run a processor plugin in a consumer group (PvaPy's pvapy-hpc-consumer)",
            aliases=("consume",), script="pvaflow-consumer"),
    Command("collector", "pvaflow.collectors.cli:main",
            "gather processed frames, reorder by uniqueId (PvaPy's pvapy-hpc-collector)",
            aliases=("collect",), script="pvaflow-collector"),
    Command("monitor", "pvaflow.ops.monitor:main", "pipeline-wide status service (faust)",
            script="pvaflow-monitor"),
    Command("status", "pvaflow.ops.status_cli:main", "print the pipeline-wide status"),
    Command("control", "pvaflow.ops.control_cli:main", "send a control command to components"),
    Command("runs", "pvaflow.ops.runs:main",
            "list the runs a topic holds: times, frames, uniqueIds, source restarts"),
    Command("export", "pvaflow.ops.export:main",
            "a window of a topic to HDF5 (NeXus), NPY, TIFF or CSV"),
    Command("replay", "pvaflow.ops.replay:main",
            "frames from HDF5/NPY/TIFF files back into a topic"),
    Command("run", "pvaflow.ops.pipeline:main", "start a whole pipeline from a YAML file"),
    Command("demo", "pvaflow.ops.demo:main",
            "local broker + PVA simulator through the whole pipeline"),
)


def names() -> list[str]:
    return [c.name for c in COMMANDS]


def find(name: str) -> Command:
    """The command called ``name`` or one of its aliases."""
    for c in COMMANDS:
        if name == c.name or name in c.aliases:
            return c
    raise UsageError(f"unknown command {name!r}{did_you_mean(name, names())}",
                     hint=f"one of: {', '.join(names())}")


def by_script(script: str) -> Command:
    for c in COMMANDS:
        if c.script == script:
            return c
    raise UsageError(f"no pvaflow command is installed as {script!r}")
