"""One legality check per unit: the RTL's refusal (`error` after a command's handshake) agrees with
`check(config, command)` of `moeaccel.formats` on random commands, in Amaranth's simulator.

Commands are drawn near the configuration's limits, where the rules bite: each field is 0, 1, a
value around one of the configuration's limits, the largest its width holds, or random; 7 in 10
start from one of a few legal commands with one or two fields changed, and each legal command is
also offered with every value of each enum field. A command the check takes
must start the unit (``busy``); the unit is then reset for the next one. Every rule a command can
break must be the only reason of at least one command offered, so no rule goes untested; and the
check gives the same verdict when an enum field is written as its integer.
"""

import random

import pytest
from amaranth.hdl import Module, ResetInserter, Signal, unsigned
from amaranth.lib import data, enum
from amaranth.sim import Simulator

from moeaccel import isa
from moeaccel.config import preset
from moeaccel.formats import attention, expert_ffn, router, vector
from moeaccel.formats.buffers import Buffer
from moeaccel.formats.expert_ffn import pattern_bits
from moeaccel.formats.numbers import count_bits
from moeaccel.formats.router import RouterMode
from moeaccel.formats.vector import VectorOp
from moeaccel.formats.rules import Fields

COMMANDS = 500


def _limits(config) -> list[int]:
    """The configuration's counts and capacities, where a field's legal range ends."""
    values = [getattr(config, name) for name in dir(config)
              if not name.startswith("_") and name != "build_id"          # a hash, not a limit
              and isinstance(getattr(config, name), int)
              and not isinstance(getattr(config, name), bool)]
    return sorted({v for v in values if v > 0})


def _draw(rng: random.Random, shape, limits) -> int:
    top = (1 << shape.width) - 1
    choice = rng.random()
    if choice < 0.2:
        return min(top, rng.choice([0, 1, 2]))
    if choice < 0.6:
        return max(0, min(top, rng.choice(limits) + rng.choice([-1, 0, 1])))
    if choice < 0.7:
        return top
    return rng.randint(0, top)


def random_command(rng: random.Random, layout: data.StructLayout, config, legal: list) -> dict:
    limits = _limits(config)
    names = [name for name, _ in layout]
    if rng.random() < 0.7:
        command = dict(rng.choice(legal))
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


def _pack(layout, command: dict) -> int:
    """A command's bits, an enum field's code given as a member or as any integer (a code no
    member has included: the hardware must refuse it)."""
    bits = 0
    for name, field in layout:
        value = command.get(name, 0)
        if isinstance(value, dict):
            value = _pack(field.shape, value)
        elif isinstance(value, enum.Enum):
            value = value.value
        bits |= (int(value) & ((1 << field.width) - 1)) << field.offset
    return bits


def _as_integers(command: dict) -> dict:
    return {name: value.value if isinstance(value, enum.Enum) else value
            for name, value in command.items()}


def agree(unit, layout, check, rules, config, legal: list, seed: int,
          unreachable=(), directed=()) -> tuple[int, int]:
    """Offer `COMMANDS` random commands (and the enum variations of `legal`, and the `directed`
    ones); return how many the RTL refused and took. Every rule but
    those at the indices in `unreachable` must be the only reason of some command."""
    for command in legal:
        assert not check(config, command), command
    rng = random.Random(seed)
    reset = Signal()
    top = Module()
    top.submodules.unit = ResetInserter(reset)(unit)
    commands = [random_command(rng, layout, config, legal) for _ in range(COMMANDS)]
    # and every member of every enum field in each legal command
    commands += [dict(command, **{name: member}) for command in legal for name, field in layout
                 if isinstance(field.shape, type) and issubclass(field.shape, enum.Enum)
                 for member in field.shape]
    commands += list(directed)
    counts = {"refused": 0, "taken": 0, "undecodable": 0}
    alone = set()

    async def bench(ctx):
        for index, command in enumerate(commands):
            ctx.set(unit.cmd.payload.as_value(), _pack(layout, command))
            ctx.set(unit.cmd.valid, 1)
            await ctx.tick()
            ctx.set(unit.cmd.valid, 0)
            reasons = check(config, command)
            assert check(config, _as_integers(command)) == reasons, (index, command)
            refused, busy = ctx.get(unit.error), ctx.get(unit.busy)
            assert bool(refused) == bool(reasons), (index, command, reasons)
            assert bool(busy) == (not reasons), (index, command)
            counts["refused" if refused else "taken"] += 1
            broken = [n for n, (_, bad) in enumerate(rules(config, Fields.of(command))) if bad]
            if len(broken) == 1:
                alone.add(broken[0])
            ctx.set(reset, 1)
            await ctx.tick()
            ctx.set(reset, 0)

    sim = Simulator(top)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    every = set(range(len(rules(config, Fields.of(legal[0]))))) - set(unreachable)
    assert every <= alone, f"rules never the only reason: {sorted(every - alone)}"
    return counts["refused"], counts["taken"]


CONFIGS = ["tiny", "pynq-z2"]


@pytest.mark.parametrize("name", CONFIGS)
def test_expert_ffn_refuses_exactly_what_check_refuses(name):
    from moeaccel.hw.expert_ffn import FFNEngine
    config = preset(name)
    sparse, dense = config.patterns[-1], config.patterns[0]
    drain_tokens = config.max_tokens // 2 + 1
    legal = [
        expert_ffn.pass_command(config, 3, config.max_d_model, config.max_d_ff, sparse,
                                swiglu=True, activation=True, to_buffer=True,
                                swiglu_multiplier=1 << 14, swiglu_shift=20),
        expert_ffn.pass_command(config, 5, 64, 40, dense, activation=True, to_buffer=True),
        expert_ffn.pass_command(config, 7, 40, 64, sparse, src=1, accumulate=True),
        expert_ffn.pass_command(config, 6, 1, 64, dense, drain=True, to_buffer=True),
        expert_ffn.pass_command(config, 2, 64, 24, dense),
        # a drain out on `o` just inside the output accumulator: more tokens overflow it alone
        dict(expert_ffn.pass_command(config, drain_tokens, 1, 1, dense, drain=True),
             tiles=config.out_buffer_words // drain_tokens),
    ]
    # A pattern index beyond the built ones fits the field only when the patterns leave room.
    unreachable = [3] if 1 << pattern_bits(config) == len(config.patterns) else []
    # one tile more than the drain just inside the accumulator: refused for that alone
    directed = [dict(legal[-1], tiles=legal[-1]["tiles"] + 1)]
    assert len(expert_ffn.check(config, directed[0])) == 1
    refused, taken = agree(FFNEngine(config), expert_ffn.ffn_command(config), expert_ffn.check,
                           expert_ffn.rules, config, legal, seed=11, unreachable=unreachable,
                           directed=directed)
    assert refused > 50 and taken > 50, (refused, taken)


@pytest.mark.parametrize("name", CONFIGS)
def test_router_refuses_exactly_what_check_refuses(name):
    from moeaccel.hw.router import Router
    config = preset(name)
    base = {"tokens": 4, "experts": 8, "k": 2, "mode": RouterMode.SIGMOID_BIAS, "groups": 4,
            "group_size": 2, "topk_groups": 2, "compute": 1, "chunks": 1}
    legal = [base,
             dict(base, mode=RouterMode.SOFTMAX_TOPK, groups=1, topk_groups=1, compute=0),
             dict(base, mode=RouterMode.TOP1, k=1, groups=1, topk_groups=1, tokens=9)]
    refused, taken = agree(Router(config), router.router_command(config), router.check,
                           router.rules, config, legal, seed=12)
    assert refused > 50 and taken > 50, (refused, taken)


@pytest.mark.parametrize("name", CONFIGS)
def test_attention_refuses_exactly_what_check_refuses(name):
    from moeaccel.hw.attention import Attention
    config = preset(name)
    base = {"seq_q": 3, "seq_kv": 5, "kv_heads": 2, "rep": 2, "head_words": 1, "causal": 1,
            "score_mult": 1 << 14, "score_shift": 20, "out_mult": 1 << 14, "out_shift": 20}
    legal = [base, dict(base, seq_q=9, seq_kv=4, kv_heads=4, rep=1, causal=0)]
    refused, taken = agree(Attention(config), attention.attention_command(config), attention.check,
                           attention.rules, config, legal, seed=13)
    assert refused > 50 and taken > 50, (refused, taken)


@pytest.mark.parametrize("name", CONFIGS)
def test_vector_unit_refuses_exactly_what_check_refuses(name):
    from moeaccel.hw.vector import VectorUnit
    config = preset(name)
    pair = 2 * config.vector_lanes
    base = {"op": VectorOp.ADD, "rows": 3, "width": 40, "a": Buffer.ACT0, "b": Buffer.ACT1,
            "dst": Buffer.ACT0, "params": 0, "multiplier": 1 << 14, "multiplier_b": 1 << 14,
            "shift": 20, "head_dim": 0}
    legal = [base,
             dict(base, op=VectorOp.ROPE, width=3 * pair, head_dim=pair),
             dict(base, op=VectorOp.GATE, rows=config.max_tokens, dst=Buffer.GATES),
             dict(base, op=VectorOp.LAYERNORM, width=config.max_inputs, shift=47),
             dict(base, op=VectorOp.REQUANT, a=Buffer.OUT, rows=1, width=1)]
    reasons = [reason() for reason, _ in vector.rules(config, Fields.of(legal[0]))]
    # LayerNorm's widest row is wider than any configuration's max_inputs today.
    unreachable = [n for n, reason in enumerate(reasons) if reason.startswith("LAYERNORM: width")
                   and config.max_inputs <= vector.LAYERNORM_MAX_WIDTH]
    # a GATES entry per token: one row more than the tokens is refused for GATE alone; and the
    # op code no VectorOp has
    directed = [dict(legal[2], rows=config.max_tokens + 1), dict(legal[0], op=len(VectorOp)),
                dict(legal[1], b=len(Buffer))]
    refused, taken = agree(VectorUnit(config), vector.vector_command(config), vector.check,
                           vector.rules, config, legal, seed=14, unreachable=unreachable,
                           directed=directed)
    assert refused > 50 and taken > 50, (refused, taken)


def _leaves(layout, prefix=()):
    """Every leaf field of a layout: (path, offset, shape)."""
    for name, field in layout:
        if isinstance(field.shape, data.StructLayout):
            for path, offset, shape in _leaves(field.shape, prefix + (name,)):
                yield path, field.offset + offset, shape
        else:
            yield prefix + (name,), field.offset, field.shape


def _as_dict(layout, bits: int) -> dict:
    out = {}
    for name, field in layout:
        value = bits >> field.offset & ((1 << field.width) - 1)
        if isinstance(field.shape, data.StructLayout):
            out[name] = _as_dict(field.shape, value)
        elif isinstance(field.shape, type) and issubclass(field.shape, enum.Enum):
            try:
                out[name] = field.shape(value)
            except ValueError:
                out[name] = value
        else:
            out[name] = value
    return out


@pytest.mark.parametrize("name", CONFIGS)
def test_decoder_refuses_exactly_what_the_instruction_check_refuses(name):
    """The controller's decode stage: BAD_FIELD exactly when `formats.instructions.check` refuses
    the body, on 500 mutations of legal bodies per opcode; ILLEGAL_OPCODE for codes no Opcode has."""
    from moeaccel.formats import instructions
    from moeaccel.formats.instructions import ErrorCode, Opcode
    from moeaccel.hw.decode import Decoder

    config = preset(name)
    dense, sparse = config.patterns[0], config.patterns[-1]
    legal = {
        Opcode.LINEAR: [dict(command=expert_ffn.pass_command(config, 3, 64, 40, dense,
                                                              activation=True, to_buffer=True),
                             weights=64, preloaded=0, sram=0),
                        dict(command=expert_ffn.pass_command(config, 7, 40, 64, sparse, src=1,
                                                              accumulate=True),
                             weights=0, preloaded=1, sram=128)],
        Opcode.ROUTE: [dict(command={"tokens": 4, "experts": 8, "k": 2,
                                     "mode": RouterMode.SOFTMAX_TOPK, "groups": 1, "group_size": 8,
                                     "topk_groups": 1, "compute": 1, "chunks": 1},
                            row_words=1, logits=0)],
        Opcode.EXPERT_LOOP: [dict(experts=8, table=0, d_model=64, d_ff=128, pattern=0, swiglu=1,
                                  prefetch=1)],
        Opcode.ATTENTION: [dict(command={"seq_q": 3, "seq_kv": 5, "kv_heads": 2, "rep": 2,
                                         "head_words": 1, "causal": 1, "score_mult": 1 << 14,
                                         "score_shift": 20, "out_mult": 1 << 14, "out_shift": 20},
                                q=0, k=0, v=0, o=0)],
        Opcode.VECTOR: [{"op": VectorOp.ADD, "rows": 3, "width": 40, "a": Buffer.ACT0,
                         "b": Buffer.ACT1, "dst": Buffer.ACT0, "params": 0,
                         "multiplier": 1 << 14, "multiplier_b": 1 << 14, "shift": 20,
                         "head_dim": 0}],
    }
    layout = instructions.instruction_layout(config)
    rng = random.Random(15)
    limits = _limits(config)
    cases = []                                   # (instruction bits, opcode code, refused)
    for opcode, bodies in legal.items():
        body_layout = instructions.bodies(config)[opcode]
        leaves = list(_leaves(body_layout))
        for body in bodies:
            assert not instructions.check(config, opcode, body), (opcode, body)
        for _ in range(COMMANDS):
            body = rng.choice(bodies)
            bits = body_layout.const(body).as_bits()
            for path, offset, shape in rng.sample(leaves, rng.choice([1, 1, 2])):
                width = shape.width if hasattr(shape, "width") else shape.as_shape().width
                value = _draw(rng, unsigned(width), limits)
                bits = bits & ~(((1 << width) - 1) << offset) | value << offset
            fields = _as_dict(body_layout, bits)
            refused = bool(instructions.check(config, opcode, fields))
            word = opcode.value << layout["opcode"].offset | bits << layout["body"].offset
            cases.append((word, opcode, refused))
    opcode_bits = Opcode.as_shape().width
    known = {op.value for op in Opcode}
    for code in range(1 << opcode_bits):
        if code not in known:
            cases.append((code << layout["opcode"].offset, None, None))

    decoder = Decoder(config)
    counts = {"refused": 0, "taken": 0, "undecodable": 0}

    async def bench(ctx):
        for word, opcode, refused in cases:
            ctx.set(decoder.instruction.as_value(), word)
            await ctx.delay(1e-9)
            code = ctx.get(decoder.error_code)
            try:
                isa.decode_one(config, word.to_bytes(isa.INSTRUCTION_BYTES, "little"))
                undecodable = False
            except isa.DecodeError:
                undecodable = True
            assert ctx.get(decoder.undecodable) == undecodable, hex(word)
            counts["undecodable"] += undecodable
            if opcode is None:
                assert code is ErrorCode.ILLEGAL_OPCODE, hex(word)
                continue
            assert (code is ErrorCode.BAD_FIELD) == refused, (opcode, hex(word), code)
            assert code in (ErrorCode.BAD_FIELD, ErrorCode.NONE)
            counts["refused" if refused else "taken"] += 1

    sim = Simulator(decoder)
    sim.add_testbench(bench)
    sim.run()
    assert counts["refused"] > 200 and counts["taken"] > 200, counts
    assert counts["undecodable"] > 20, counts


@pytest.mark.parametrize("name", CONFIGS)
def test_the_expert_loop_builds_and_refuses_expert_passes_as_the_emulator(name):
    """The hardware expert loop's two pass commands (`hw.ffn_port.expert_commands`) equal
    `formats.instructions.expert_loop_commands`, and its refusal of an expert
    (`hw.ffn_port.expert_refused`) is the emulator's (`DESCRIPTOR.refusals`, more tokens than
    ``max_tokens``, `expert_check`), on 500 random loop bodies, token counts and descriptors."""
    from amaranth.sim import Simulator

    from moeaccel.formats import instructions, records
    from moeaccel.formats.instructions import DESCRIPTOR, expert_loop_body
    from moeaccel.hw.ffn_port import expert_commands, expert_refused

    config = preset(name)
    m = Module()
    body = Signal(expert_loop_body(config))
    tokens = Signal(16)
    descriptor = Signal(DESCRIPTOR.dram)
    first, down = expert_commands(m, config, body, tokens, descriptor.swiglu_multiplier,
                                  descriptor.swiglu_shift)
    refused = Signal()
    m.d.comb += refused.eq(expert_refused(config, first, down, tokens, descriptor))
    rng = random.Random(21)
    limits = _limits(config)
    def value(width: int, legal: int, edges: list) -> int:
        """Mostly a legal value (1 .. `legal`), sometimes one near a limit or any."""
        if rng.random() < 0.6:
            return rng.randint(1, max(1, legal // rng.choice([1, 4, 16])))
        return max(1, _draw(rng, unsigned(width), limits + edges))

    cases = []
    for _ in range(COMMANDS):
        fields = {"experts": 1, "table": 0, "prefetch": 0, "swiglu": rng.randrange(2),
                  "pattern": rng.randrange(len(config.patterns)),
                  "d_model": value(count_bits(config.max_d_model), config.max_d_model, []),
                  "d_ff": value(count_bits(config.max_d_ff), config.max_d_ff, [])}
        count = value(16, min(config.max_tokens, config.dispatch_capacity),
                      [config.dispatch_capacity])
        record = records.zeros(DESCRIPTOR.dram)[0]
        record["swiglu_multiplier"] = value(16, (1 << 15) - 1, [1 << 15])
        record["swiglu_shift"] = value(8, 63, [63, 64])
        cases.append((fields, count, record))
    accepted = sum(not (DESCRIPTOR.refusals(config, record.reshape(1), "descriptor")
                        or count > config.max_tokens
                        or instructions.expert_check(config, fields, count,
                                                     int(record["swiglu_multiplier"]),
                                                     int(record["swiglu_shift"])))
                   for fields, count, record in cases)
    assert COMMANDS // 5 < accepted < COMMANDS * 4 // 5, accepted   # both verdicts, often

    async def bench(ctx):
        for fields, count, record in cases:
            ctx.set(body, fields)
            ctx.set(tokens, count)
            ctx.set(descriptor.as_value(), int.from_bytes(record.tobytes(), "little"))
            mult, shift = int(record["swiglu_multiplier"]), int(record["swiglu_shift"])
            want_first, want_down = instructions.expert_loop_commands(config, fields, count,
                                                                      mult, shift)
            reasons = (DESCRIPTOR.refusals(config, record.reshape(1), "descriptor")
                       or (["tokens"] if count > config.max_tokens else [])
                       or instructions.expert_check(config, fields, count, mult, shift))
            assert bool(ctx.get(refused)) == bool(reasons), (fields, count, mult, shift, reasons)
            if not reasons:
                for signal, want in ((first, want_first), (down, want_down)):
                    got = {key: int(ctx.get(getattr(signal, key))) for key in want}
                    assert got == want, (fields, count, got, want)

    sim = Simulator(m)
    sim.add_testbench(bench)
    sim.run()
