"""The accelerator top in RTL (cocotb on Verilator, `sim/tb/top.py`): programs fetched from DRAM and
run by the controller, byte for byte and fault for fault against the emulator, under random pauses
on the AXI ports; then random programs, serialised, as the emulator's fuzz draws them."""

import json

import pytest

from moeaccel.config import preset
from moeaccel.formats import records
from moeaccel.formats.buffers import act_row_bytes, out_row_bytes
from moeaccel.formats.router import TOKEN_GATE
from moeaccel.formats.vector import VectorOp, operand_layout
from moeaccel.formats.instructions import QUEUE_DEPTH
from moeaccel.hw.top import Accelerator
from moeaccel.isa import INSTRUCTION_BYTES, Buffer, Opcode, Program
from moeaccel.sim.harness import run_cocotb

WINDOW = 1 << 14


def _case(name: str, program, window: int = WINDOW, **extra) -> dict:
    blob = program if isinstance(program, (bytes, bytearray)) else program.encode()
    return {"name": name, "program": bytes(blob).hex(), "window": window, "fill": len(name),
            **extra}


def directed(config) -> list[dict]:
    P = lambda: Program(config, checked=False)     # noqa: E731 (faults are the point)
    cases = []
    copy = (P().load(Buffer.ACT0, dram=3, rows=3, row_bytes=100, dram_stride=300,
                     sram_stride=128, push_next=True)
            .add(Opcode.NOP, pop_prev=True, push_next=True)
            .store(Buffer.ACT0, dram=5000, rows=3, row_bytes=100, dram_stride=101,
                   sram_stride=128, pop_prev=True)
            .finish())
    cases += [_case("copy through ACT0", copy), _case("copy, serialised", copy, serialise=True),
              _case("copy, polled without the interrupt", copy, poll=True)]
    # a double-buffered pipeline: load n+1 while n is "computed" and n-1 stored; load n+1 waits
    # for the store of n-1 (out of the same buffer), the token relayed by compute n
    pipe = P()
    for n in range(12):
        buffer = (Buffer.ACT0, Buffer.ACT1)[n % 2]
        pipe.load(buffer, dram=256 * n, rows=2, row_bytes=96, dram_stride=128,
                  pop_next=n >= 2, push_next=True)
        pipe.add(Opcode.NOP, pop_prev=True, push_next=True, pop_next=n >= 1,
                 push_prev=1 <= n < 11)
        pipe.store(buffer, dram=8192 + 256 * n, rows=2, row_bytes=96, dram_stride=128,
                   pop_prev=True, push_prev=n < 11)
    cases.append(_case("double-buffered pipeline", pipe.sync().finish()))
    # fetch bursts stop at a 4 KiB boundary: the pipeline again, three instructions before one
    cases.append(_case("a program across a 4 KiB boundary", pipe, program_base=0x2000 - 96))
    buffers = P()
    for n, buffer in enumerate(Buffer):
        buffers.load(buffer, dram=64 * n + n, row_bytes=200 - n, push_next=True)
        buffers.add(Opcode.NOP, pop_prev=True, push_next=True)
        buffers.store(buffer, dram=4096 + 256 * n, row_bytes=200 - n, pop_prev=True)
    cases.append(_case("every buffer", buffers.finish()))
    # a LOAD and a STORE of one buffer at once, on different rows (no tokens between them)
    both = (P().load(Buffer.ACT1, dram=0, rows=2, row_bytes=400, dram_stride=400)
            .store(Buffer.ACT1, dram=9000, rows=2, row_bytes=400, sram=4096, dram_stride=400)
            .finish())
    cases.append(_case("a LOAD and a STORE of one buffer at once", both))
    for loads in (QUEUE_DEPTH, QUEUE_DEPTH + 1):
        full = P()
        for n in range(loads):
            full.load(Buffer.ACT0, dram=64 * n, row_bytes=64, pop_next=True)
        for _ in range(loads):
            full.add(Opcode.NOP, push_prev=True)
        cases.append(_case(f"{loads} loads wait on the compute queue", full.finish()))
    cases += [
        _case("outside the window", P().load(Buffer.ACT0, dram=WINDOW - 8, row_bytes=16)
              .finish()),
        _case("a store crossing the window's end", P().store(
            Buffer.OUT, dram=0, rows=3, row_bytes=64, dram_stride=WINDOW // 2).finish()),
        _case("past a buffer's end", P().load(Buffer.TABLE, dram=0, row_bytes=257).finish()),
        _case("a token nobody pushes", P().add(Opcode.NOP, pop_prev=True).finish()),
        _case("a load that pushes back", P().load(Buffer.ACT0, dram=0, row_bytes=8,
                                                  push_prev=True).finish()),
        _case("no FINISH", P().load(Buffer.ACT0, dram=0, row_bytes=8)),
        _case("a long load past the watchdog",
              P().load(Buffer.ACT0, dram=0, rows=64, row_bytes=64).finish(),
              watchdog=60, expect="WATCHDOG"),
        _case("aborted", P().load(Buffer.WEIGHT, dram=0, rows=64, row_bytes=128).finish(),
              abort_after=ABORT_AFTER, expect="ABORTED"),
        _case("after an abort, a run", copy),
    ]
    bad = bytearray(P().load(Buffer.ACT0, dram=0, row_bytes=64, push_next=True)
                    .add(Opcode.NOP, pop_prev=True, push_next=True)
                    .store(Buffer.ACT0, dram=1024, row_bytes=64, pop_prev=True)
                    .sync().finish().encode())
    bad[3 * INSTRUCTION_BYTES] = 0x0F                       # the SYNC: an illegal opcode
    cases.append(_case("instructions before an illegal opcode run", bad))
    enum = bytearray(copy.encode())
    enum[1] = (enum[1] & 0xF0) | 0x0F                          # LOAD.buffer: no Buffer has 15
    cases.append(_case("a buffer code no buffer has", enum))
    return cases


ABORT_AFTER = 40


def vector_case(config, name: str, op: VectorOp, rows: int, width: int, head_dim: int = 0,
                seed: int = 0, eps_q: int | None = None, params: int = 12_000,
                dst: Buffer | None = None) -> dict:
    """A VECTOR program: its rows loaded from the window's random bytes (int32 for REQUANT), its
    operands written at `params` (valid ones: small ``eps_q``, Q14 tables), the result stored back."""
    import numpy as np

    rng = np.random.default_rng(seed)
    act, out = act_row_bytes(config, width), out_row_bytes(config, width)
    patches = []
    layout = operand_layout(op, rows, width, head_dim)
    if layout is not None:
        record = records.zeros(layout, 1)[0]
        if op in (VectorOp.RMSNORM, VectorOp.LAYERNORM):
            record["eps_q"] = rng.integers(0, 1 << 20) if eps_q is None else eps_q
            record["weight"] = rng.integers(-(1 << 15), 1 << 15, width)
            record["bias"] = rng.integers(-(1 << 20), 1 << 20, width)
        elif op is VectorOp.ROPE:
            angles = rng.uniform(0, 6.3, (rows, head_dim // 2))
            record[:] = np.concatenate([np.cos(angles), np.sin(angles)], 1) * (1 << 14)
        else:
            record[:] = rng.integers(-128, 128, width)
        patches.append((params, record.tobytes().hex()))
    source = Buffer.OUT if op is VectorOp.REQUANT else Buffer.ACT0
    stride = out if op is VectorOp.REQUANT else act
    target = dst or (Buffer.GATES if op is VectorOp.GATE else Buffer.ACT1)
    program = Program(config, checked=False)
    program.load(source, dram=0, rows=rows, row_bytes=stride, push_next=True)
    two = op in (VectorOp.ADD, VectorOp.MUL)
    if two:
        program.load(Buffer.ACT1, dram=4096, rows=rows, row_bytes=act, push_next=True)
    if two:
        program.add(Opcode.NOP, pop_prev=True)      # the first load's token; the VECTOR waits for
                                                    # the second's
    program.vector(op, rows=rows, width=width, a=source, b=Buffer.ACT1, dst=target,
                   params=params, multiplier=int(rng.integers(1 << 13, 1 << 15)),
                   multiplier_b=int(rng.integers(1 << 13, 1 << 15)),
                   shift=int(rng.integers(12, 22)), head_dim=head_dim, pop_prev=True,
                   push_next=True)
    stored = TOKEN_GATE.size * rows if op is VectorOp.GATE else act * rows
    program.store(target, dram=8192, row_bytes=stored, pop_prev=True).finish()
    return _case(name, program, patches=patches)


def vector_cases(config) -> list[dict]:
    head = 4 * config.vector_lanes
    cases = [vector_case(config, f"VECTOR {op.name}", op, rows, width, head_dim, seed=n)
             for n, (op, rows, width, head_dim) in enumerate([
                 (VectorOp.ADD, 3, 40, 0), (VectorOp.MUL, 4, 33, 0),
                 (VectorOp.RMSNORM, 3, 40, 0), (VectorOp.LAYERNORM, 2, 24, 0),
                 (VectorOp.ROPE, 3, 2 * head, head), (VectorOp.REQUANT, 3, 37, 0),
                 (VectorOp.GATE, 5, 40, 0)])]
    aborted = vector_case(config, "VECTOR RMSNORM, aborted", VectorOp.RMSNORM, 16, 200, seed=4)
    aborted.update(abort_after=750, expect="ABORTED")      # after the LOAD, in the VECTOR
    cases += [
        aborted,
        vector_case(config, "VECTOR ADD in place", VectorOp.ADD, 3, 40, dst=Buffer.ACT0, seed=9),
        vector_case(config, "VECTOR RMSNORM with eps_q out of range", VectorOp.RMSNORM, 2, 16,
                    eps_q=-5),
        vector_case(config, "VECTOR GATE's weights past the window", VectorOp.GATE, 2, 40,
                    params=WINDOW - 20),
    ]
    return cases


def linear_cases(config) -> list[dict]:
    """LINEAR programs with their data (`sim.programs.random_linear`): each refusal once, then
    larger passes than the random ones."""
    import random

    from moeaccel.sim.programs import LINEAR_WINDOW, random_linear

    cases = []
    for n, (name, fault, size) in enumerate([
            ("LINEAR with a PARAMS record refused", "params", 1),
            ("LINEAR with a gate-table token refused", "gates", 1),
            ("LINEAR with weights past the window", "window", 1),
            ("a larger LINEAR", None, 4), ("another larger LINEAR", None, 4)]):
        window = LINEAR_WINDOW * size
        blob, patches = random_linear(random.Random(100 + n), config, window, bad=0,
                                      fault=fault, size=size)
        cases.append(_case(name, blob, window=window, patches=patches))
    return cases


EXPERT_LOOP_CODES = {"count": "BAD_FIELD", "token": "BAD_FIELD", "descriptors": "DMA_WINDOW",
                     "descriptor": "BAD_FIELD", "table": "DMA_WINDOW", "weights": "DMA_WINDOW",
                     "params": "BAD_FIELD", "gather": "BAD_FIELD"}


def expert_loop_cases(config) -> list[dict]:
    """EXPERT_LOOP programs with their data (`sim.programs.random_expert_loop`): each refusal once,
    then larger loops than the random ones."""
    import random

    from moeaccel.sim.programs import EXPERT_LOOP_FAULTS, LINEAR_WINDOW, random_expert_loop

    assert set(EXPERT_LOOP_FAULTS) == set(EXPERT_LOOP_CODES)
    cases = []
    for n, (fault, size) in enumerate([(fault, 1) for fault in EXPERT_LOOP_FAULTS]
                                      + [(None, 3), (None, 3)]):
        for window in (LINEAR_WINDOW << k for k in range(5)):      # the first that holds it
            try:
                blob, patches = random_expert_loop(random.Random(200 + n), config, window, bad=0,
                                                   fault=fault, size=size)
                break
            except AssertionError:
                continue
        name = f"EXPERT_LOOP refusing: {fault}" if fault else f"a larger EXPERT_LOOP, {n}"
        cases.append(_case(name, blob, window=window, patches=patches))
    # a loop of five experts with tokens, run whole and aborted a quarter of the way through (by
    # the emulator's count): it starts no further expert
    from moeaccel.host.emulator import Emulator

    blob, patches = random_expert_loop(random.Random(250), config, 4 * LINEAR_WINDOW, bad=0,
                                       size=2, experts=5)
    emulator = Emulator(config, 4 * LINEAR_WINDOW)
    for at, data in patches:
        emulator.dram[at:at + len(data) // 2] = bytes.fromhex(data)
    quarter = emulator.run(blob).cycles // 4
    whole = _case("a loop of five experts", blob, window=4 * LINEAR_WINDOW, patches=patches)
    cases += [whole, dict(whole, name="a loop of five experts, aborted", abort_after=quarter,
                          expect="ABORTED")]
    return cases


ROUTE_CODES = {"requant": "BAD_FIELD", "bias": "BAD_FIELD", "logits": "DMA_WINDOW",
               "rows": "BAD_FIELD"}


def route_cases(config) -> list[dict]:
    """ROUTE programs with their data (`sim.programs.random_route`): each refusal once."""
    import random

    from moeaccel.sim.programs import LINEAR_WINDOW, ROUTE_FAULTS, random_route

    assert set(ROUTE_FAULTS) == set(ROUTE_CODES)
    cases = []
    for n, fault in enumerate(ROUTE_FAULTS):
        blob, patches = random_route(random.Random(300 + n), config, LINEAR_WINDOW, bad=0,
                                     fault=fault)
        cases.append(_case(f"ROUTE refusing: {fault}", blob, window=LINEAR_WINDOW,
                           patches=patches))
    return cases


ATTENTION_CODES = {"command": "BAD_FIELD", "window": "DMA_WINDOW"}
ATTENTION_ABORT_AFTER = 400     # cycles into a grouped-query call of about 1 800


def attention_cases(config) -> list[dict]:
    """ATTENTION programs over the window's random bytes (`sim.programs.random_attention`): each
    refusal once; then directed calls: grouped-query and causal over three query groups and a
    part (whole, and aborted a fifth of the way through), and rows as wide as the unit holds, at
    odd byte offsets."""
    import random

    from moeaccel.formats.attention import AttentionShape
    from moeaccel.sim.programs import ATTENTION_FAULTS, LINEAR_WINDOW, random_attention
    from moeaccel.sw.attention import AttentionParams

    assert set(ATTENTION_FAULTS) == set(ATTENTION_CODES)
    cases = []
    for n, fault in enumerate(ATTENTION_FAULTS):
        blob, patches = random_attention(random.Random(400 + n), config, LINEAR_WINDOW, fault=fault)
        cases.append(_case(f"ATTENTION refusing: {fault}", blob, window=LINEAR_WINDOW,
                           patches=patches))
    word, group = config.axi_data_bytes, config.attention_group
    widest = config.attention_row_words * word // 2
    for title, shape in (
            ("grouped-query, causal", AttentionShape(3 * group + 1, 3 * group + 3, 4, 2, 2 * word,
                                                     causal=True)),
            ("rows as wide as the unit holds", AttentionShape(group + 1, 5, 2, 2, widest))):
        scale = 2.0 / 74
        params = AttentionParams.from_scales(scale, scale, scale, scale, shape.head_dim)
        row_q, row_kv = shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
        program = Program(config).attention(
            shape, params, q=3, k=5 + shape.seq_q * row_q, v=7 + (shape.seq_q + shape.seq_kv)
            * row_q, o=LINEAR_WINDOW // 2 + 1).finish()
        cases.append(_case(f"ATTENTION {title}", program, window=LINEAR_WINDOW))
    aborted = dict(cases[-2], name="ATTENTION grouped-query, causal, aborted",
                   abort_after=ATTENTION_ABORT_AFTER, expect="ABORTED")
    return cases + [aborted]


def moe_layer_cases(config, tokens: int = 12) -> list[dict]:
    """Whole MoE layers as the compiler writes them (`compiler.emit.moe_layer_program`: ROUTE,
    EXPERT_LOOP, the shared expert's LINEARs and gate, the drain), each bundled tiny model dense and
    at the configuration's sparsest pattern, on random tokens."""
    import torch

    from moeaccel.compiler.emit import moe_layer_program
    from moeaccel.sw.models import TINY_MODELS, build_model
    from moeaccel.sw.quantized import quantize_pruned

    from dataclasses import replace

    from moeaccel.sw.reference import MoELayer, MoESpec
    from tests.test_moe_program import directed_logits

    def layer_case(title, layer, pattern="dense", count=tokens, logits=None):
        layer_q, generator = quantize_pruned(layer, pattern)
        x_q = layer_q.quantize_input(torch.randn(count, layer_q.spec.d_model,
                                                 generator=generator))
        program = moe_layer_program(config, layer_q, count, pattern,
                                    given_logits=logits is not None)
        window = -(-program.window_bytes // 4096) * 4096
        image = bytearray(window)
        program.load(image, x_q, logits)
        return _case(f"MoE layer {title}", program.program.encode(), window=window,
                     patches=[(0, bytes(image).hex())])

    cases = [layer_case(f"{name} {pattern}", build_model(name, seed=3), pattern)
             for name in TINY_MODELS for pattern in ("dense", str(config.patterns[-1]))]
    # the directed routings (given logits): one expert takes every token; every expert empty but
    # one (k = 1); k = E; one token
    torch.manual_seed(5)                                    # the directed logits' others
    mixtral = build_model("tiny-mixtral", seed=5)
    experts = mixtral.spec.n_experts
    cases.append(layer_case("tiny-mixtral, one expert takes every token", mixtral,
                            logits=directed_logits(tokens, experts, [5, 2])))
    single = build_model("tiny-mixtral", seed=5)
    single.spec = replace(single.spec, k=1)
    cases.append(layer_case("tiny-mixtral k=1, every expert empty but one", single,
                            logits=directed_logits(tokens, experts, [5])))
    torch.manual_seed(4)
    every = MoELayer(MoESpec(d_model=32, d_ff=32, n_experts=4, k=4)).eval()
    cases.append(layer_case("k = E = 4", every))
    cases.append(layer_case("tiny-qwen2-moe, one token", build_model("tiny-qwen2-moe", seed=3),
                            count=1))
    return cases


def run_top(config_name: str, parameters: dict):
    return run_cocotb(Accelerator(preset(config_name)), toplevel="accelerator",
                      test_module="moeaccel.sim.tb.top", build_key=config_name,
                      parameters={"config": config_name, **parameters}, timeout_s=1200)


@pytest.mark.sim
@pytest.mark.parametrize("config_name, random_programs, pipelines, linear, loops, routes, "
                         "attentions",
                         [("tiny", 60, 20, 40, 30, 30, 30), ("pynq-z2", 20, 10, 15, 10, 10, 10)])
def test_top_runs_programs_as_the_emulator_does(config_name, random_programs, pipelines, linear,
                                                loops, routes, attentions, tmp_path):
    report = tmp_path / "top.json"
    config = preset(config_name)
    cases = directed(config) + vector_cases(config) + linear_cases(config) + \
        expert_loop_cases(config) + route_cases(config) + attention_cases(config) + \
        moe_layer_cases(config)
    run_top(config_name, {"cases": cases, "random": random_programs, "pipelines": pipelines,
                          "linear": linear, "expert_loops": loops, "routes": routes,
                          "attentions": attentions, "report_file": str(report)})
    runs = {r["name"]: r for r in json.loads(report.read_text())}
    # an abort and the watchdog stop a long transfer at its next row: 64 rows of 16 beats each
    # would take over 1 000 cycles
    assert runs["aborted"]["cycles"] < ABORT_AFTER + 200, runs["aborted"]
    assert runs["a long load past the watchdog"]["cycles"] < 60 + 200
    assert all(runs[f"VECTOR {op.name}"]["code"] == "NONE" for op in VectorOp)
    assert runs["VECTOR RMSNORM with eps_q out of range"]["code"] == "BAD_FIELD"
    assert runs["VECTOR GATE's weights past the window"]["code"] == "DMA_WINDOW"
    assert all(r["code"] == "NONE" for name, r in runs.items() if name.startswith("pipeline"))
    assert runs["LINEAR with a PARAMS record refused"]["code"] == "BAD_FIELD"
    assert runs["LINEAR with a gate-table token refused"]["code"] == "BAD_FIELD"
    assert runs["LINEAR with weights past the window"]["code"] == "DMA_WINDOW"
    assert runs["a larger LINEAR"]["code"] == runs["another larger LINEAR"]["code"] == "NONE"
    passes = [r for name, r in runs.items() if name.startswith("LINEAR ")]
    assert sum(r["code"] == "NONE" for r in passes) >= 0.8 * linear
    for fault, code in EXPERT_LOOP_CODES.items():
        if fault == "gather" and (config.act_buffer_words // config.max_tokens + 1) \
                * config.act_word_bytes > config.max_d_model:
            code = "BAD_FIELD"          # rows that wide do not fit d_model: a token refused
        assert runs[f"EXPERT_LOOP refusing: {fault}"]["code"] == code, fault
    # aborted a quarter of the way through: it ends within the expert under way
    whole, aborted = runs["a loop of five experts"], runs["a loop of five experts, aborted"]
    assert whole["counters"]["top_experts_run"] == 5
    assert aborted["counters"]["top_experts_run"] < 5 and aborted["cycles"] < whole["cycles"]
    larger = [r for name, r in runs.items() if name.startswith("a larger EXPERT_LOOP")]
    assert all(r["code"] == "NONE" and r["counters"]["top_experts_run"] > 0 for r in larger)
    loops_run = [r for name, r in runs.items() if name.startswith("EXPERT_LOOP ")]
    assert sum(r["code"] == "NONE" for r in loops_run) >= 0.8 * loops
    for fault, code in ROUTE_CODES.items():
        assert runs[f"ROUTE refusing: {fault}"]["code"] == code, fault
    routed = [r for name, r in runs.items() if name.startswith("ROUTE ")]
    assert sum(r["code"] == "NONE" for r in routed) >= 0.7 * routes
    for fault, code in ATTENTION_CODES.items():
        assert runs[f"ATTENTION refusing: {fault}"]["code"] == code, fault
    called = [r for name, r in runs.items() if name.startswith("ATTENTION ")]
    assert sum(r["code"] == "NONE" for r in called) >= 0.7 * attentions
    assert runs["ATTENTION grouped-query, causal"]["code"] == "NONE"
    assert runs["ATTENTION rows as wide as the unit holds"]["code"] == "NONE"
    # an abort stops the call within a few cycles, every transaction it started finished
    assert runs["ATTENTION grouped-query, causal, aborted"]["cycles"] < ATTENTION_ABORT_AFTER + 100
    layers = {name: r for name, r in runs.items() if name.startswith("MoE layer")}
    assert layers and all(r["code"] == "NONE" and r["counters"]["top_experts_run"] > 0
                          for r in layers.values()), layers
    codes = {r["code"] for r in runs.values()}
    assert codes >= {"NONE", "DEADLOCK", "BAD_FIELD", "DMA_WINDOW", "NO_FINISH",
                     "ILLEGAL_OPCODE", "WATCHDOG", "ABORTED"}, codes


def test_the_directed_programs_do_not_depend_on_the_schedule():
    """Each directed program's result is the same whatever order its queues' instructions run in
    (the emulator's parallel and random schedules; the serial one is the serialise mode, where a
    program whose loads wait on later instructions deadlocks): a program whose tokens leave a
    race would let the RTL and the emulator each be right and still differ."""
    import random

    from moeaccel.host.emulator import Emulator

    config = preset("tiny")
    for case in directed(config) + vector_cases(config) + attention_cases(config):
        program = bytes.fromhex(case["program"])
        results = set()
        for schedule, seed in [("parallel", 0)] + [("random", n) for n in range(5)]:
            emulator = Emulator(config, case["window"])
            emulator.dram[:] = random.Random(case["window"]).randbytes(case["window"])
            for at, data in case.get("patches", []):
                data = bytes.fromhex(data)
                emulator.dram[at:at + len(data)] = data
            run = emulator.run(program, schedule=schedule, seed=seed)
            results.add((run.status, run.instruction, bytes(emulator.dram)))
        assert len(results) == 1, case["name"]


def test_the_speed_program_runs_on_the_emulator():
    """`python -m moeaccel.sim.speed`'s program is one the emulator runs to FINISH, moving every
    row."""
    from moeaccel.host.emulator import Emulator
    from moeaccel.sim.speed import ROW_BYTES, ROWS, streaming_program

    config = preset("pynq-z2")
    emulator = Emulator(config, 2 * ROWS * ROW_BYTES)
    emulator.dram[:ROWS * ROW_BYTES] = bytes(range(256)) * (ROWS * ROW_BYTES // 256)
    assert emulator.run(streaming_program(config)).ok
    assert emulator.dram[ROWS * ROW_BYTES:] == emulator.dram[:ROWS * ROW_BYTES]
