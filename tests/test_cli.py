"""The `arx` command: each command's arguments live beside its code, and only the command run is imported."""

import importlib
import subprocess
import sys

import pytest

import arx

ROOT = arx.__file__.rsplit("/", 1)[0]


@pytest.mark.parametrize("command", sorted(arx.COMMANDS))
def test_every_command_has_its_arguments_beside_its_code(command):
    module_name, function, _ = arx.COMMANDS[command]
    module = importlib.import_module(module_name)
    assert callable(getattr(module, function))
    parser = arx.build_parser(command)
    # Its own --help names the command, and parsing its help exits cleanly (no missing arguments function).
    with pytest.raises(SystemExit) as done:
        parser.parse_args([command, "--help"])
    assert done.value.code == 0


def test_the_command_list_imports_no_role_code():
    """`arx --help` names every command without loading a role package (agents, executors, torch...)."""
    probe = ("import sys, arx\n"
             "try:\n    arx.main(['--help'])\nexcept SystemExit:\n    pass\n"
             "print(sorted(m for m in sys.modules if m.split('.')[0] in "
             "('agents', 'executors', 'evaluators', 'projections', 'torch')))")
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout
    assert all(name in done.stdout for name in arx.COMMANDS)


def test_an_unknown_arm_is_refused_from_the_registry(capsys):
    with pytest.raises(SystemExit) as done:
        arx.main(["campaign", "start", "--arm", "bogus"])
    assert done.value.code == 2
    assert "invalid choice: 'bogus'" in capsys.readouterr().err
