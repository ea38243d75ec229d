"""The shared option vocabulary: one-line errors with a suggestion, --version, JSON logs,
--commit-interval following --latency."""

from __future__ import annotations

import json
import logging

import pytest
from pvaflow.collectors.cli import build_parser as collector_parser
from pvaflow.processors.cli import build_parser as consumer_parser

from pvaflow.options import (
    COMMIT_INTERVAL,
    LATENCY_COMMIT_INTERVAL,
    JsonFormatter,
    Parser,
    add_run_args,
    commit_interval,
    set_log_identity,
)


def test_unknown_option_suggests_the_closest(capsys: pytest.CaptureFixture[str]) -> None:
    parser = Parser(prog="pvaflow-x")
    add_run_args(parser)
    with pytest.raises(SystemExit) as info:
        parser.parse_args(["--report-perod", "2"])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("pvaflow-x: error: unrecognized arguments: --report-perod")
    assert "(did you mean --report-period?)" in err and "\n" not in err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        Parser(prog="pvaflow-x").parse_args(["-v"])
    assert info.value.code == 0
    assert capsys.readouterr().out.startswith("pvaflow-x (pvaflow) ")


def test_json_log_lines_carry_who_and_the_frame() -> None:
    set_log_identity("consumer", "rotate", "2")
    record = logging.LogRecord("pvaflow.x", logging.WARNING, __file__, 1, "frame %d late",
                               (7,), None)
    record.unique_id = 7
    out = json.loads(JsonFormatter().format(record))
    assert out["level"] == "warning" and out["message"] == "frame 7 late"
    assert (out["component"], out["group"], out["id"], out["unique_id"]) == (
        "consumer", "rotate", "2", 7)
    assert out["time"].endswith("Z")


@pytest.mark.parametrize(("argv", "message"), [
    (["--brokers", "12"], "argument --brokers: must be 1 to 9, got 12"),
    (["--port", "x"], "argument --port: expected a whole number, got 'x'"),
    (["--port", "70000"], "argument --port: must be 0 to 65535, got 70000"),
    (["--timeout", "0"], "argument --timeout: must be above 0, got 0"),
    (["--timeout", "soon"], "argument --timeout: expected a number, got 'soon'"),
])
def test_range_types_are_one_line_naming_the_bound(
        argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    """The broker launcher's options use the shared range types, so its errors read like
    every other command's."""
    from pvaflow.ops.broker.cli import main

    with pytest.raises(SystemExit) as info:
        main(["run", *argv])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


@pytest.mark.parametrize("command", ["consumer", "collector"])
def test_commit_interval_follows_latency_unless_given(command: str) -> None:
    """A read_committed reader waits for the transaction holding each frame: --latency
    shortens the interval, an explicit --commit-interval wins over the profile."""
    build = {"consumer": consumer_parser, "collector": collector_parser}[command]

    def interval(*argv: str) -> float:
        return commit_interval(build().parse_args(["-it", "frames", *argv]))
    assert interval() == COMMIT_INTERVAL == 0.2
    assert interval("--latency") == LATENCY_COMMIT_INTERVAL < COMMIT_INTERVAL
    assert interval("--latency", "--commit-interval", "1") == 1.0
    assert interval("--commit-interval", "0") == 0.0
