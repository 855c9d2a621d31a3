"""The vector unit: cocotb regressions on Verilator, bit-exact against `sw.vector` (every op,
directed and random cases, idles crossed with backpressure); refused commands; its cycles against
the cycle model; and fast checks in Amaranth's own simulator."""

import json
import random

import pytest
from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.sim import Simulator

from moeaccel.config import preset
from moeaccel.cycles import vector_cycles
from moeaccel.formats.vector import VectorOp, vector_command
from moeaccel.hw.vector import VectorUnit
from moeaccel.sim.harness import run_cocotb
from moeaccel.sim.tb import vector as tb

from . import stream_sim
from .test_vector import _emulate


def run_vector(config_name: str, parameters: dict, timeout_s: float = 600, component=None,
               toplevel: str = "vector"):
    """The vector unit's testbench on preset `config_name` (one build per preset, shared with
    `moeaccel bench vector`)."""
    component = component or VectorUnit(preset(config_name))
    return run_cocotb(component, toplevel=toplevel, test_module="moeaccel.sim.tb.vector",
                      build_key=config_name,
                      parameters={"config": config_name, "overrides": {}, **parameters},
                      timeout_s=timeout_s)


@pytest.mark.sim
@pytest.mark.parametrize("config_name", ["tiny", "pynq-z2"])
def test_vector_unit_regression(config_name):
    run_vector(config_name, {"regression": {"random": 10}})


@pytest.mark.sim
def test_vector_unit_refuses_illegal_commands_and_eps_out_of_range():
    run_vector("tiny", {"refusals": True})


class ShiftOffByOne(wiring.Component):
    """The vector unit with a deliberate bug: every command shifts one bit too far."""

    def __init__(self, config):
        self.inner = VectorUnit(config)
        super().__init__(self.inner.signature)

    def elaborate(self, platform):
        m = Module()
        m.submodules.inner = inner = self.inner
        for name in ("a", "b", "operands"):
            wiring.connect(m, wiring.flipped(getattr(self, name)), getattr(inner, name))
        for name in ("o", "gates"):
            wiring.connect(m, getattr(inner, name), wiring.flipped(getattr(self, name)))
        m.d.comb += [
            inner.cmd.valid.eq(self.cmd.valid),
            self.cmd.ready.eq(inner.cmd.ready),
            inner.cmd.payload.eq(self.cmd.payload),
            inner.cmd.payload.shift.eq(self.cmd.payload.shift + 1),
            self.busy.eq(inner.busy),
            self.error.eq(inner.error),
            self.perf.eq(inner.perf),
        ]
        return m


@pytest.mark.sim
def test_regression_catches_an_off_by_one_shift():
    cases = [dict(tb._case(op, 3, 13, seed=n), idle=0.3, backpressure=0.3)
             for n, op in enumerate((VectorOp.ADD, VectorOp.LAYERNORM, VectorOp.GATE))]
    with pytest.raises(AssertionError, match="vector unit outputs differ from the golden model"):
        run_vector("tiny", {"cases": cases}, component=ShiftOffByOne(preset("tiny")),
                   toplevel="vector_shift_off_by_one")


def _timing_cases(config) -> list[dict]:
    """Every op without stalls: short and long rows, one row and several, the widest row."""
    lanes, widest = config.vector_lanes, config.max_inputs
    pair = 2 * lanes
    cases = []
    for n, op in enumerate(VectorOp):
        if op is VectorOp.ROPE:
            shapes = [(3, 3 * pair, pair), (1, pair, pair), (2, 8 * pair, 4 * pair),
                      (1, widest, min(widest, 8 * pair))]
        else:
            shapes = [(3, 4 * lanes + 1, 0), (1, 1, 0), (5, 16 * lanes, 0), (1, widest, 0)]
        cases += [dict(tb._case(op, rows, width, seed=100 * n + k, head_dim=head_dim), idle=0.0,
                       backpressure=0.0) for k, (rows, width, head_dim) in enumerate(shapes)]
    return cases


def _timing_reports(config_name, tmp_path) -> list[dict]:
    report_file = tmp_path / "report.json"
    config = preset(config_name)
    run_vector(config_name, {"cases": _timing_cases(config), "report_file": str(report_file)})
    return json.loads(report_file.read_text())


@pytest.mark.sim
def test_vector_unit_reports_cycles_without_stalls(tmp_path):
    """Without idles or backpressure: no stall counted, at least the ideal cycles (an element a
    lane a cycle), and busy from the command's accept to the last output, both counted."""
    for report in _timing_reports("tiny", tmp_path):
        assert report["input_stall_cycles"] == 0 and report["output_stall_cycles"] == 0, report
        assert report["cycles"] >= report["ideal_cycles"], report
        assert report["busy_cycles"] == report["cycles"], report


@pytest.mark.sim
@pytest.mark.parametrize("config_name", ["tiny", "pynq-z2"])
def test_vector_unit_cycles_equal_the_cycle_model(config_name, tmp_path):
    """`moeaccel.cycles.vector_cycles` (the emulator's VECTOR cycles) against the RTL: cycles from
    the command's accept to the last output transfer, every op, short and long rows."""
    config = preset(config_name)
    for report in _timing_reports(config_name, tmp_path):
        fields = tb.case_streams(config, report).fields
        assert report["cycles"] == vector_cycles(config, fields), report


@pytest.mark.sim
def test_bench_vector_reports_cycles(capsys):
    from moeaccel.cli import main
    assert main(["bench", "vector", "--op", "rope", "--rows", "3", "--width", "128", "--config",
                 "tiny", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["bit_exact"] is True and result["head_dim"] == 64      # the default head
    assert result["ideal_cycles"] == 3 * 128 // 4 <= result["cycles"] == result["busy_cycles"]
    assert result["utilization"] == round(result["ideal_cycles"] / result["cycles"], 4)
    assert result["input_stall_cycles"] == result["output_stall_cycles"] == 0


@pytest.mark.parametrize("args, message", [
    (["--op", "rope", "--rows", "2", "--width", "48"],
     "ROPE over width=48: no multiple of 8 (2 x vector_lanes) from 64 up divides it; give "
     "--head-dim"),
    (["--op", "rope", "--rows", "2", "--width", "48", "--head-dim", "12"],
     "the tiny vector unit refuses it: ROPE: rows of 48 are not whole heads of head_dim=12, a "
     "multiple of 8 (2 x vector_lanes) up to 128"),
    (["--op", "gate", "--rows", "65", "--width", "8"],
     "rows=65 exceeds the tiny configuration's limit of 64 (max_tokens: a gate's token index)"),
    (["--op", "add", "--rows", "1", "--width", "257"], "ADD: width=257 (1 .. 256)"),
])
def test_bench_vector_refuses_what_the_unit_cannot_run(args, message, capsys):
    from moeaccel.cli import main
    assert main(["bench", "vector", *args, "--config", "tiny"]) == 2
    assert message in capsys.readouterr().err


def test_bench_vector_default_rope_head():
    from moeaccel.bench import rope_head_dim
    tiny, pynq = preset("tiny"), preset("pynq-z2")
    assert [rope_head_dim(tiny, width) for width in (64, 128, 96, 200)] == [64, 64, 96, 200]
    assert [rope_head_dim(pynq, width) for width in (4096, 80, 112)] == [64, 80, 112]


# -- fast checks in Amaranth's simulator (the cocotb regressions are the record) -------------------

def _amaranth_run(config, streams: tb.CaseStreams, seed: int, idle: float = 0.3,
                  backpressure: float = 0.3):
    """Drive `streams` through a VectorUnit (each input its own testbench); the o words and gates
    that leave."""
    dut = VectorUnit(config)
    payloads = tb.encode(config, streams)
    rng = random.Random(seed)
    lanes = config.vector_lanes
    words, gates = [], []

    def source(name):
        async def testbench(ctx):
            await stream_sim.send(ctx, getattr(dut, name), payloads[name], rng, idle)
        return testbench

    async def receive(ctx):
        while len(words) < len(streams.o) or len(gates) < len(streams.gates):
            ready = rng.random() >= backpressure
            ctx.set(dut.o.ready, ready)
            ctx.set(dut.gates.ready, ready)
            _, _, o_valid, o_word, g_valid, gate = await ctx.tick().sample(
                dut.o.valid, dut.o.payload, dut.gates.valid, dut.gates.payload)
            if o_valid and ready:
                words.append([int(o_word[n]) for n in range(lanes)])
            if g_valid and ready:
                gates.append((int(gate.token), int(gate.gate)))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    for name in ("cmd", "a", "b", "operands"):
        if payloads[name]:
            sim.add_testbench(source(name))
    sim.add_testbench(receive)
    sim.run_until(2e-5)
    return words, gates


@pytest.mark.parametrize("case", [
    tb._case(VectorOp.ADD, 3, 9, seed=1, kind="outlier"),
    tb._case(VectorOp.RMSNORM, 2, 11, seed=2),
    tb._case(VectorOp.GATE, 2, 6, seed=3, scales="raw"),
], ids=lambda case: case["op"])
def test_vector_unit_matches_golden_model_in_amaranth_sim(case):
    config = preset("tiny")
    streams = tb.case_streams(config, case)
    words, gates = _amaranth_run(config, streams, seed=case["seed"])
    assert words == streams.o and gates == streams.gates


def test_vector_unit_refuses_a_shift_beyond_47_in_amaranth_sim():
    config = preset("tiny")
    dut = VectorUnit(config)
    command = vector_command(config).const(tb.refused_commands(config)[0])     # shift 48
    seen = {}

    async def testbench(ctx):
        ctx.set(dut.a.valid, 1)
        await stream_sim.send(ctx, dut.cmd, [command], random.Random(0), idle=0.0)
        taken = 0
        for _ in range(10):
            _, _, ready = await ctx.tick().sample(dut.a.ready)
            taken += ready
        seen.update(error=ctx.get(dut.error), busy=ctx.get(dut.busy), taken=taken)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(testbench)
    sim.run()
    assert seen == dict(error=1, busy=0, taken=0)


@pytest.mark.parametrize("op", [VectorOp.RMSNORM, VectorOp.LAYERNORM, VectorOp.ROPE,
                                VectorOp.GATE, VectorOp.ADD])
def test_vector_unit_and_emulator_agree_on_the_same_dram_bytes(op):
    """One VECTOR instruction's bytes: the emulator runs it; the unit takes the same rows and the
    operands as `formats.vector.operand_words` turns the DRAM record into its words. Same bytes
    out."""
    import numpy as np
    import torch

    from moeaccel.formats import records
    from moeaccel.formats.buffers import Buffer
    from moeaccel.formats.router import TOKEN_GATE
    from moeaccel.formats.vector import operand_layout, operand_words

    config = preset("tiny")
    lanes, pair = config.vector_lanes, 2 * config.vector_lanes
    rows, width, head_dim = 3, 3 * pair, (pair if op is VectorOp.ROPE else 0)
    generator = torch.Generator().manual_seed(int(op.value))
    a = torch.randint(-128, 128, (rows, width), generator=generator)
    b = torch.randint(-128, 128, (rows, width), generator=generator)
    layout = operand_layout(op, rows, width, head_dim)
    params = bytearray(records.size(layout)) if layout is not None else bytearray()
    if layout is not None:
        raw = np.frombuffer(bytes(torch.randint(0, 256, (len(params),), generator=generator,
                                                dtype=torch.uint8).numpy()), np.uint8)
        params[:] = raw.tobytes()
        if op in (VectorOp.RMSNORM, VectorOp.LAYERNORM):
            record = records.view(layout, params)[0]
            record["eps_q"] = 1 << 20
            record["bias"] >>= 8                          # outputs mostly inside the int8 range
    dst = Buffer.GATES if op is VectorOp.GATE else Buffer.ACT1
    extra = dict(multiplier=23456, multiplier_b=12345, head_dim=head_dim,
                 shift={VectorOp.ADD: 15, VectorOp.GATE: 24}.get(op, 38))
    emulator, result, stride = _emulate(op, a, bytes(params), b, dst=dst, **extra)
    assert result.ok, result.message
    fields = dict(op=op, rows=rows, width=width, a=Buffer.ACT0, b=Buffer.ACT1, dst=dst,
                  params=4096, **extra)

    def words(values):
        padded = values.tolist()
        return [row[j:j + lanes] + [0] * (j + lanes - width) for row in padded
                for j in range(0, width, lanes)]

    record = records.view(layout, bytes(params))[0] if layout is not None else None
    if op is VectorOp.GATE:
        entries = records.view(TOKEN_GATE.dram, bytes(emulator.buffers[Buffer.GATES]), rows)
        o, gates = [], [(int(e["token"]), int(e["gate"])) for e in entries]
    else:
        raw = np.frombuffer(bytes(emulator.buffers[Buffer.ACT1]), np.int8)
        out = torch.tensor(np.stack([raw[r * stride:r * stride + width] for r in range(rows)]),
                           dtype=torch.int64)
        o, gates = words(out), []
    streams = tb.CaseStreams(
        fields=fields, a=words(a), b=words(b) if op is VectorOp.ADD else [],
        operands=operand_words(config, op, record, rows, width, head_dim) if layout else [],
        o=o, gates=gates)
    got_words, got_gates = _amaranth_run(config, streams, seed=int(op.value))
    assert got_words == streams.o and got_gates == streams.gates
