"""The moeaccel command line."""

import json
import subprocess
import sys

import pytest

from moeaccel.cli import PLANNED, main


def test_config_lists_presets(capsys):
    assert main(["config"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("tiny: 4x8 MAC array (32 int8 MACs")
    assert "zcu104: 32x32 MAC array (1024 int8 MACs" in out


def test_config_json(capsys):
    assert main(["config", "pynq-z2", "--json"]) == 0
    fields = json.loads(capsys.readouterr().out)["pynq-z2"]
    assert fields["mac_units"] == 128 and fields["sparsity"] == ["1:4", "2:4", "4:8"]


def test_unknown_preset_is_one_clear_line(capsys):
    assert main(["config", "zcu102"]) == 2
    assert capsys.readouterr().err == ("moeaccel config: no preset named 'zcu102'; presets are: "
                                       "kv260, pynq-z2, tiny, zcu104\n")


@pytest.mark.parametrize("name", PLANNED)
def test_planned_subcommands_say_they_are_not_there(name, capsys):
    assert main([name, "whatever"]) == 2
    assert capsys.readouterr().err.startswith(f"moeaccel {name}: ")


def test_python_dash_m():
    result = subprocess.run([sys.executable, "-m", "moeaccel", "config", "tiny"],
                            capture_output=True, text=True, check=True)
    assert result.stdout.startswith("tiny: ")
