"""Whole MoE layers as programs (`compiler.emit.moe_layer_program`) on the emulator, bit for bit against
`sw.quantized.QuantizedMoE`: every bundled router variant (Mixtral, Qwen2-MoE with its gated shared
expert, Switch, DeepSeek-V3 with groups and an ungated shared expert, OLMoE with GELU), dense and
2:4, under every schedule the dependency tokens allow; and the directed routings: one expert takes
every token, every expert empty but one, k = E."""

import pytest
import torch

from moeaccel import isa
from moeaccel.config import preset
from moeaccel.host.emulator import SCHEDULES, Emulator
from moeaccel.compiler.emit import moe_layer_program
from moeaccel.isa import ErrorCode, Opcode
from moeaccel.sw import numerics as nx
from moeaccel.sw.models import TINY_MODELS, build_model
from moeaccel.sw.quantized import QuantizedMoE, quantize_pruned
from moeaccel.sw.reference import MoELayer, MoESpec

CONFIG = preset("tiny")


def quantized(layer: MoELayer, pattern: str = "dense", seed: int = 1):
    return quantize_pruned(layer, pattern, seed)


def run(program, x_q, schedule="parallel", seed=0, logits=None, config=CONFIG):
    emulator = Emulator(config, program.window_bytes)
    program.load(emulator.dram, x_q, logits)
    result = emulator.run(program.program.encode(), schedule=schedule, seed=seed)
    assert result.ok, result.message
    return program.result(emulator.dram), result


@pytest.mark.parametrize("pattern", ["dense", "2:4"])
@pytest.mark.parametrize("name", list(TINY_MODELS))
def test_bundled_layers_match_the_golden_model_under_every_schedule(name, pattern):
    layer_q, generator = quantized(build_model(name, seed=3), pattern)
    tokens = 24
    x_q = layer_q.quantize_input(torch.randn(tokens, layer_q.spec.d_model, generator=generator))
    expected = layer_q(x_q)
    program = moe_layer_program(CONFIG, layer_q, tokens, pattern)
    assert len(program.program) <= 20                  # a layer is tens of instructions
    for n, schedule in enumerate(SCHEDULES):
        got, result = run(program, x_q, schedule, seed=n)
        assert torch.equal(got, expected), f"{name} {pattern} {schedule}: " \
            f"{int((got != expected).sum())} of {expected.numel()} values differ"
    assert expected.abs().max() > 0                     # a result with something in it


def test_the_shared_expert_and_its_gate_are_in_the_result():
    """Qwen2-MoE: the program's result moves when only the shared expert's gate weights change."""
    layer_q, generator = quantized(build_model("tiny-qwen2-moe", seed=3))
    x_q = layer_q.quantize_input(torch.randn(8, 32, generator=generator))
    program = moe_layer_program(CONFIG, layer_q, 8)
    before, _ = run(program, x_q)
    layer_q.shared_gate.weight = -layer_q.shared_gate.weight
    program = moe_layer_program(CONFIG, layer_q, 8)
    after, _ = run(program, x_q)
    assert torch.equal(after, layer_q(x_q)) and not torch.equal(before, after)


def directed_logits(tokens: int, experts: int, chosen: list[int]) -> torch.Tensor:
    """Q8 logits that make every token prefer the experts `chosen`, best first."""
    logits = torch.randint(-512, 0, (tokens, experts))
    for rank, expert in enumerate(chosen):
        logits[:, expert] = 1024 - 64 * rank
    return logits


def expected_with(layer_q: QuantizedMoE, x_q, logits) -> torch.Tensor:
    routing = layer_q.router.route(logits)
    return nx.requantize(layer_q.accumulate(x_q, routing), layer_q.combine_multiplier,
                         layer_q.combine_shift)


@pytest.mark.parametrize("case", ["one_expert_takes_every_token", "all_empty_but_one"])
@pytest.mark.parametrize("name", ["tiny-mixtral", "tiny-qwen2-moe"])
def test_directed_routings(name, case):
    layer = build_model(name, seed=5)
    if case == "all_empty_but_one":                   # k = 1: one expert has every token
        from dataclasses import replace
        layer.spec = replace(layer.spec, k=1)
    layer_q, generator = quantized(layer)
    spec, tokens = layer_q.spec, 16
    x_q = layer_q.quantize_input(torch.randn(tokens, spec.d_model, generator=generator))
    logits = directed_logits(tokens, spec.n_experts, [5, 2][:spec.k])
    routing = layer_q.router.route(logits)
    counts = torch.bincount(routing.experts.reshape(-1), minlength=spec.n_experts)
    assert counts[5] == tokens
    if case == "all_empty_but_one":
        assert int((counts > 0).sum()) == 1
    program = moe_layer_program(CONFIG, layer_q, tokens, given_logits=True)
    expected = expected_with(layer_q, x_q, logits)
    for schedule in SCHEDULES:
        got, _ = run(program, x_q, schedule, logits=logits)
        assert torch.equal(got, expected), f"{case} {schedule}"


def test_k_equal_to_the_number_of_experts():
    spec = MoESpec(d_model=32, d_ff=32, n_experts=4, k=4, router="softmax_topk_renorm")
    torch.manual_seed(4)
    layer_q, generator = quantized(MoELayer(spec).eval())
    x_q = layer_q.quantize_input(torch.randn(12, 32, generator=generator))
    program = moe_layer_program(CONFIG, layer_q, 12)
    for schedule in SCHEDULES:
        got, _ = run(program, x_q, schedule)
        assert torch.equal(got, layer_q(x_q))


def test_one_token():
    layer_q, generator = quantized(build_model("tiny-mixtral", seed=2))
    x_q = layer_q.quantize_input(torch.randn(1, 32, generator=generator))
    got, _ = run(moe_layer_program(CONFIG, layer_q, 1), x_q)
    assert torch.equal(got, layer_q(x_q))


def test_serialising_every_token_gives_identical_results():
    """The same program with every dependency token set on every instruction where its queue has
    the neighbour (so each instruction waits for the one before it in program order) gives the same
    bytes, and takes more cycles."""
    layer_q, generator = quantized(build_model("tiny-qwen2-moe", seed=7))
    x_q = layer_q.quantize_input(torch.randn(20, 32, generator=generator))
    program = moe_layer_program(CONFIG, layer_q, 20)
    got, parallel = run(program, x_q)
    serial_program = isa.Program(CONFIG)
    serial_program.instructions = _serialised(program.program.instructions)
    program.program = serial_program
    serial_got, serial = run(program, x_q)
    assert torch.equal(got, serial_got) and torch.equal(got, layer_q(x_q))
    assert serial.cycles >= parallel.cycles


def _serialised(instructions):
    """Each instruction after the one before it has ended: its tokens replaced by a SYNC after
    every instruction."""
    from dataclasses import replace
    out = []
    for instruction in instructions:
        if instruction.opcode is Opcode.FINISH:
            out.append(instruction)
            continue
        bare = replace(instruction, pop_prev=False, pop_next=False, push_prev=False,
                       push_next=False)
        out += [bare, isa.Instruction(Opcode.SYNC, {})]
    return out


def test_a_missing_token_is_caught_by_some_schedule():
    """Without the token that makes the shared expert's parameters wait for the expert loop, some
    schedule loads them too early, and the result differs: the schedules do test the tokens."""
    from dataclasses import replace
    layer_q, generator = quantized(build_model("tiny-qwen2-moe", seed=7))
    x_q = layer_q.quantize_input(torch.randn(20, 32, generator=generator))
    program = moe_layer_program(CONFIG, layer_q, 20)
    instructions = program.program.instructions
    loop = next(i for i, ins in enumerate(instructions) if ins.opcode is Opcode.EXPERT_LOOP)
    waiting = next(i for i, ins in enumerate(instructions) if ins.pop_next)
    instructions[loop] = replace(instructions[loop], push_prev=False)
    instructions[waiting] = replace(instructions[waiting], pop_next=False)
    results = []
    for seed in range(8):
        emulator = Emulator(CONFIG, program.window_bytes)
        program.load(emulator.dram, x_q)
        outcome = emulator.run(instructions, schedule="random", seed=seed)
        results.append(outcome.ok and torch.equal(program.result(emulator.dram), layer_q(x_q)))
    assert not all(results)


def test_a_layer_the_configuration_cannot_hold_is_refused():
    layer_q, _ = quantized(build_model("tiny-mixtral"))
    with pytest.raises(ValueError, match="expert_capacity"):
        moe_layer_program(CONFIG, layer_q, CONFIG.dispatch_capacity + 1)
    spec = MoESpec(d_model=32, d_ff=32, n_experts=4, k=2)
    small = CONFIG.replace(max_experts=2, max_k=2, max_groups=1)
    layer_q, _ = quantized(MoELayer(spec).eval())
    with pytest.raises(ValueError, match=r"^the tiny configuration's router refuses this layer: "
                                         r"experts=4 \(1 \.\. 2\)"):
        moe_layer_program(small, layer_q, 4)


def test_expert_descriptor_outside_the_window_is_refused():
    layer_q, generator = quantized(build_model("tiny-mixtral"))
    x_q = layer_q.quantize_input(torch.randn(4, 32, generator=generator))
    program = moe_layer_program(CONFIG, layer_q, 4)
    instructions = program.program.instructions
    loop = next(i for i, ins in enumerate(instructions) if ins.opcode is Opcode.EXPERT_LOOP)
    from dataclasses import replace
    instructions[loop] = replace(instructions[loop], fields={
        **instructions[loop].fields, "table": program.window_bytes - 8})
    emulator = Emulator(CONFIG, program.window_bytes)
    program.load(emulator.dram, x_q)
    result = emulator.run(instructions)
    assert result.status is ErrorCode.DMA_WINDOW and "descriptor" in result.message
