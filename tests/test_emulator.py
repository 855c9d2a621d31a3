"""The ISA emulator: attention programs bit-exact against the golden model, the same memory under
every schedule of the queues, and every failure reported with its error code, never a hang and
never a byte outside the DMA window."""

import random

import pytest
import torch

from moeaccel import isa
from moeaccel.config import preset
from moeaccel.formats.buffers import act_row_bytes, buffer_bytes
from moeaccel.formats.instructions import QUEUE_DEPTH, bodies
from moeaccel.host.emulator import SCHEDULES, Emulator
from moeaccel.isa import Buffer, ErrorCode, Opcode, Program
from moeaccel.sim.programs import random_program
from moeaccel.sw.attention import AttentionShape, as_words, attention_fixed, random_inputs

CONFIG = preset("tiny")
WORD = CONFIG.axi_data_bytes


def padded(t, word=WORD):
    rows, heads, dim = t.shape
    return torch.tensor(as_words(t, word)).reshape(rows, heads, -1)


def image(*tensors) -> bytes:
    return b"".join(padded(t).to(torch.int8).numpy().tobytes() for t in tensors)


def attention_program(config, shape, params, base=0, finish=True, checked=True):
    word = config.axi_data_bytes
    dim = shape.head_words(word) * word
    q = base
    k = q + shape.seq_q * shape.heads * dim
    v = k + shape.seq_kv * shape.kv_heads * dim
    o = v + shape.seq_kv * shape.kv_heads * dim
    program = Program(config, checked=checked).attention(shape, params, q=q, k=k, v=v, o=o)
    return (program.finish() if finish else program), o


@pytest.mark.parametrize("shape", [AttentionShape(6, 9, 4, 2, 12, causal=True),
                                   AttentionShape(1, 17, 2, 1, 16, causal=True),
                                   AttentionShape(5, 3, 2, 2, 8)], ids=str)
def test_attention_program_is_bit_exact(shape):
    q, k, v, params = random_inputs(shape, "random", seed=1)
    emulator = Emulator(CONFIG, 1 << 16)
    data = image(q, k, v)
    emulator.dram[:len(data)] = data
    program, o = attention_program(CONFIG, shape, params)
    result = emulator.run(program.encode())
    assert result.ok, result
    expected = padded(attention_fixed(q, k, v, shape, params)).to(torch.int8).numpy().tobytes()
    assert bytes(emulator.dram[o:o + len(expected)]) == expected


def pipelined_copy(config, blocks: int, block_bytes: int, source: int, dest: int) -> Program:
    """Load block i into one half of ACT0 while block i-1 is stored from the other. Tokens: compute
    waits for its load, the store for compute; the store of block i-1 tells compute i (which tells
    the load of block i+1) that its half is free again."""
    program = Program(config)
    for i in range(blocks):
        half = (i % 2) * block_bytes
        relay = 1 <= i and i + 1 < blocks           # store i-1 -> compute i -> load i+1
        program.load(Buffer.ACT0, dram=source + i * block_bytes, row_bytes=block_bytes, sram=half,
                     pop_next=i >= 2, push_next=True)
        program.add(Opcode.NOP, pop_prev=True, push_next=True, pop_next=relay, push_prev=relay)
        program.store(Buffer.ACT0, dram=dest + i * block_bytes, row_bytes=block_bytes, sram=half,
                      pop_prev=True, push_prev=i + 2 < blocks)
    return program


def test_every_schedule_gives_the_same_memory():
    shape = AttentionShape(4, 8, 2, 1, 8, causal=True)
    q, k, v, params = random_inputs(shape, "peaked", seed=2)
    results = {}
    for schedule in SCHEDULES:
        emulator = Emulator(CONFIG, 1 << 15)
        emulator.dram[:] = random.Random(1).randbytes(1 << 15)
        data = image(q, k, v)
        emulator.dram[:len(data)] = data
        program = pipelined_copy(CONFIG, 6, 512, 8192, 16384)
        attention, _ = attention_program(CONFIG, shape, params, finish=False)
        program.instructions += attention.instructions
        program.finish()
        result = emulator.run(program.encode(), schedule=schedule, seed=3)
        assert result.ok, (schedule, result)
        results[schedule] = (bytes(emulator.dram), result.cycles)
    assert results["parallel"][0] == results["serial"][0] == results["random"][0]
    assert bytes(results["serial"][0][16384:16384 + 3072]) == bytes(results["serial"][0][8192:8192 + 3072])
    assert results["parallel"][1] < results["serial"][1]        # the tokens let queues overlap


@pytest.mark.parametrize("build,code", [
    (lambda p: p.load(Buffer.ACT0, dram=(1 << 12) - 8, row_bytes=16).finish(), ErrorCode.DMA_WINDOW),
    (lambda p: p.store(Buffer.OUT, dram=0, rows=3, row_bytes=64, dram_stride=4000).finish(),
     ErrorCode.DMA_WINDOW),
    (lambda p: p.load(Buffer.TABLE, dram=0, row_bytes=257).finish(), ErrorCode.BAD_FIELD),
    (lambda p: p.add(Opcode.NOP, pop_prev=True).finish(), ErrorCode.DEADLOCK),
    (lambda p: p.load(Buffer.ACT0, dram=0, row_bytes=8, push_prev=True).finish(),
     ErrorCode.BAD_FIELD),
    (lambda p: p.load(Buffer.ACT0, dram=0, row_bytes=8), ErrorCode.NO_FINISH),
    (lambda p: p.load(Buffer.ACT0, dram=0, rows=64, row_bytes=64).finish(), ErrorCode.WATCHDOG),
])
def test_failures_report_their_error_code(build, code):
    emulator = Emulator(CONFIG, 1 << 12, watchdog_cycles=400)
    result = emulator.run(build(Program(CONFIG, checked=False)).encode())
    assert result.status is code, result
    assert len(emulator.dram) == 1 << 12


def test_an_illegal_opcode_is_reported():
    blob = bytearray(Program(CONFIG).sync().finish().encode())
    blob[isa.INSTRUCTION_BYTES] = 0x0E
    result = Emulator(CONFIG, 4096).run(bytes(blob))
    assert (result.status, result.instruction) == (ErrorCode.ILLEGAL_OPCODE, 1)


def test_an_attention_call_the_unit_cannot_hold_is_refused():
    """By the emulator as the hardware refuses it (BAD_FIELD), and by the Program builder before
    anything runs: both with the unit's own reason (`formats.attention.check`)."""
    shape = AttentionShape(4, 4, 4, 4, 64)             # 32 words a row; tiny holds 16
    q, k, v, params = random_inputs(AttentionShape(4, 4, 2, 2, 8), "random")
    program, _ = attention_program(CONFIG, shape, params, checked=False)
    result = Emulator(CONFIG, 1 << 16).run(program.encode())
    assert result.status is ErrorCode.BAD_FIELD and "more than the 16" in result.message
    with pytest.raises(isa.ProgramError, match=r"^instruction 0 \(ATTENTION\): the tiny "
                                               r"configuration refuses rows of 4 heads x 8 words, "
                                               r"more than the 16 words"):
        attention_program(CONFIG, shape, params)


def test_random_programs_end_with_a_defined_code():
    """2 000 random programs, each on every schedule: no hang, no exception, no byte written
    outside the window; every run ends with an error code."""
    rng = random.Random(2026)
    window = 4096
    codes = {}
    for n in range(2000):
        blob = random_program(rng, CONFIG, window)
        schedule = SCHEDULES[n % len(SCHEDULES)]
        emulator = Emulator(CONFIG, window, watchdog_cycles=20_000)
        emulator.dram[:] = rng.randbytes(window)
        result = emulator.run(blob, schedule=schedule, seed=n)
        assert isinstance(result.status, ErrorCode)
        assert len(emulator.dram) == window
        codes[result.status] = codes.get(result.status, 0) + 1
    assert set(codes) >= {ErrorCode.NONE, ErrorCode.DMA_WINDOW, ErrorCode.BAD_FIELD,
                          ErrorCode.DEADLOCK, ErrorCode.NO_FINISH}, codes


def test_buffers_follow_the_configuration():
    sizes = buffer_bytes(preset("pynq-z2"))
    assert sizes[Buffer.ACT0] == preset("pynq-z2").act_buffer_bytes and sizes[Buffer.TABLE] == 256


def test_instructions_before_an_undecodable_one_run():
    """The fetch unit stops at the bad word; what came before it has run."""
    emulator = Emulator(CONFIG, 4096)
    emulator.dram[:64] = bytes(range(64))
    blob = bytearray(Program(CONFIG)
                     .load(Buffer.ACT0, dram=0, row_bytes=64, push_next=True)
                     .add(Opcode.NOP, pop_prev=True, push_next=True)
                     .store(Buffer.ACT0, dram=1024, row_bytes=64, pop_prev=True)
                     .sync().finish().encode())
    blob[3 * isa.INSTRUCTION_BYTES] = 0x0F                 # the SYNC becomes an illegal opcode
    result = emulator.run(bytes(blob))
    assert (result.status, result.instruction) == (ErrorCode.ILLEGAL_OPCODE, 3)
    assert bytes(emulator.dram[1024:1088]) == bytes(range(64))


def test_route_cycles_reproduce_the_router_benchmark():
    """pynq-z2, 256 tokens, E = 64, k = 8, softmax_topk: the cycles `moeaccel bench router`
    measured with the logits streamed in (47 680) and with the router's GEMM over d_model 256
    (165 696), as docs/figures.json records them (docs/router.md); the top adds its port's
    cycles."""
    from moeaccel.cycles import ROUTE_PORT_CYCLES, instruction_cycles, router_cycles
    from moeaccel.figures import figure
    from moeaccel.formats.router import RouterMode
    config = preset("pynq-z2")
    base = dict(tokens=256, experts=64, k=8, mode=RouterMode.SOFTMAX_TOPK, groups=1,
                group_size=0, topk_groups=1, compute=0, chunks=0)
    streamed = {"command": base, "row_words": 0, "logits": 0}
    gemm = {"command": dict(base, compute=1, chunks=256 // config.router_lanes),
            "row_words": 256 // config.act_word_bytes, "logits": 0}
    name = "router T=256 E=64 k=8 softmax_topk, "
    # on the top, the port checks an expert's records a cycle each besides (tests/test_top_cycles)
    port = base["experts"] + ROUTE_PORT_CYCLES
    assert router_cycles(streamed["command"]) == \
        figure(name + "logits streamed")["measured"]["cycles"] == \
        instruction_cycles(config, Opcode.ROUTE, streamed) - port
    assert router_cycles(gemm["command"]) == figure(name + "GEMM D=256")["measured"]["cycles"] \
        == instruction_cycles(config, Opcode.ROUTE, gemm) - port


@pytest.mark.parametrize("tokens, sparsity", [(128, "dense"), (128, "2:4"), (32, "dense")])
def test_linear_cycles_reproduce_the_expert_ffn_benchmark(tokens, sparsity):
    """A SwiGLU expert (d_model 256, d_ff 512) as two LINEAR instructions takes the cycles
    `moeaccel bench expert-ffn --tokens T --d-model 256 --d-ff 512 [--sparsity 2:4]` measured in RTL
    simulation on pynq-z2 (394 014, 197 094, 99 102: docs/figures.json), and on the top its
    port's cycles more."""
    from moeaccel.compiler.plan import plan_pass
    from moeaccel.cycles import (FFN_DRAM_LEAD_CYCLES, FFN_PORT_CYCLES, WEIGHT_LEAD_CYCLES,
                                 ffn_pass_cycles, instruction_cycles, table_copy_cycles)
    from moeaccel.figures import figure
    measured = figure(f"expert-ffn T={tokens} D=256 F=512 swiglu {sparsity}")["measured"]["cycles"]
    config = preset("pynq-z2")
    first = plan_pass(config, tokens, 256, 512, sparsity, swiglu=True, activation=True,
                      to_buffer=True)
    down = plan_pass(config, tokens, 512, 256, sparsity, src=1, to_buffer=True)
    program = Program(config).linear(first.command()).linear(down.command())
    passes = [ins.fields["command"] for ins in program]
    assert sum(ffn_pass_cycles(config, command) for command in passes) == measured
    # on the top: the port's checks, the table's copy, and the weights' lead through its DMA
    port = sum(FFN_PORT_CYCLES + c["tiles"] + 1 + FFN_DRAM_LEAD_CYCLES - WEIGHT_LEAD_CYCLES
               for c in passes) + table_copy_cycles(config)
    assert sum(instruction_cycles(config, ins.opcode, ins.fields) for ins in program) \
        == measured + port


def test_expert_loop_cycles_skip_empty_experts():
    """The EXPERT_LOOP timing model (held to the top by tests/test_top_cycles.py): more than the
    expert's two passes as measured in RTL, a count's read for an empty expert, the same for
    every expert with the same tokens; `prefetch` changes nothing until the top acts on it."""
    from moeaccel.cycles import LOOP_COUNT_CYCLES, expert_loop_cycles
    from moeaccel.figures import figure
    config = preset("pynq-z2")
    passes = figure("expert-ffn T=32 D=256 F=512 swiglu dense")["measured"]["cycles"]
    fields = dict(experts=8, table=0, d_model=256, d_ff=512, pattern=0, swiglu=1, prefetch=0)
    empty = expert_loop_cycles(config, fields, [0] * 8)
    assert empty == 1 + 8 * LOOP_COUNT_CYCLES
    one = expert_loop_cycles(config, fields, [0, 0, 0, 32, 0, 0, 0, 0])
    assert one - empty > passes                       # the passes, their checks and transfers
    serial = expert_loop_cycles(config, fields, [32] * 8)
    assert serial - empty == 8 * (one - empty)
    assert expert_loop_cycles(config, dict(fields, prefetch=1), [32] * 8) == serial


def test_preloaded_weights_give_the_streamed_result():
    """A pass whose weights the load queue put in WEIGHT (while the pass before computed, with
    tokens) gives the bytes of the same pass streaming them from DRAM, in fewer cycles."""
    from moeaccel.compiler.plan import pass_operands, plan_pass
    from moeaccel.sw.quantized import QuantizedLinear
    from moeaccel.compiler.emit import params_bytes
    torch.manual_seed(0)
    layer = QuantizedLinear.from_float(torch.randn(40, 24), torch.randn(40) * 0.1, 0.02, 0.05)
    step = plan_pass(CONFIG, 6, 24, 40, "dense", to_buffer=True)
    operands = pass_operands(step, layer)
    weights, params = operands.blocks.data, params_bytes(operands)
    x_q = torch.randint(-128, 128, (6, 24))
    row = act_row_bytes(CONFIG, 24)
    out_row = act_row_bytes(CONFIG, 40)
    layout = {"x": 0, "w": 1024, "p": 1024 + len(weights), "y": 4096}

    def run(preloaded: bool):
        emulator = Emulator(CONFIG, 8192)
        emulator.dram[0:6 * 24] = x_q.to(torch.int8).numpy().tobytes()
        emulator.dram[layout["w"]:layout["w"] + len(weights)] = weights
        emulator.dram[layout["p"]:layout["p"] + len(params)] = params
        program = Program(CONFIG)
        program.load(Buffer.ACT0, dram=0, rows=6, row_bytes=24, sram_stride=row)
        program.load(Buffer.PARAMS, dram=layout["p"], row_bytes=len(params))
        if preloaded:
            program.load(Buffer.WEIGHT, dram=layout["w"], row_bytes=len(weights))
        program.instructions[-1] = isa.Instruction(**{**program.instructions[-1].__dict__,
                                                      "push_next": True})
        program.linear(step.command(), weights=layout["w"], preloaded=preloaded, pop_prev=True,
                       push_next=True)
        program.store(Buffer.ACT1, dram=layout["y"], rows=6, row_bytes=40, sram_stride=out_row,
                      pop_prev=True).finish()
        result = emulator.run(program.encode())
        assert result.ok, result.message
        got = torch.frombuffer(bytearray(emulator.dram[layout["y"]:layout["y"] + 240]),
                               dtype=torch.int8).reshape(6, 40).to(torch.int64)
        return got, result

    streamed, streamed_run = run(False)
    preloaded, preloaded_run = run(True)
    assert torch.equal(streamed, layer(x_q)) and torch.equal(preloaded, streamed)
    assert preloaded_run.busy_cycles[isa.Queue.COMPUTE] < streamed_run.busy_cycles[isa.Queue.COMPUTE]


def test_the_next_experts_weights_load_while_this_one_computes():
    """Double buffering written with tokens: the load queue fills WEIGHT's second bank with the next
    pass's packed words while the compute queue runs the pass whose words are in the first. Same
    bytes under every schedule; in parallel the load hides behind the compute."""
    from moeaccel.compiler.plan import pass_operands, plan_pass
    from moeaccel.sw.quantized import QuantizedLinear
    from moeaccel.compiler.emit import params_bytes
    torch.manual_seed(1)
    first = QuantizedLinear.from_float(torch.randn(32, 64), None, 0.02, 0.05)
    second = QuantizedLinear(first.weight[:, torch.randperm(64)], first.bias, first.multiplier,
                             first.shift, first.weight_scale, 0.02, 0.05)    # same parameters
    step = plan_pass(CONFIG, 24, 64, 32, "dense", to_buffer=True)
    words = [pass_operands(step, layer).blocks.data for layer in (first, second)]
    params = params_bytes(pass_operands(step, first))
    x_q = torch.randint(-128, 128, (24, 64))
    bank = CONFIG.weight_buffer_bytes
    w0, w1, p, y0, y1 = 4096, 4096 + len(words[0]), 12288, 16384, 20480
    program = (Program(CONFIG)
               .load(Buffer.ACT0, dram=0, rows=24, row_bytes=64, sram_stride=act_row_bytes(
                   CONFIG, 64))
               .load(Buffer.PARAMS, dram=p, row_bytes=len(params))
               .load(Buffer.WEIGHT, dram=w0, row_bytes=len(words[0]), push_next=True)
               .load(Buffer.WEIGHT, dram=w1, row_bytes=len(words[1]), sram=bank, push_next=True)
               .linear(step.command(), preloaded=True, pop_prev=True, push_next=True)
               .store(Buffer.ACT1, dram=y0, rows=24, row_bytes=32, pop_prev=True, push_prev=True)
               .linear(step.command(), preloaded=True, sram=bank, pop_prev=True, pop_next=True,
                       push_next=True)
               .store(Buffer.ACT1, dram=y1, rows=24, row_bytes=32, pop_prev=True)
               .finish())
    runs = {}
    for schedule in SCHEDULES:
        emulator = Emulator(CONFIG, 1 << 15)
        emulator.dram[:24 * 64] = x_q.to(torch.int8).numpy().tobytes()
        for at, payload in ((w0, words[0]), (w1, words[1]), (p, params)):
            emulator.dram[at:at + len(payload)] = payload
        result = emulator.run(program.encode(), schedule=schedule, seed=5)
        assert result.ok, result.message
        got = [torch.frombuffer(bytearray(emulator.dram[at:at + 24 * 32]), dtype=torch.int8)
               .reshape(24, 32).to(torch.int64) for at in (y0, y1)]
        assert torch.equal(got[0], first(x_q)) and torch.equal(got[1], second(x_q)), schedule
        runs[schedule] = result.cycles
    assert runs["parallel"] < runs["serial"]


@pytest.mark.parametrize("loads", [QUEUE_DEPTH, QUEUE_DEPTH + 1])
def test_a_full_queue_holds_fetch(loads):
    """Loads that wait for the compute queue's tokens, then the compute instructions that push
    them: with more than QUEUE_DEPTH of them the computes are never dispatched."""
    program = Program(CONFIG)
    for n in range(loads):
        program.load(Buffer.ACT0, dram=64 * n, row_bytes=64, pop_next=True)
    for _ in range(loads):
        program.add(Opcode.NOP, push_prev=True)
    blob = program.finish().encode()
    for schedule in ("parallel", "random"):        # serial: the first load waits for ever
        result = Emulator(CONFIG, 4096).run(blob, schedule)
        expected = ErrorCode.NONE if loads <= QUEUE_DEPTH else ErrorCode.DEADLOCK
        assert result.status is expected, (schedule, result)
        if not result.ok:
            assert result.instruction == 0


def test_random_pipelines_end_alike_on_every_schedule():
    """`sim.programs.random_pipeline`, which the top's regression runs in parallel: its result is
    the same on every schedule, so the RTL's timing cannot change it."""
    from moeaccel.sim.programs import random_pipeline

    rng = random.Random(7)
    for n in range(60):
        blob = random_pipeline(rng, CONFIG, 1 << 14, rng.randint(1, 14))
        ends = set()
        for schedule in SCHEDULES:
            emulator = Emulator(CONFIG, 1 << 14)
            emulator.dram[:] = random.Random(n).randbytes(1 << 14)
            result = emulator.run(blob, schedule, seed=n)
            assert result.ok, result
            ends.add(bytes(emulator.dram))
        assert len(ends) == 1, n
