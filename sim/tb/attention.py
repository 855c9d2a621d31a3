"""cocotb regression of `hw.attention.Attention` against `sw.attention.attention_fixed`.

Each case streams its Q, K and V words (`sw.attention.stream_words`) with random idles, takes the
output words under random backpressure, and compares every word with the golden model's.

Parameters: ``config`` (preset), ``overrides`` (AccelConfig fields), ``cases`` (dicts: ``seq_q``,
``seq_kv``, ``heads``, ``kv_heads``, ``head_dim``, ``causal``, ``kind`` (`sw.attention.INPUT_KINDS`),
``seed``, ``idle``, ``backpressure``), optional ``report_file``.
"""

from __future__ import annotations

import json
import random

import cocotb
from cocotb.triggers import FallingEdge, RisingEdge

from ...config import preset
from ...hw.attention import ATTENTION_COUNTERS
from ...hw.layouts import attention_command, attention_word
from ...sw.attention import AttentionShape, attention_fixed, random_inputs, stream_words
from ..harness import StallGenerator, reset, start_clock, tb_params
from .streams import StreamSink, StreamSource

COUNTERS = tuple(ATTENTION_COUNTERS.members)


def case_shape(case: dict) -> AttentionShape:
    return AttentionShape(case["seq_q"], case["seq_kv"], case["heads"], case["kv_heads"],
                          case["head_dim"], bool(case.get("causal", False)))


def output_words(out, word: int) -> list[list[int]]:
    """``[rows, heads, dim]`` int8 -> the unit's output words (heads zero-padded to whole words)."""
    rows, heads, dim = out.shape
    padded = -(-dim // word) * word
    words = []
    for row in out.tolist():
        for head in row:
            head = head + [0] * (padded - dim)
            words += [head[i:i + word] for i in range(0, padded, word)]
    return words


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
        expected = output_words(attention_fixed(q, k, v, shape, params), word)
        layout = attention_word(config)
        received = []
        sink = StreamSink(dut, "out", lambda bits: received.append(
            [int(x) for x in layout.from_bits(bits).data]),
            StallGenerator(self.rng, case.get("backpressure", 0.3)))
        sink_task = cocotb.start_soon(sink.run())
        command = attention_command(config).const({
            "seq_q": shape.seq_q, "seq_kv": shape.seq_kv, "kv_heads": shape.kv_heads,
            "rep": shape.rep, "head_words": shape.head_words(word), "causal": shape.causal,
            "score_mult": params.score_mult, "score_shift": params.score_shift,
            "out_mult": params.out_mult, "out_shift": params.out_shift})
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
    reports, failures = [], []
    for case in params["cases"]:
        report = await AttentionTB(dut, config, rng).run(case)
        reports.append(report)
        name = (f"Lq={case['seq_q']} Lkv={case['seq_kv']} H={case['heads']}/{case['kv_heads']} "
                f"D={case['head_dim']} causal={case.get('causal', False)} {case.get('kind', 'random')}")
        dut._log.info(f"{name}: {report['busy_cycles']} cycles, "
                      f"{len(report['mismatches'])} mismatches")
        if report["mismatches"]:
            failures.append(f"{name}: {report['mismatches'][:3]}")
    if params.get("report_file"):
        with open(params["report_file"], "w") as file:
            json.dump(reports, file, indent=1)
    assert not failures, f"attention output differs from the golden model: {failures}"
