"""The combinational fixed-point exp and sigmoid of hw.arith against sw.numerics, and its adder
tree."""

import random

import pytest
import torch
from amaranth.hdl import Module, Signal, signed
from amaranth.sim import Simulator

from moeaccel.hw.arith import exp_fixed, sigmoid_fixed, tree_sum
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


@pytest.mark.parametrize("count", [1, 2, 3, 5, 8, 9])
def test_tree_sum_is_exact_and_balanced(count):
    """Signed 16-bit terms at their extremes and at random: the exact sum; the result widens by
    ceil(log2 n) bits, as a balanced tree does (a chain would widen by n - 1)."""
    terms = [Signal(signed(16), name=f"term{n}") for n in range(count)]
    total = tree_sum(terms)
    assert len(total) == 16 + (count - 1).bit_length()
    rng = random.Random(count)
    cases = [[-(1 << 15)] * count, [(1 << 15) - 1] * count] + [
        [rng.randrange(-(1 << 15), 1 << 15) for _ in range(count)] for _ in range(50)]
    mismatches = []

    async def sweep(ctx):
        for values in cases:
            for term, value in zip(terms, values):
                ctx.set(term, value)
            if ctx.get(total) != sum(values):
                mismatches.append(values)

    sim = Simulator(Module())
    sim.add_testbench(sweep)
    sim.run()
    assert mismatches == []


def test_tree_sum_needs_a_term():
    with pytest.raises(ValueError, match=r"^tree_sum needs at least one term$"):
        tree_sum([])
