"""Fast check of the attention unit in Amaranth's simulator against sw.attention.attention_fixed (the
cocotb regression in tests/test_attention.py is the record)."""

import random

import pytest
import torch
from amaranth.sim import Simulator

from moeaccel.config import preset
from moeaccel.formats.attention import command_fields
from moeaccel.hw.attention import Attention
from moeaccel.formats.attention import attention_command
from moeaccel.sw.attention import (AttentionParams, AttentionShape, as_words, attention_fixed,
                                   random_inputs, stream_words)


def command(config, shape: AttentionShape, params: AttentionParams):
    return attention_command(config).const(command_fields(config, shape, params))


def simulate(config, shape, params, q, k, v, idle=0.0, backpressure=0.0, seed=0, limit=200_000):
    """Run one call; returns the output words (lists of int8) and whether `error` rose."""
    dut = Attention(config)
    word = config.axi_data_bytes
    words = list(stream_words(q, k, v, shape, config.attention_group, word))
    expected_words = shape.seq_q * shape.heads * shape.head_words(word)
    rng = random.Random(seed)
    received, finished = [], []

    async def drive(ctx):
        ctx.set(dut.cmd.valid, 1)
        ctx.set(dut.cmd.payload, command(config, shape, params))
        await ctx.tick()
        ctx.set(dut.cmd.valid, 0)
        for payload in words:
            while rng.random() < idle:
                ctx.set(dut.data.valid, 0)
                await ctx.tick()
            ctx.set(dut.data.valid, 1)
            ctx.set(dut.data.payload, {"data": payload})
            for _ in range(limit):
                _, _, ready = await ctx.tick().sample(dut.data.ready)
                if ready:
                    break
            else:
                raise AssertionError("the attention unit stopped taking words")
        ctx.set(dut.data.valid, 0)

    async def receive(ctx):
        for _ in range(limit):
            ready = rng.random() >= backpressure
            ctx.set(dut.out.ready, ready)
            _, _, valid, payload, busy = await ctx.tick().sample(dut.out.valid, dut.out.payload,
                                                                dut.busy)
            if valid and ready:
                received.append([int(x) for x in payload.data])
            if len(received) == expected_words and not busy:
                finished.append(True)
                return

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(drive)
    sim.add_testbench(receive)
    sim.run()
    assert finished, f"the call did not finish: {len(received)} of {expected_words} words"
    return received


def random_case(shape, seed, amplitude=60):
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(-amplitude, amplitude + 1, (shape.seq_q, shape.heads, shape.head_dim), generator=g)
    k = torch.randint(-amplitude, amplitude + 1, (shape.seq_kv, shape.kv_heads, shape.head_dim), generator=g)
    v = torch.randint(-128, 128, (shape.seq_kv, shape.kv_heads, shape.head_dim), generator=g)
    return q, k, v


@pytest.mark.parametrize("shape", [
    AttentionShape(5, 7, 2, 1, 12, causal=True),
    AttentionShape(3, 9, 4, 2, 8, causal=False),
    AttentionShape(1, 1, 1, 1, 8),
], ids=str)
def test_attention_unit_matches_reference(shape):
    config = preset("tiny")
    params = AttentionParams(score_mult=20000, score_shift=14, out_mult=16384, out_shift=22)
    q, k, v = random_case(shape, 1)
    expected = as_words(attention_fixed(q, k, v, shape, params), config.axi_data_bytes)
    got = simulate(config, shape, params, q, k, v, idle=0.2, backpressure=0.3)
    assert got == expected


def test_attention_unit_streams_keys_once_per_group_and_takes_peaked_inputs():
    """Late maxima (the accumulators rescaled) and saturated logits, under stalls."""
    config = preset("tiny")
    for kind, shape in (("peaked", AttentionShape(5, 16, 2, 2, 8)),
                        ("extreme", AttentionShape(4, 6, 2, 1, 16, causal=True))):
        q, k, v, params = random_inputs(shape, kind, seed=3)
        expected = as_words(attention_fixed(q, k, v, shape, params), config.axi_data_bytes)
        assert simulate(config, shape, params, q, k, v, idle=0.3, backpressure=0.3) == expected


MUTANTS = {
    # exp of an argument a quarter too low (a misaligned table index)
    "exp": ("exp_fixed", lambda original: lambda d: original(d - 64)),
    # the rescale and the running sum (the Q15 round_shifts) drop one more bit than Q15 keeps
    "rescale": ("round_shift",
                lambda original: lambda value, shift: original(value, shift + (shift == 15))),
}


@pytest.mark.parametrize("mutant", MUTANTS)
def test_unit_check_catches_a_mutant(mutant, monkeypatch):
    import moeaccel.hw.attention as module
    name, make = MUTANTS[mutant]
    monkeypatch.setattr(module, name, make(getattr(module, name)))
    config = preset("tiny")
    shape = AttentionShape(3, 12, 2, 2, 8)
    q, k, v, params = random_inputs(shape, "random", seed=4)
    expected = as_words(attention_fixed(q, k, v, shape, params), config.axi_data_bytes)
    assert simulate(config, shape, params, q, k, v) != expected


@pytest.mark.parametrize("fields", [dict(kv_heads=0), dict(rep=3, kv_heads=8), dict(head_words=17),
                                    dict(seq_q=9, causal=1), dict(score_shift=48)], ids=str)
def test_unit_refuses_a_bad_command(fields):
    """The error flag rises and the unit stays idle (it takes no words)."""
    config = preset("tiny")
    dut = Attention(config)
    base = {"seq_q": 4, "seq_kv": 8, "kv_heads": 2, "rep": 1, "head_words": 1, "causal": 0,
            "score_mult": 20000, "score_shift": 14, "out_mult": 16384, "out_shift": 22}
    seen = {}

    async def drive(ctx):
        ctx.set(dut.cmd.valid, 1)
        ctx.set(dut.cmd.payload, attention_command(config).const({**base, **fields}))
        await ctx.tick()
        ctx.set(dut.cmd.valid, 0)
        ctx.set(dut.data.valid, 1)
        for _ in range(4):
            _, _, ready = await ctx.tick().sample(dut.data.ready)
            seen.setdefault("ready", []).append(ready)
        seen["error"], seen["busy"] = ctx.get(dut.error), ctx.get(dut.busy)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(drive)
    sim.run()
    assert seen["error"] == 1 and seen["busy"] == 0 and not any(seen["ready"])


def test_sequencer_stops_when_the_unit_refuses_the_call():
    from moeaccel.formats.attention import sequencer_command
    from moeaccel.hw.attention_sequencer import AttentionSequencer
    config = preset("tiny")
    dut = AttentionSequencer(config, 12)
    shape = AttentionShape(4, 8, 2, 2, 8)
    params = AttentionParams(20000, 14, 16384, 22)
    seen = {}

    async def drive(ctx):
        ctx.set(dut.cmd.valid, 1)
        ctx.set(dut.cmd.payload, sequencer_command(config, 12).const({
            "attention": command_fields(config, shape, params), "q_base": 0, "k_base": 64,
            "v_base": 128, "o_base": 192}))
        await ctx.tick()
        ctx.set(dut.cmd.valid, 0)
        await ctx.tick().repeat(3)
        seen["busy_before"] = ctx.get(dut.busy)
        ctx.set(dut.abort, 1)
        await ctx.tick().repeat(2)
        ctx.set(dut.abort, 0)
        seen["busy_after"], seen["valid_after"] = ctx.get(dut.busy), ctx.get(dut.words.valid)
        seen["ready_again"] = ctx.get(dut.cmd.ready)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(drive)
    sim.run()
    assert seen == {"busy_before": 1, "busy_after": 0, "valid_after": 0, "ready_again": 1}
