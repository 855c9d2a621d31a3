"""The combinational fixed-point exp and sigmoid of hw.arith against sw.numerics."""

import torch
from amaranth.hdl import Module, Signal, signed
from amaranth.sim import Simulator

from moeaccel.hw.arith import exp_fixed, sigmoid_fixed
from moeaccel.sw import numerics as nx


def test_exp_and_sigmoid_match_the_golden_model():
    m = Module()
    d, logit = Signal(signed(17)), Signal(signed(16))
    exp_out, sigmoid_out = Signal(17), Signal(17)
    m.d.comb += [exp_out.eq(exp_fixed(d)), sigmoid_out.eq(sigmoid_fixed(logit))]
    mismatches = []

    async def sweep(ctx):
        for value in list(range(-6000, 1, 7)) + [-(1 << 15), -(1 << 16)]:
            ctx.set(d, value)
            if ctx.get(exp_out) != int(nx.exp_fixed(torch.tensor(value))):
                mismatches.append(("exp", value))
        for value in list(range(-(1 << 15), 1 << 15, 37)) + [(1 << 15) - 1, -2049, 2047, 2048]:
            ctx.set(logit, value)
            if ctx.get(sigmoid_out) != int(nx.sigmoid_fixed(torch.tensor(value))):
                mismatches.append(("sigmoid", value))

    sim = Simulator(m)
    sim.add_testbench(sweep)
    sim.run()
    assert mismatches == []
