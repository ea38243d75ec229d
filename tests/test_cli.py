import subprocess
import sys

from pvaflow.cli import COMMANDS, main


def test_help_lists_every_command(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert name in out


def test_unknown_command_is_one_line_and_nonzero(capsys):
    assert main(["brdige"]) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown command 'brdige'" in err and "\n" not in err


def test_every_command_module_has_main():
    for name, (module, _) in COMMANDS.items():
        code = f"import {module} as m; assert callable(m.main), {name!r}"
        subprocess.run([sys.executable, "-c", code], check=True)
