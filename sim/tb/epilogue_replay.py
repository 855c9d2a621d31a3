"""cocotb module that replays given rows through the epilogue at full speed, checks every output
against the golden model and writes what it measured (rows, errors, cycles) to a JSON file.

Parameters: ``lanes``, ``rows_file`` (JSON: ``{"table": [256 ints], "rows": [epilogue_in rows]}``)
and ``report_file``.
"""

import json
import random

import cocotb
from cocotb.simtime import get_sim_time

from ..harness import tb_params
from .epilogue import CLOCK_NS, TB


@cocotb.test()
async def replay_rows(dut):
    """Every replayed row leaves bit-exact; the cycles from first input to last output are logged."""
    params = tb_params()
    with open(params["rows_file"]) as file:
        job = json.load(file)
    tb = TB(dut, params["lanes"], 0, random.Random(cocotb.RANDOM_SEED), idle=0.0, backpressure=0.0)
    await tb.start()
    await tb.load_table(job["table"])
    start = get_sim_time("ns")
    await tb.send(job["rows"])
    await tb.drain()
    cycles = round((get_sim_time("ns") - start) / CLOCK_NS)
    with open(params["report_file"], "w") as file:
        json.dump({"rows": tb.checked, "errors": tb.errors, "cycles": cycles}, file)
    assert tb.checked == len(job["rows"]), f"{tb.checked} of {len(job['rows'])} rows came out"
    assert tb.errors == 0, f"{tb.errors} of {tb.checked} rows differ from the golden model"
