"""The CLI's manners: --version, an example under every command's --help, -v where Ray starts."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from cluster.cli import _CONSOLE_COMMANDS, build_parser

ROOT = Path(__file__).resolve().parents[2]


def test_version():
    r = subprocess.run([sys.executable, "-m", "cluster.cli", "--version"], cwd=ROOT, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == f"zerotune {version('zerotune')}"


@pytest.mark.parametrize("command", sorted(build_parser()._subparsers._group_actions[0].choices))
def test_every_command_help_has_an_example(command, capsys):
    with pytest.raises(SystemExit) as done:
        build_parser().parse_args([command, "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert f"example:\n  zerotune {command}" in text
    assert ("-v, --verbose" in text) == (command in _CONSOLE_COMMANDS)
