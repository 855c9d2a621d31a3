"""cocotb regression of `hw.expert_ffn.FFNEngine` against the integer golden model.

Each case builds a float layer or expert from its seed, prunes it to the case's pattern, quantises it
(`sw.quantized`), runs it through the engine pass by pass and compares every output value with the
golden model's. Weights arrive with random idles, results leave under random backpressure. The
measured counters of each case go to ``report_file`` when one is given (summed over its passes, and
pass by pass under ``passes``, each with its command).

Parameters: ``config`` (preset name), ``cases`` (list of dicts: ``kind`` linear | swiglu | expert,
``tokens``, ``d_model``, ``d_ff``, ``pattern``, ``activation``, ``seed``, ``weight_idle``,
``backpressure``), optional ``report_file``.
"""

from __future__ import annotations

import random

import cocotb
import torch
from cocotb.triggers import FallingEdge, RisingEdge

from ...compiler.plan import engine_work, expert_operands, pass_operands, plan_pass
from ...config import SparsityPattern, preset
from ...formats.epilogue import TABLE_WRITE
from ...formats.expert_ffn import (EXPERT_FFN_COUNTERS, act_write, ffn_command, ffn_out,
                                   gates_write, params_write, pattern_bits)
from ...sw.quantized import (QuantizedExpert, QuantizedLinear, QuantizedMoE, quantize_tensor,
                             swiglu_hidden)
from ...sw.models import build_model
from ...sw.reference import Expert, MoELayer, MoESpec
from ...sw.sparsity import prune
from ..harness import StallGenerator, check_cases, reset, start_clock, tb_params
from .streams import StreamSink, StreamSource

PERF_FIELDS = tuple(EXPERT_FFN_COUNTERS.members)


class FFNTB:
    """Drivers, loaders and the result collector around one FFNEngine."""

    def __init__(self, dut, config, rng: random.Random):
        self.dut, self.config, self.rng = dut, config, rng
        self.idle = 0.0           # idle probability of the loading streams, set per case
        self.layouts = {"act": act_write(config), "params": params_write(config),
                        "cmd": ffn_command(config), "out": ffn_out(config),
                        "gates": gates_write(config)}
        self.rows: list[tuple[int, int, list[int]]] = []
        self.sink = None

    async def start(self):
        await start_clock(self.dut)
        for name in ("cmd", "weights", "act_write", "params_write", "table_write", "gates_write"):
            getattr(self.dut, f"{name}__valid").value = 0
        await reset(self.dut)

    def _collect(self, bits: int) -> None:
        view = self.layouts["out"].from_bits(bits)
        self.rows.append((view.tag.token, view.tag.tile,
                          [view.values[n] for n in range(self.config.mac_rows)]))

    def _source(self, name: str) -> StreamSource:
        return StreamSource(self.dut, name, StallGenerator(self.rng, self.idle))

    async def load_activations(self, buffer: int, x_q: torch.Tensor, row_words: int) -> None:
        width = self.config.act_word_bytes
        words = []
        for token in range(x_q.shape[0]):
            row = x_q[token].tolist() + [0] * (row_words * width - x_q.shape[1])
            for word in range(row_words):
                words.append(self.layouts["act"].const({
                    "buffer": buffer, "addr": token * row_words + word,
                    "data": row[word * width:(word + 1) * width]}).as_bits())
        await self._source("act_write").send(words)

    async def load_params(self, params: list[list[dict]]) -> None:
        await self._source("params_write").send(
            self.layouts["params"].const({"tile": tile, "params": lanes}).as_bits()
            for tile, lanes in enumerate(params))

    async def load_gates(self, rows: torch.Tensor, gates: torch.Tensor) -> None:
        """The gate table: slot i of the pass goes to accumulator row rows[i] with weight gates[i]."""
        await self._source("gates_write").send(
            self.layouts["gates"].const({"slot": slot, "entry": {"token": int(row), "gate": int(gate)}})
            .as_bits() for slot, (row, gate) in enumerate(zip(rows, gates)))

    async def load_table(self, table) -> None:
        table = table.tolist() if table is not None else list(range(-128, 128))
        await self._source("table_write").send(
            TABLE_WRITE.const({"index": index, "value": value}).as_bits()
            for index, value in enumerate(table))

    async def run_pass(self, operands, rng: random.Random, weight_idle: float,
                       backpressure: float) -> dict:
        """Load the pass's parameters and table, send its command and weights; return the counters
        once the engine is idle again."""
        await self.load_params(operands.params)
        await self.load_table(operands.table)
        blocks, bus = operands.blocks, self.config.axi_data_bytes
        beats = [] if operands.step.drain else [int.from_bytes(blocks.data[n:n + bus], "little")
                                                for n in range(0, len(blocks.data), bus)]
        self.rows = []
        sink = StreamSink(self.dut, "o", self._collect, StallGenerator(rng, backpressure))
        sink_task = cocotb.start_soon(sink.run())
        await self._source("cmd").send([self.layouts["cmd"].const(operands.command()).as_bits()])
        await RisingEdge(self.dut.clk)
        assert not int(self.dut.error.value), f"the engine refused {operands.command()}"
        weights = cocotb.start_soon(StreamSource(self.dut, "weights",
                                                 StallGenerator(rng, weight_idle)).send(beats))
        if int(self.dut.busy.value):
            await FallingEdge(self.dut.busy)
        await RisingEdge(self.dut.clk)
        sink_task.cancel()
        self.dut.o__ready.value = 0
        assert weights.done(), "the pass ended before all its weights were sent"
        perf = EXPERT_FFN_COUNTERS.from_bits(int(self.dut.perf.value))
        counters = {name: int(getattr(perf, name)) for name in PERF_FIELDS}
        step = operands.step
        words = 0 if step.drain else step.tiles * step.tokens * step.chunks
        assert counters["mac_cycles"] == words, \
            f"mac_cycles counted {counters['mac_cycles']}, the pass issues {words} words"
        assert counters["busy_cycles"] >= words
        if step.drain:
            assert counters["weight_stall_cycles"] == 0, "a drain waited for weights"
        return counters

    def result(self, step) -> torch.Tensor:
        """The collected rows as an int8 ``[tokens, outputs]`` matrix; each row exactly once."""
        out = torch.full((step.tokens, step.outputs), -1000, dtype=torch.int64)
        seen = set()
        for token, tile, values in self.rows:
            assert (token, tile) not in seen, f"row of token {token}, tile {tile} came twice"
            seen.add((token, tile))
            for lane in range(step.per_tile):
                channel = tile * step.per_tile + lane
                if channel < step.outputs:
                    out[token, channel] = values[lane]
        assert len(seen) == step.tokens * step.tiles, \
            f"{len(seen)} rows came out, {step.tokens * step.tiles} expected"
        return out


def _float_expert(case: dict, pattern: SparsityPattern) -> Expert:
    torch.manual_seed(case["seed"])
    expert = Expert(case["d_model"], case["d_ff"], case["activation"], bias=True)
    with torch.no_grad():
        for linear in (expert.up, expert.gate, expert.down):
            if linear is not None:
                linear.weight.copy_(prune(linear.weight, pattern))
                linear.bias.normal_(0, 0.05)
    return expert


async def run_moe_case(tb: FFNTB, case: dict, rng: random.Random) -> dict:
    """A whole MoE layer (routing from the golden router): every routed expert with tokens, the
    shared expert, gate-weighted accumulation, then the drain; compared with `QuantizedMoE`."""
    config, pattern = tb.config, SparsityPattern.parse(case["pattern"])
    if "model" in case:                             # a bundled model
        layer = build_model(case["model"], case["seed"])
        spec = layer.spec
    else:
        spec = MoESpec(case["d_model"], case["d_ff"], case["experts"], case["k"],
                       router=case["router"], activation=case["activation"],
                       shared_d_ff=case.get("shared_d_ff", 0))
        torch.manual_seed(case["seed"])
        layer = MoELayer(spec).eval()
    with torch.no_grad():
        for module in layer.modules():
            if isinstance(module, torch.nn.Linear) and module is not layer.router \
                    and module is not layer.shared_gate:
                module.weight.copy_(prune(module.weight, pattern))
    generator = torch.Generator().manual_seed(case["seed"] + 1)
    quantized = QuantizedMoE.from_float(layer, torch.randn(256, spec.d_model, generator=generator))
    x_q = quantized.quantize_input(torch.randn(case["tokens"], spec.d_model, generator=generator))
    program = engine_work(config, quantized, x_q, pattern)
    tb.idle = case["weight_idle"]
    counters = {name: 0 for name in PERF_FIELDS}
    macs = weight_bytes = 0
    passes = []
    for job in program.jobs:
        await tb.load_activations(0, x_q[job.rows], job.passes[0].step.src_row_words)
        await tb.load_gates(job.rows, job.gates)
        for operands in job.passes:
            measured = await tb.run_pass(operands, rng, case["weight_idle"], case["backpressure"])
            counters = {name: counters[name] + measured[name] for name in PERF_FIELDS}
            passes.append({"command": operands.command(), **measured})
            macs += operands.step.macs
            weight_bytes += len(operands.blocks.data)
    measured = await tb.run_pass(program.drain, rng, case["weight_idle"], case["backpressure"])
    counters = {name: counters[name] + measured[name] for name in PERF_FIELDS}
    passes.append({"command": program.drain.command(), **measured})
    expected = quantized.forward(x_q)
    got = tb.result(program.drain.step)
    return {**case, **counters, "passes": passes, "macs": macs, "weight_bytes": weight_bytes,
            "ideal_cycles": -(-macs // config.mac_units), "experts_run": len(program.jobs),
            "mismatches": int((got != expected).sum()), "values": int(expected.numel())}


async def run_case(tb: FFNTB, case: dict, rng: random.Random) -> dict:
    if case["kind"] == "moe":
        return await run_moe_case(tb, case, rng)
    config, pattern = tb.config, SparsityPattern.parse(case["pattern"])
    expert = _float_expert(case, pattern)
    generator = torch.Generator().manual_seed(case["seed"] + 1)
    calib = torch.randn(256, case["d_model"], generator=generator)
    with torch.no_grad():
        out_scale = float(expert(calib).abs().max()) / 127
    quantized = QuantizedExpert.from_float(expert, calib, in_scale=float(calib.abs().max() / 127),
                                           out_scale=out_scale)
    x = torch.randn(case["tokens"], case["d_model"], generator=generator)
    x_q = quantize_tensor(x, quantized.up.in_scale)
    tokens = case["tokens"]
    tb.idle = case["weight_idle"]
    if case["kind"] == "linear":
        layer: QuantizedLinear = quantized.up            # has the GELU/ReLU table
        step = plan_pass(config, tokens, case["d_model"], case["d_ff"], pattern, activation=True)
        passes, expected = [pass_operands(step, layer)], layer(x_q)
    elif case["kind"] == "swiglu":
        step = plan_pass(config, tokens, case["d_model"], case["d_ff"], pattern, swiglu=True,
                         activation=True)
        requant = (int(quantized.hidden_multiplier), int(quantized.hidden_shift))
        passes = [pass_operands(step, quantized.gate, quantized.up, requant)]
        expected = swiglu_hidden(quantized.gate, quantized.up, *requant, x_q)
    else:
        passes, expected = expert_operands(config, quantized, tokens, pattern), quantized(x_q)
    await tb.load_activations(0, x_q, passes[0].step.src_row_words)
    counters = {name: 0 for name in PERF_FIELDS}
    per_pass = []
    for operands in passes:
        measured = await tb.run_pass(operands, rng, case["weight_idle"], case["backpressure"])
        counters = {name: counters[name] + measured[name] for name in PERF_FIELDS}
        per_pass.append({"command": operands.command(), **measured})
    got = tb.result(passes[-1].step)
    mismatches = int((got != expected).sum())
    macs = sum(operands.step.macs for operands in passes)
    weight_bytes = sum(len(operands.blocks.data) for operands in passes)
    return {**case, **counters, "passes": per_pass, "macs": macs, "weight_bytes": weight_bytes,
            "ideal_cycles": -(-macs // config.mac_units), "mismatches": mismatches,
            "values": int(expected.numel())}


@cocotb.test()
async def cases_bit_exact(dut):
    """Every case's output equals the golden model's, value for value."""
    params = tb_params()
    config = preset(params["config"])
    rng = random.Random(cocotb.RANDOM_SEED)
    tb = FFNTB(dut, config, rng)
    await tb.start()

    def describe(case, report):
        return (f"{case['kind']} {case.get('model', case.get('activation'))} {case['pattern']} "
                f"T={case['tokens']} D={case.get('d_model')} F={case.get('d_ff')}: "
                f"{report['busy_cycles']} cycles (ideal {report['ideal_cycles']}), "
                f"{report['mismatches']} of {report['values']} values differ")

    await check_cases(dut, params["cases"], lambda case: run_case(tb, case, rng), describe,
                      "values")


@cocotb.test()
async def illegal_commands_are_refused(dut):
    """Counts of zero or beyond the buffers set `error` and start nothing; a good command after
    them runs."""
    config = preset(tb_params()["config"])
    tb = FFNTB(dut, config, random.Random(cocotb.RANDOM_SEED))
    await tb.start()
    good = plan_pass(config, 1, 8, 4, "dense").command()
    bad = [dict(good, tokens=0), dict(good, tiles=0), dict(good, chunks=0),
           dict(good, tokens=config.max_tokens + 1), dict(good, chunks=config.weight_bank_words + 1)]
    if len(config.patterns) < 1 << pattern_bits(config):      # a selector naming no pattern
        bad.append(dict(good, pattern=len(config.patterns)))
    for command in bad:
        await tb._source("cmd").send([tb.layouts["cmd"].const(command).as_bits()])
        await RisingEdge(dut.clk)
        assert int(dut.error.value) == 1, f"{command} was not refused"
        assert int(dut.busy.value) == 0, f"{command} started a pass"
    await tb._source("cmd").send([tb.layouts["cmd"].const(good).as_bits()])
    await RisingEdge(dut.clk)
    assert int(dut.error.value) == 0 and int(dut.busy.value) == 1
