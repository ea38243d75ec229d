"""The umbrella ``pvaflow`` command: dispatches by name to each component's own CLI."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

# name -> (module, help); modules are imported only when their command runs.
COMMANDS: dict[str, tuple[str, str]] = {
    "broker": ("pvaflow.ops.broker", "run a local single-node Kafka broker (KRaft)"),
    "bridge": ("pvaflow.bridge.cli", "PVA NTNDArray channels -> Kafka topics"),
    "mirror": ("pvaflow.bridge.mirror_cli", "serve a Kafka topic as a PVA NTNDArray channel"),
    "consume": ("pvaflow.processors.cli", "run a processor plugin in a consumer group"),
    "collect": ("pvaflow.collectors.cli", "gather processed frames, reorder by uniqueId"),
    "monitor": ("pvaflow.ops.monitor", "pipeline-wide status service (faust)"),
    "status": ("pvaflow.ops.status_cli", "print the pipeline-wide status"),
    "control": ("pvaflow.ops.control_cli", "send a control command to components"),
    "run": ("pvaflow.ops.pipeline", "start a whole pipeline from a YAML file"),
    "demo": ("pvaflow.ops.demo", "demo: local broker + PVA simulator through the pipeline"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: pvaflow COMMAND [options]   (pvaflow COMMAND --help for its options)", "",
             "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if args[0] in ("-V", "--version"):
        from . import __version__

        print(f"pvaflow {__version__}")
        return 0
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"pvaflow: unknown command {name!r}; one of: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    result: int = module.main(rest)
    return result


if __name__ == "__main__":
    sys.exit(main())
