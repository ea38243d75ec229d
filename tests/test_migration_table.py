"""Every option named in the PvaPy option tables of docs/migration.md exists on the pvaflow
command the table names (parsers built from the :mod:`pvaflow.commands` registry)."""

from __future__ import annotations

import argparse
import importlib
import re
from pathlib import Path

import pytest

from pvaflow.commands import COMMANDS

DOC = Path(__file__).resolve().parent.parent / "docs" / "migration.md"
TABLES = {"## `pvapy-hpc-consumer` options": "consumer",
          "## `pvapy-hpc-collector` options": "collector"}
NOUNS = ("bridge", "mirror", "consumer", "collector")


def option_strings(name: str) -> set[str]:
    [cmd] = [c for c in COMMANDS if c.name == name]
    module = importlib.import_module(cmd.target.partition(":")[0])
    if not hasattr(module, "build_parser"):
        module = importlib.import_module(module.__name__ + ".cli")
    parser: argparse.ArgumentParser = module.build_parser()
    return {o for a in parser._actions for o in a.option_strings}


def options_in(cell: str) -> list[str]:
    """``-ao/--accumulate-objects`` -> both spellings, for every backticked option."""
    out = []
    for code in re.findall(r"`([^`]*)`", cell):
        token = code.split()[0] if code.split() else ""
        if token.startswith("-"):
            out += token.split("/")
    return out


def rows() -> list[tuple[str, str, str, str]]:
    """(default command, PvaPy cell, pvaflow cell, notes) of every table row."""
    out, default = [], None
    for line in DOC.read_text().splitlines():
        if line.startswith("## "):
            default = TABLES.get(line.strip())
            continue
        if default is None or not line.startswith("|") or line.startswith("|---"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or cells[0] == "PvaPy option":
            continue
        out.append((default, *cells))
    return out


def claims(default: str, pvapy: str, pvaflow: str) -> list[tuple[str, str]]:
    """(command, option) pairs the pvaflow cell claims: an option belongs to the last
    command noun written before it, else to the table's command; "same" claims the PvaPy
    cell's options on the table's command."""
    out: list[tuple[str, str]] = []
    if pvaflow.startswith("same"):
        out += [(default, o) for o in options_in(pvapy)]
        pvaflow = pvaflow[len("same"):]
    command = default
    for piece in re.split(r"(`[^`]*`)", pvaflow):
        if piece.startswith("`"):
            out += [(command, o) for o in options_in(piece)]
        else:
            nouns = [w for w in re.findall(r"[a-z]+", piece) if w in NOUNS]
            if nouns:
                command = nouns[-1]
    return out


ROWS = rows()


def test_the_tables_were_found() -> None:
    assert {r[0] for r in ROWS} == set(TABLES.values())
    assert len(ROWS) > 30


def test_no_row_is_a_promise() -> None:
    for _default, pvapy, pvaflow, notes in ROWS:
        assert "not yet" not in f"{pvaflow} {notes}".lower(), pvapy
        if pvaflow == "—":
            assert notes, f"{pvapy}: a PvaPy option pvaflow does not have needs the reason"


@pytest.mark.parametrize("row", ROWS, ids=[r[1][:40] for r in ROWS])
def test_every_named_option_exists(row: tuple[str, str, str, str]) -> None:
    default, pvapy, pvaflow, _notes = row
    for command, option in claims(default, pvapy, pvaflow):
        assert option in option_strings(command), f"{command} has no {option} ({pvapy})"
