"""The layering of docs/formats.md: `sw/`, `host/`, `compiler/`, the ISA, the formats and the
performance model never import the RTL, and the formats and the performance model import no torch."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BELOW_HW = ["sw", "host", "compiler", "moeaccel/isa.py", "moeaccel/formats", "moeaccel/cycles.py"]
IMPORTS_HW = re.compile(r"from \.+hw\b|moeaccel\.hw\b|from \.+ import .*\bhw\b|"
                        r"from moeaccel import .*\bhw\b|import moeaccel\.hw")


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


def _loaded(modules: list[str], prefixes: tuple[str, ...]) -> str:
    """The modules under `prefixes` that importing `modules` loads, in a fresh interpreter."""
    code = (f"import sys, importlib; [importlib.import_module(m) for m in {modules!r}]; "
            f"print(sorted(m for m in sys.modules if m.startswith({prefixes!r})))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    return result.stdout.strip()


def test_the_formats_and_the_cycle_model_import_no_torch():
    assert _loaded(["moeaccel.formats", "moeaccel.cycles", "moeaccel.isa"],
                   ("torch", "moeaccel.hw", "moeaccel.sw")) == "[]"


def test_the_golden_model_the_emulator_and_the_compiler_load_no_rtl():
    modules = [f"moeaccel.{part.replace('/', '.')}.{path.stem}" for part in ("sw", "host", "compiler")
               for path in sorted((ROOT / part).glob("*.py")) if path.stem != "__init__"]
    assert len(modules) > 15
    assert _loaded(modules, ("moeaccel.hw",)) == "[]"
