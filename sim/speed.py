"""The accelerator top in Verilator: how long its build takes and how fast it simulates.

``python -m moeaccel.sim.speed --config pynq-z2`` builds the top in a fresh folder (``build_s``:
the Verilator build with cocotb's start), then runs a program that streams `ROWS` rows of `ROW_BYTES` bytes into WEIGHT and
back out (a LOAD and a STORE a row, in parallel through the dependency tokens) under the top's
cocotb testbench, checked against the emulator as the regression checks it, and prints the
simulated cycles and the simulation's wall time: cycles a second with cocotbext-axi's models of
the DRAM and the host in the loop, as the regression runs. Wall-clock figures depend on the
machine: compare them only within one run.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from ..config import PRESETS, preset
from ..formats.buffers import Buffer
from ..hw.top import Accelerator
from ..isa import Opcode, Program
from .harness import BUILD_ROOT, run_cocotb

ROWS = 32
ROW_BYTES = 4096


def streaming_program(config) -> bytes:
    """Row r loads into one of two halves of WEIGHT, a NOP passes it on, a STORE writes it out; the
    load of row r + 1 waits only for the store of row r - 1 (the tokens relayed by the NOPs)."""
    program = Program(config)
    for row in range(ROWS):
        sram = (row % 2) * ROW_BYTES
        program.load(Buffer.WEIGHT, dram=row * ROW_BYTES, row_bytes=ROW_BYTES, sram=sram,
                     pop_next=row >= 2, push_next=True)
        program.add(Opcode.NOP, pop_prev=True, push_next=True, pop_next=row >= 1,
                    push_prev=1 <= row < ROWS - 1)
        program.store(Buffer.WEIGHT, dram=(ROWS + row) * ROW_BYTES, row_bytes=ROW_BYTES,
                      sram=sram, pop_prev=True, push_prev=row < ROWS - 1)
    return program.finish().encode()


def measure(config_name: str) -> dict:
    config = preset(config_name)
    window = 2 * ROWS * ROW_BYTES
    case = {"name": "streaming", "program": streaming_program(config).hex(), "window": window,
            "fill": 1}
    key = f"{config_name}_speed"
    shutil.rmtree(BUILD_ROOT / "accelerator" / key, ignore_errors=True)
    with tempfile.TemporaryDirectory() as scratch:
        report = Path(scratch) / "speed.json"
        start = time.monotonic()
        run_cocotb(Accelerator(config), toplevel="accelerator", test_module="moeaccel.sim.tb.top",
                   build_key=key, parameters={"config": config_name, "cases": [case],
                                              "pause": 0.0, "report_file": str(report)},
                   timeout_s=3600)
        total = time.monotonic() - start
        run = json.loads(report.read_text())[0]
    shutil.rmtree(BUILD_ROOT / "accelerator" / key, ignore_errors=True)
    return {"config": config_name, "cycles": run["cycles"], "sim_wall_s": round(run["wall_s"], 1),
            "cycles_per_s": round(run["cycles"] / run["wall_s"]),
            "build_s": round(total - run["wall_s"], 1), "mismatches": run["mismatches"]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m moeaccel.sim.speed",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="pynq-z2", choices=sorted(PRESETS))
    args = parser.parse_args(argv)
    result = measure(args.config)
    print(json.dumps(result))
    return 1 if result["mismatches"] else 0


if __name__ == "__main__":
    sys.exit(main())
