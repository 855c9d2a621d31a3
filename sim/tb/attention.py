"""cocotb regression of `hw.attention.Attention` against `sw.attention.attention_fixed`.

Each case streams its Q, K and V words (`sw.attention.stream_words`) with random idles, takes the
output words under random backpressure, and compares every word with the golden model's.

Parameters: ``config`` (preset), ``overrides`` (AccelConfig fields), ``cases`` (dicts: ``seq_q``,
``seq_kv``, ``heads``, ``kv_heads``, ``head_dim``, ``causal``, ``kind`` (`sw.inputs.ATTENTION_INPUT_KINDS`),
``seed``, ``idle``, ``backpressure``), optional ``report_file``.
"""

from __future__ import annotations

import random

import cocotb
from cocotb.triggers import FallingEdge, RisingEdge

from ...config import preset
from ...formats.attention import (ATTENTION_COUNTERS, attention_command, attention_word,
                                  command_fields)
from ...sw.attention import (AttentionShape, as_words, attention_fixed, random_inputs,
                             stream_words)
from ..harness import StallGenerator, check_cases, reset, start_clock, tb_params
from .streams import StreamSink, StreamSource

COUNTERS = tuple(ATTENTION_COUNTERS.members)


def case_shape(case: dict) -> AttentionShape:
    return AttentionShape(case["seq_q"], case["seq_kv"], case["heads"], case["kv_heads"],
                          case["head_dim"], bool(case.get("causal", False)))


class AttentionTB:
    def __init__(self, dut, config, rng: random.Random):
        self.dut, self.config, self.rng = dut, config, rng

    def counters(self) -> dict:
        perf = ATTENTION_COUNTERS.from_bits(int(self.dut.perf.value))
        return {name: int(getattr(perf, name)) for name in COUNTERS}

    async def run(self, case: dict) -> dict:
        config, dut = self.config, self.dut
        word = config.axi_data_bytes
        shape = case_shape(case)
        q, k, v, params = random_inputs(shape, case.get("kind", "random"), case["seed"])
        expected = as_words(attention_fixed(q, k, v, shape, params), word)
        layout = attention_word(config)
        received = []
        sink = StreamSink(dut, "out", lambda bits: received.append(
            [int(x) for x in layout.from_bits(bits).data]),
            StallGenerator(self.rng, case.get("backpressure", 0.3)))
        sink_task = cocotb.start_soon(sink.run())
        command = attention_command(config).const(command_fields(config, shape, params))
        await StreamSource(dut, "cmd").send([command.as_bits()])
        await RisingEdge(dut.clk)
        assert not int(dut.error.value), f"the attention unit refused {case}"
        await StreamSource(dut, "data", StallGenerator(self.rng, case.get("idle", 0.3))).send(
            layout.const({"data": w}).as_bits()
            for w in stream_words(q, k, v, shape, config.attention_group, word))
        if int(dut.busy.value):
            await FallingEdge(dut.busy)
        await RisingEdge(dut.clk)
        sink_task.cancel()
        mismatches = [f"word {i}: {got}, expected {want}"
                      for i, (got, want) in enumerate(zip(received, expected)) if got != want]
        if len(received) != len(expected):
            mismatches.append(f"{len(received)} output words, expected {len(expected)}")
        return {**case, **self.counters(), "mismatches": mismatches}


@cocotb.test()
async def attention_bit_exact(dut):
    """Every case's output words equal the golden model's."""
    params = tb_params()
    config = preset(params["config"]).replace(**params.get("overrides", {}))
    rng = random.Random(cocotb.RANDOM_SEED)
    await start_clock(dut)
    dut.cmd__valid.value = 0
    dut.data__valid.value = 0
    dut.out__ready.value = 0
    await reset(dut)
    await check_cases(dut, params["cases"], AttentionTB(dut, config, rng).run, describe,
                      "attention outputs")


def describe(case: dict, report: dict) -> str:
    return (f"Lq={case['seq_q']} Lkv={case['seq_kv']} H={case['heads']}/{case['kv_heads']} "
            f"D={case['head_dim']} causal={case.get('causal', False)} {case.get('kind', 'random')}: "
            f"{report['busy_cycles']} cycles, {len(report['mismatches'])} mismatches")
