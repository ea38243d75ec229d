"""One registry of commands, one vocabulary of options across all of them."""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest
import tomllib

from pvaflow.commands import COMMANDS, find
from pvaflow.errors import UsageError
from pvaflow.options import SHORT_FORMS

REPO = Path(__file__).resolve().parent.parent

# PvaPy's short forms (pvapy-hpc-consumer / pvapy-hpc-collector) and the options they name.
PVAPY = {"-ic": "--input-channel", "-oc": "--output-channel", "-sc": "--status-channel",
         "-cc": "--control-channel", "-pf": "--processor-file", "-pc": "--processor-class",
         "-pa": "--processor-args", "-nc": "--n-consumers", "-rt": "--runtime",
         "-rp": "--report-period", "-ll": "--log-level", "-sqs": "--server-queue-size",
         "-rqs": "--receiver-queue-size", "-ccs": "--collector-cache-size",
         "-du": "--distributor-updates", "-ds": "--distributor-set", "-v": "--version"}


def parsers() -> dict[str, argparse.ArgumentParser]:
    out = {}
    for c in COMMANDS:
        module = importlib.import_module(c.target.partition(":")[0])
        if not hasattr(module, "build_parser"):  # a package CLI keeps it in its cli module
            module = importlib.import_module(module.__name__ + ".cli")
        out[c.name] = module.build_parser()
    return out


def options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.option_strings]


def test_console_scripts_are_the_registry() -> None:
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    expected = {c.script: "pvaflow.cli:script" for c in COMMANDS if c.script}
    assert scripts == {"pvaflow": "pvaflow.cli:main", **expected}


def test_every_command_loads_and_aliases_resolve() -> None:
    for c in COMMANDS:
        assert callable(c.load()), c.name
    assert find("consume").name == "consumer" and find("collect").name == "collector"


def test_unknown_command_suggests_the_closest() -> None:
    with pytest.raises(UsageError) as info:
        find("colector")
    assert "did you mean collector?" in info.value.line()


def test_no_short_form_means_two_things() -> None:
    meaning: dict[str, set[str]] = defaultdict(set)
    for parser in parsers().values():
        for action in options(parser):
            longs = [s for s in action.option_strings if s.startswith("--")]
            for s in action.option_strings:
                if not s.startswith("--") and s != "-h" and longs:
                    meaning[s].add(f"{longs[0]}")
    # a component's own id is -id everywhere (as --consumer-id / --collector-id in PvaPy)
    ids = {"--consumer-id", "--collector-id", "--bridge-id", "--mirror-id"}
    clashes = {s: m for s, m in meaning.items() if len(m) > 1 and not m <= ids}
    assert not clashes


def test_pvapy_short_forms_mean_what_they_mean_in_pvapy() -> None:
    seen = 0
    for name, parser in parsers().items():
        for action in options(parser):
            for short, long in PVAPY.items():
                if long in action.option_strings:
                    seen += 1
                    assert short in action.option_strings, f"{name} {long} lacks {short}"
    assert seen > 20


def test_the_table_is_what_parsers_use() -> None:
    for name, parser in parsers().items():
        for action in options(parser):
            for s in action.option_strings:
                if s in SHORT_FORMS:
                    assert SHORT_FORMS[s] in action.option_strings, (name, s)


def test_same_option_same_metavar() -> None:
    metavar: dict[str, set[str]] = defaultdict(set)
    for parser in parsers().values():
        for action in options(parser):
            if action.metavar and action.option_strings[0].startswith("--"):
                metavar[action.option_strings[0]].add(str(action.metavar))
    assert {k: v for k, v in metavar.items() if len(v) > 1} == {}


@pytest.mark.parametrize("command", [c.name for c in COMMANDS])
def test_version_and_did_you_mean(command: str) -> None:
    r = subprocess.run([sys.executable, "-m", "pvaflow.cli", command, "--version"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "pvaflow" in r.stdout, r.stderr
    wrong = {"broker": ["status", "--bootstrp"], "status": ["--monitr", "x"],
             "control": ["all", "get_stats", "--timeot", "1"]}.get(command, ["--runtme", "1"])
    r = subprocess.run([sys.executable, "-m", "pvaflow.cli", command, *wrong],
                       capture_output=True, text=True, timeout=60)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert "(did you mean --" in lines[0], lines[0]
