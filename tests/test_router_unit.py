"""Fast check of the router in Amaranth's simulator against sw.router.QuantizedRouter.route."""

import random

import pytest
import torch
from amaranth.sim import Simulator

from moeaccel.config import preset
from moeaccel.formats.router import RouterMode, bias_write, router_command
from moeaccel.hw.router import Router
from moeaccel.sw.router import QuantizedRouter, dispatch_table
from moeaccel.sw.reference import MoESpec


async def accepted(ctx, port, limit=10_000):
    """Tick until `port` takes its payload; fail rather than hang if it never does."""
    for _ in range(limit):
        if ctx.get(port.ready):
            await ctx.tick()
            return
        await ctx.tick()
    raise AssertionError("the router stopped taking input")


def reference(spec, logits, bias):
    router = QuantizedRouter(spec, logits=None, score_bias=bias)
    return router.route(logits)


def simulate(config, spec, logits, bias, gemm=None):
    """Route in the RTL; `gemm` (a QuantizedLinear and int8 tokens) makes the router compute the
    logits itself instead of receiving `logits`."""
    dut = Router(config)
    tokens, experts = logits.shape
    group_size = experts // spec.n_groups
    lanes = config.router_lanes
    chunks = -(-gemm[1].shape[1] // lanes) if gemm else 0
    command = router_command(config).const({
        "tokens": tokens, "experts": experts, "k": spec.k, "mode": RouterMode.named(spec.router),
        "groups": spec.n_groups, "group_size": group_size if spec.n_groups > 1 else 0,
        "topk_groups": spec.topk_groups, "compute": gemm is not None, "chunks": chunks})

    def words(row):
        row = row.tolist() + [0] * (chunks * lanes - len(row))
        return [row[c * lanes:(c + 1) * lanes] for c in range(chunks)]
    table, counts = {}, []

    async def drive(ctx):
        if bias is not None:
            for expert, value in enumerate(bias.tolist()):
                ctx.set(dut.bias_write.valid, 1)
                ctx.set(dut.bias_write.payload, {"expert": expert, "bias": value})
                await ctx.tick()
            ctx.set(dut.bias_write.valid, 0)
        if gemm is not None:
            layer, x_q = gemm
            for expert in range(experts):
                for chunk, word in enumerate(words(layer.weight[expert])):
                    ctx.set(dut.weights_write.valid, 1)
                    ctx.set(dut.weights_write.payload, {
                        "expert": expert, "chunk": chunk, "data": word,
                        "multiplier": int(layer.multiplier[expert]),
                        "shift": int(layer.shift[expert])})
                    await ctx.tick()
            ctx.set(dut.weights_write.valid, 0)
        ctx.set(dut.cmd.valid, 1)
        ctx.set(dut.cmd.payload, command)
        await ctx.tick()
        ctx.set(dut.cmd.valid, 0)
        assert not ctx.get(dut.error)
        for token in range(tokens):
            if gemm is not None:
                for word in words(gemm[1][token]):
                    ctx.set(dut.tokens.valid, 1)
                    ctx.set(dut.tokens.payload, {"data": word})
                    await accepted(ctx, dut.tokens)
                ctx.set(dut.tokens.valid, 0)
                continue
            for expert in range(experts):
                ctx.set(dut.logits.valid, 1)
                ctx.set(dut.logits.payload, {"value": int(logits[token, expert])})
                await accepted(ctx, dut.logits)
            ctx.set(dut.logits.valid, 0)
        for _ in range(100_000):               # bounded: a router that never finishes fails
            if not ctx.get(dut.busy):
                break
            await ctx.tick()
        else:
            raise AssertionError("the router never finished")
        for expert in range(experts):
            ctx.set(dut.count_read.addr, expert)
            ctx.set(dut.count_read.en, 1)
            await ctx.tick()
            count = ctx.get(dut.count_read.data)
            counts.append(count)
            for slot in range(count):
                ctx.set(dut.table_read.addr, expert * config.dispatch_capacity + slot)
                ctx.set(dut.table_read.en, 1)
                await ctx.tick()
                entry = ctx.get(dut.table_read.data)
                table[(expert, slot)] = (entry.token, entry.gate)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(drive)
    sim.run()
    return counts, table


CASES = [
    MoESpec(8, 8, 8, 2, router="softmax_topk_renorm"),
    MoESpec(8, 8, 6, 3, router="softmax_topk"),
    MoESpec(8, 8, 5, 1, router="top1"),
    MoESpec(8, 8, 8, 3, router="sigmoid_bias"),
    MoESpec(8, 8, 16, 4, router="sigmoid_bias", n_groups=4, topk_groups=2),
    MoESpec(8, 8, 4, 4, router="softmax_topk"),                       # k = E
]


@pytest.mark.parametrize("spec", CASES, ids=lambda spec: f"{spec.router}-E{spec.n_experts}-k{spec.k}")
def test_router_matches_reference(spec):
    config = preset("tiny")
    generator = torch.Generator().manual_seed(spec.n_experts * 7 + spec.k)
    tokens = 6
    logits = torch.randint(-900, 900, (tokens, spec.n_experts), generator=generator)
    logits[1] = 100                                     # every expert tied
    logits[2, :] = logits[2, 0]                         # the same, another value
    bias = torch.randint(-3000, 3000, (spec.n_experts,), generator=generator) \
        if spec.router == "sigmoid_bias" else None
    routing = reference(spec, logits, bias)
    counts, table = simulate(config, spec, logits, bias)
    expected = dispatch_table(routing, spec.n_experts)
    assert counts == [int(tokens_.numel()) for tokens_, _ in expected]
    for expert, (tokens_, gates) in enumerate(expected):
        for slot, (token, gate) in enumerate(zip(tokens_.tolist(), gates.tolist())):
            assert table[(expert, slot)] == (token, gate), (expert, slot)


@pytest.mark.parametrize("spec", [CASES[0], CASES[4]], ids=["renorm", "grouped-sigmoid"])
def test_router_computes_its_logits(spec):
    """The router's own GEMM: int8 tokens times int8 router weights, requantised to Q8."""
    from moeaccel.sw.quantized import QuantizedLinear
    config = preset("tiny")
    generator = torch.Generator().manual_seed(5)
    d_model, tokens = 20, 5                                 # not a multiple of the lanes
    weight = torch.randn(spec.n_experts, d_model, generator=generator)
    layer = QuantizedLinear.from_float(weight, None, 0.03, 2.0 ** -8)
    x_q = torch.randint(-128, 128, (tokens, d_model), generator=generator)
    logits = nx_logits(layer, x_q)
    bias = torch.randint(-3000, 3000, (spec.n_experts,), generator=generator) \
        if spec.router == "sigmoid_bias" else None
    routing = reference(spec, logits, bias)
    counts, table = simulate(config, spec, logits, bias, gemm=(layer, x_q))
    expected = dispatch_table(routing, spec.n_experts)
    assert counts == [int(tokens_.numel()) for tokens_, _ in expected]
    for expert, (tokens_, gates) in enumerate(expected):
        for slot, (token, gate) in enumerate(zip(tokens_.tolist(), gates.tolist())):
            assert table[(expert, slot)] == (token, gate), (expert, slot)


def nx_logits(layer, x_q):
    """What `QuantizedRouter.logits_q8` computes."""
    from moeaccel.sw import numerics as nx
    return nx.requantize(layer.accumulate(x_q), layer.multiplier, layer.shift, bits=16)
