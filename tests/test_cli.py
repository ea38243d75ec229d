from pvaflow.cli import main
from pvaflow.commands import COMMANDS


def test_help_lists_every_command(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    for c in COMMANDS:
        assert f"  {c.name} " in out
        for alias in c.aliases:
            assert alias in out


def test_unknown_command_is_one_line_and_nonzero(capsys):
    assert main(["brdige"]) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown command 'brdige'" in err and "did you mean bridge?" in err
    assert "\n" not in err
