"""cocotb smoke test for the harness: a registered 8-bit adder (a, b -> sum one cycle later)."""

import random

import cocotb
from cocotb.triggers import ReadOnly, RisingEdge

from ..harness import StallGenerator, reset, start_clock, tb_params


@cocotb.test()
async def registered_sum(dut):
    """Drive random operands, holding them on random cycles, and check sum one cycle later."""
    params = tb_params()
    bias = params.get("bias", 0)  # non-zero makes the check expect a wrong value
    rng = random.Random(cocotb.RANDOM_SEED)
    hold = StallGenerator(rng, params.get("hold_probability", 0.25))
    await start_clock(dut)
    dut.a.value = 0
    dut.b.value = 0
    await reset(dut)
    expected = None  # sum the adder captures at the next rising edge
    for _ in range(params.get("cycles", 300)):
        await RisingEdge(dut.clk)
        if not next(hold):
            dut.a.value = rng.randrange(256)
            dut.b.value = rng.randrange(256)
        await ReadOnly()
        if expected is not None:
            got = int(dut.sum.value)
            assert got == expected, f"sum {got} != expected {expected}"
        expected = int(dut.a.value) + int(dut.b.value) + bias
