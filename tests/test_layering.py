"""The layering of docs/formats.md: `sw/`, `host/`, `compiler/`, the ISA, the formats and the
performance model never import the RTL, and the formats and the performance model import no torch."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BELOW_HW = ["sw", "host", "compiler", "moeaccel/isa.py", "moeaccel/formats", "moeaccel/cycles.py"]
IMPORTS_HW = re.compile(r"from \.\.?hw|moeaccel\.hw|from \.\.\.hw")


def _sources(part: str) -> list[Path]:
    path = ROOT / part
    return [path] if path.is_file() else sorted(path.rglob("*.py"))


@pytest.mark.parametrize("part", BELOW_HW)
def test_nothing_below_the_rtl_imports_it(part):
    found = [f"{source.relative_to(ROOT)}:{number}: {line.strip()}"
             for source in _sources(part)
             for number, line in enumerate(source.read_text().splitlines(), 1)
             if IMPORTS_HW.search(line)]
    assert not found, "\n".join(found)


def test_the_formats_and_the_cycle_model_import_no_torch():
    code = ("import sys, moeaccel.formats, moeaccel.cycles, moeaccel.isa; "
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('moeaccel.hw') "
            "or m.startswith('moeaccel.sw')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "[]", result.stdout
