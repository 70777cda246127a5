"""The console script: every subcommand has --help, and dispatching imports nothing heavy."""

import subprocess
import sys

import pytest

from bertforge.cli import COMMAND_MODULES


@pytest.mark.parametrize("command", list(COMMAND_MODULES))
def test_every_subcommand_has_help(command):
    result = subprocess.run([sys.executable, "-m", "bertforge.cli", command, "--help"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "usage: bertforge " + command in result.stdout


def test_top_level_help_lists_all_commands():
    result = subprocess.run([sys.executable, "-m", "bertforge.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    for command in COMMAND_MODULES:
        assert command in result.stdout


def test_building_the_parser_imports_no_heavy_library():
    code = ("import sys; from bertforge.cli import build_parser; build_parser(); "
            "print(sorted(m for m in ('torch', 'transformers', 'onnxruntime', 'optimum', 'datasets') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_config_errors_exit_2_with_a_message(tmp_path):
    result = subprocess.run([sys.executable, "-m", "bertforge.cli", "train", "--config", str(tmp_path / "none.toml")],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "config file not found" in result.stderr


def test_python_dash_m_bertforge_runs_the_dispatcher():
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "bertforge", "--version"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.startswith("bertforge ")


def test_a_bug_keeps_its_traceback_while_user_errors_do_not(monkeypatch, capsys):
    import pytest

    from bertforge import cli
    from bertforge.errors import UserError

    parser = cli.build_parser()

    def fail_with(error):
        def run(args):
            raise error
        return run

    args = parser.parse_args(["client", "embed", "x"])
    monkeypatch.setattr(cli, "build_parser", lambda: type("P", (), {"parse_args": lambda self, argv: args})())
    args.run = fail_with(UserError("bad flag"))
    assert cli.main([]) == 2 and "error: bad flag" in capsys.readouterr().err
    args.run = fail_with(TypeError("a bug"))
    with pytest.raises(TypeError, match="a bug"):
        cli.main([])
