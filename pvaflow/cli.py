"""The umbrella ``pvaflow`` command and the console scripts: both dispatch through the one
registry in :mod:`pvaflow.commands`."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from . import __version__
from .commands import COMMANDS, by_script, find
from .component import fail
from .errors import PvaflowError


def usage() -> str:
    width = max(len(c.name) for c in COMMANDS)
    lines = ["usage: pvaflow COMMAND [options]   (pvaflow COMMAND --help for its options)", "",
             "commands:"]
    for c in COMMANDS:
        alias = f" (also: {', '.join(c.aliases)})" if c.aliases else ""
        lines.append(f"  {c.name:<{width}}  {c.help}{alias}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if args[0] in ("-v", "-V", "--version"):
        print(f"pvaflow {__version__}")
        return 0
    try:
        command = find(args[0])
    except PvaflowError as exc:
        return fail("pvaflow", exc)
    return command.load()(args[1:])


def script() -> int:
    """Entry point of every console script: ``pvaflow-bridge ...`` = ``pvaflow bridge ...``."""
    name = os.path.basename(sys.argv[0])
    try:
        command = by_script(name)
    except PvaflowError as exc:
        return fail(name, exc)
    return command.load()(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
