"""The figures the docs quote, in one file: ``docs/figures.json``. ``cycles`` holds one entry per
RTL measurement (`moeaccel bench figures` re-measures them), ``resources`` one per synthesis
(`python -m moeaccel.boards.estimate --record`). Tests check the docs' tables and prose against it.
"""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["FIGURES_FILE", "load_figures", "write_figures", "figure"]

FIGURES_FILE = Path(__file__).resolve().parents[1] / "docs" / "figures.json"


def load_figures(path: Path = FIGURES_FILE) -> dict:
    """The record: ``about``, ``cycles`` (bench entries), ``resources`` (synthesis entries)."""
    return json.loads(Path(path).read_text())


def write_figures(figures: dict, path: Path = FIGURES_FILE) -> None:
    """Write `figures` back, one entry a line, so that a changed figure is a one-line diff."""
    parts = []
    for key, value in figures.items():
        if isinstance(value, list):
            body = ",\n".join(f"  {json.dumps(entry)}" for entry in value)
            parts.append(f" {json.dumps(key)}: [\n{body}\n ]")
        else:
            parts.append(f" {json.dumps(key)}: {json.dumps(value)}")
    Path(path).write_text("{\n" + ",\n".join(parts) + "\n}\n")


def figure(name: str, path: Path = FIGURES_FILE) -> dict:
    """The ``cycles`` entry called `name`."""
    entries = {entry["name"]: entry for entry in load_figures(path)["cycles"]}
    if name not in entries:
        raise KeyError(f"no figure named {name!r} in {path}")
    return entries[name]
