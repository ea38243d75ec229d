"""The shared option vocabulary: one-line errors with a suggestion, --version, JSON logs."""

from __future__ import annotations

import json
import logging

import pytest

from pvaflow.options import JsonFormatter, Parser, add_run_args, set_log_identity


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
