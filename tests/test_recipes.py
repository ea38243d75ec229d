"""Every ``pvaflow ...`` command line in the code blocks of docs/recipes.md parses with its
command's own parser (nothing is run), so the recipes cannot drift from the options."""

from __future__ import annotations

import argparse
import importlib
import re
import shlex
from pathlib import Path

import pytest

from pvaflow.commands import find

DOC = Path(__file__).resolve().parent.parent / "docs" / "recipes.md"
FENCE = re.compile(r"^```(\w*)\s*$")


def command_lines(text: str) -> list[str]:
    """The ``pvaflow`` lines of the shell code blocks, continuation lines joined."""
    out: list[str] = []
    in_block, lang, pending = False, "", ""
    for line in text.splitlines():
        m = FENCE.match(line.strip())
        if m:
            in_block, lang, pending = not in_block, m.group(1), ""
            continue
        if not in_block or lang not in ("", "sh", "bash", "console"):
            continue
        line = pending + line.strip()
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        pending = ""
        if line.startswith("pvaflow "):
            out.append(line)
    return out


def parser_of(noun: str) -> argparse.ArgumentParser:
    module = importlib.import_module(find(noun).target.partition(":")[0])
    if not hasattr(module, "build_parser"):
        module = importlib.import_module(module.__name__ + ".cli")
    parser: argparse.ArgumentParser = module.build_parser()
    return parser


LINES = command_lines(DOC.read_text())


def test_the_recipes_have_commands() -> None:
    nouns = {shlex.split(line, comments=True)[1] for line in LINES}
    assert len(LINES) >= 30
    assert {"bridge", "consume", "collect", "mirror", "export", "replay", "runs"} <= nouns


def test_the_extractor_joins_continuations_and_drops_comments() -> None:
    text = "```sh\npvaflow consume -it a \\\n  -ot b   # out\npvget x\n```\npvaflow no\n"
    assert command_lines(text) == ["pvaflow consume -it a  -ot b   # out"]


@pytest.mark.parametrize("line", LINES)
def test_recipe_command_parses(line: str, capsys: pytest.CaptureFixture[str]) -> None:
    words = shlex.split(line, comments=True)
    parser = parser_of(words[1])
    try:
        parser.parse_args(words[2:])
    except SystemExit:
        pytest.fail(f"{line}\n{capsys.readouterr().err.strip()}")
