"""One legality check per unit: the RTL's refusal (`error` after a command's handshake) agrees with
`check(config, command)` of `moeaccel.formats` on random commands, in Amaranth's simulator.

Commands are drawn near the configuration's limits, where the rules bite: each field is 0, 1, a
value around one of the configuration's limits, the largest its width holds, or random; 7 in 10
start from a legal command with one or two fields changed. A command the check takes must start
the unit (``busy``); the unit is then reset for the next one.
"""

import random

import pytest
from amaranth.hdl import Module, ResetInserter, Signal
from amaranth.lib import data, enum
from amaranth.sim import Simulator

from moeaccel.config import preset
from moeaccel.formats import attention, expert_ffn, router
from moeaccel.formats.router import RouterMode

COMMANDS = 500


def _limits(config) -> list[int]:
    """The configuration's counts and capacities, where a field's legal range ends."""
    values = [getattr(config, name) for name in dir(config)
              if not name.startswith("_") and isinstance(getattr(config, name), int)
              and not isinstance(getattr(config, name), bool)]
    return sorted({v for v in values if v > 0})


def _draw(rng: random.Random, shape, limits) -> int:
    width = shape.width
    top = (1 << width) - 1
    choice = rng.random()
    if choice < 0.2:
        return min(top, rng.choice([0, 1, 2]))
    if choice < 0.6:
        return max(0, min(top, rng.choice(limits) + rng.choice([-1, 0, 1])))
    if choice < 0.7:
        return top
    return rng.randint(0, top)


def random_command(rng: random.Random, layout: data.StructLayout, config, legal: dict) -> dict:
    limits = _limits(config)
    names = [name for name, _ in layout]
    if rng.random() < 0.7:
        command = dict(legal)
        changed = rng.sample(names, rng.choice([1, 1, 2]))
    else:
        command, changed = {}, names
    for name, field in layout:
        if name not in changed and name in command:
            continue
        shape = field.shape
        if isinstance(shape, type) and issubclass(shape, enum.Enum):
            command[name] = rng.choice(list(shape))
        else:
            command[name] = _draw(rng, shape, limits)
    return command


def agree(unit, layout, check, config, legal: dict, seed: int) -> tuple[int, int]:
    """Offer `COMMANDS` random commands; return how many the RTL refused and took."""
    rng = random.Random(seed)
    reset = Signal()
    top = Module()
    top.submodules.unit = ResetInserter(reset)(unit)
    commands = [random_command(rng, layout, config, legal) for _ in range(COMMANDS)]
    counts = {"refused": 0, "taken": 0}

    async def bench(ctx):
        for index, command in enumerate(commands):
            ctx.set(unit.cmd.payload.as_value(), layout.const(command).as_bits())
            ctx.set(unit.cmd.valid, 1)
            await ctx.tick()
            ctx.set(unit.cmd.valid, 0)
            reasons = check(config, command)
            refused, busy = ctx.get(unit.error), ctx.get(unit.busy)
            assert bool(refused) == bool(reasons), (index, command, reasons)
            assert bool(busy) == (not reasons), (index, command)
            counts["refused" if refused else "taken"] += 1
            ctx.set(reset, 1)
            await ctx.tick()
            ctx.set(reset, 0)

    sim = Simulator(top)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return counts["refused"], counts["taken"]


CONFIGS = ["tiny", "pynq-z2"]


@pytest.mark.parametrize("name", CONFIGS)
def test_expert_ffn_refuses_exactly_what_check_refuses(name):
    from moeaccel.hw.expert_ffn import FFNEngine
    config = preset(name)
    legal = expert_ffn.pass_command(config, 3, config.max_d_model, config.max_d_ff,
                                    config.patterns[-1], swiglu=True, activation=True,
                                    to_buffer=True)
    assert not expert_ffn.check(config, legal)
    refused, taken = agree(FFNEngine(config), expert_ffn.ffn_command(config), expert_ffn.check,
                           config, legal, seed=11)
    assert refused > 50 and taken > 50, (refused, taken)


@pytest.mark.parametrize("name", CONFIGS)
def test_router_refuses_exactly_what_check_refuses(name):
    from moeaccel.hw.router import Router
    config = preset(name)
    legal = {"tokens": 4, "experts": 8, "k": 2, "mode": RouterMode.SIGMOID_BIAS, "groups": 4,
             "group_size": 2, "topk_groups": 2, "compute": 1, "chunks": 1}
    assert not router.check(config, legal)
    refused, taken = agree(Router(config), router.router_command(config), router.check, config,
                           legal, seed=12)
    assert refused > 50 and taken > 50, (refused, taken)


@pytest.mark.parametrize("name", CONFIGS)
def test_attention_refuses_exactly_what_check_refuses(name):
    from moeaccel.hw.attention import Attention
    config = preset(name)
    legal = {"seq_q": 3, "seq_kv": 5, "kv_heads": 2, "rep": 2, "head_words": 1, "causal": 1,
             "score_mult": 1 << 14, "score_shift": 20, "out_mult": 1 << 14, "out_shift": 20}
    assert not attention.check(config, legal)
    refused, taken = agree(Attention(config), attention.attention_command(config), attention.check,
                           config, legal, seed=13)
    assert refused > 50 and taken > 50, (refused, taken)
