"""Whole attention calls in Verilator: `sim.designs.attention_system.AttentionSystem` (unit, sequencer and a
memory standing for DRAM), checked bit for bit against `sw.attention.attention_fixed`.

The testbench loads Q, K and V into the memory, starts the call and leaves the simulator to run it
(no Python per cycle), then reads the output rows back. Used by `moeaccel bench attention`.

Parameters: ``config`` (preset), ``overrides`` (AccelConfig fields), ``cases`` (as in
`sim.tb.attention`), ``report_file``.
"""

from __future__ import annotations

import time

import cocotb
import torch
from cocotb.triggers import FallingEdge, ReadOnly, RisingEdge, with_timeout

from ...config import preset
from ...cycles import attention_cycles
from ...formats.attention import ATTENTION_COUNTERS, command_fields, sequencer_command
from ...sw.attention import as_words, attention_fixed, random_inputs
from ..designs.attention_system import system_words
from ..harness import check_cases, reset, tb_params
from .attention import case_shape, describe


def word_bits(rows: torch.Tensor, word: int) -> list[int]:
    """``[rows, heads, dim]`` int8 -> the memory words as integers (lane 0 in the low byte)."""
    words = as_words(rows, word)
    return [int.from_bytes(bytes(x & 0xFF for x in w), "little") for w in words]


def bits_word(value: int, word: int) -> list[int]:
    return [b - 256 if b >= 128 else b for b in value.to_bytes(word, "little")]


async def run_case(dut, config, case: dict) -> dict:
    word = config.axi_data_bytes
    shape = case_shape(case)
    q, k, v, params = random_inputs(shape, case.get("kind", "random"), case["seed"])
    started = time.monotonic()
    expected = as_words(attention_fixed(q, k, v, shape, params), word)
    golden_s = time.monotonic() - started
    images = [word_bits(t, word) for t in (q, k, v)]
    q_base, k_base = 0, len(images[0])
    v_base = k_base + len(images[1])
    o_base = v_base + len(images[2])
    if o_base + len(expected) > system_words(config):
        raise ValueError(f"the case needs {o_base + len(expected)} memory words, the testbed has "
                         f"{system_words(config)}")
    dut.load__en.value = 1
    for address, value in enumerate(images[0] + images[1] + images[2]):
        dut.load__addr.value = address
        dut.load__data.value = value
        await RisingEdge(dut.clk)
    dut.load__en.value = 0
    command = sequencer_command(config, len(dut.load__addr)).const({
        "attention": command_fields(config, shape, params),
        "q_base": q_base, "k_base": k_base, "v_base": v_base, "o_base": o_base})
    dut.cmd__payload.value = command.as_bits()
    dut.cmd__valid.value = 1
    await RisingEdge(dut.clk)
    dut.cmd__valid.value = 0
    await ReadOnly()
    assert int(dut.busy.value), f"the testbed did not take the call {case}"
    started = time.monotonic()
    await RisingEdge(dut.clk)
    assert not int(dut.error.value), f"the attention unit refused {case}"
    # a bound on the call, not an estimate: twice the cycle model of an unstalled run
    bound = 2 * attention_cycles(shape, config.attention_group, word)["total"] + 1000
    await with_timeout(FallingEdge(dut.busy), 10 * bound, "ns")   # 10 ns clock
    simulate_s = time.monotonic() - started
    perf = ATTENTION_COUNTERS.from_bits(int(dut.perf.value))
    received = []
    dut.dump__en.value = 1
    for index in range(len(expected) + 1):
        await RisingEdge(dut.clk)
        if index < len(expected):
            dut.dump__addr.value = o_base + index
        await ReadOnly()
        if index:
            received.append(bits_word(int(dut.dump__data.value), word))
    await RisingEdge(dut.clk)
    dut.dump__en.value = 0
    mismatches = [f"word {i}: {got}, expected {want}"
                  for i, (got, want) in enumerate(zip(received, expected)) if got != want]
    return {**case, **{name: int(getattr(perf, name)) for name in ATTENTION_COUNTERS.members},
            "dram_reads": int(dut.dram_reads.value), "dram_writes": int(dut.dram_writes.value),
            "mismatches": mismatches, "golden_s": round(golden_s, 2),
            "simulate_s": round(simulate_s, 2)}


@cocotb.test()
async def attention_calls_bit_exact(dut):
    """Each case's output rows, read back from the memory, equal the golden model's."""
    params = tb_params()
    config = preset(params["config"]).replace(**params.get("overrides", {}))
    dut.cmd__valid.value = 0        # the clock runs inside the design (run_cocotb free_clock_ns)
    dut.load__en.value = 0
    dut.dump__en.value = 0
    await reset(dut)
    await check_cases(dut, params["cases"], lambda case: run_case(dut, config, case), describe,
                      "attention outputs")
