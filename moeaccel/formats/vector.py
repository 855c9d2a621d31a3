"""The vector unit's formats: its operations and command (the VECTOR body), the per-channel operands a
VECTOR reads from DRAM, the words of the unit's streams, its counters, and `check`, the commands it
refuses."""

from __future__ import annotations

from amaranth.hdl import signed, unsigned
from amaranth.lib import data, enum

from .buffers import ACTIVATION_BUFFERS, Buffer, act_row_bytes, buffer_bytes, out_row_bytes
from .numbers import MULT_BITS, SHIFT_BITS, SHIFT_MAX, count_bits
from .rules import Fields, check_rules, member, mod, normalise

__all__ = ["VectorOp", "NORMS", "TWO_OPERANDS", "ROW_OPS", "EPS_LIMIT", "LAYERNORM_MAX_WIDTH",
           "vector_command", "norm_operands", "rope_table", "gate_weights", "operand_layout",
           "vector_in", "vector_b", "vector_out", "operand_word", "VECTOR_COUNTERS", "row_words",
           "head_limit", "operand_words", "operand_bytes", "row_extent", "sources", "targets",
           "rules", "buffer_rules", "check"]


class VectorOp(enum.Enum, shape=3):
    ADD = 0                   # residual add of two int8 rows, requantised
    MUL = 1                   # element-wise multiply, requantised
    RMSNORM = 2               # RMSNorm with a per-channel weight
    LAYERNORM = 3             # LayerNorm with per-channel weight and bias
    ROPE = 4                  # rotary position embedding of Q or K heads
    REQUANT = 5               # requantise int32 rows (OUT) to int8
    GATE = 6                  # a shared expert's sigmoid gate per token, into GATES


NORMS = (VectorOp.RMSNORM, VectorOp.LAYERNORM)
TWO_OPERANDS = (VectorOp.ADD, VectorOp.MUL)
# The ops that hold each row on chip before it leaves: the norms (their sums come first) and ROPE
# (an element's partner may come after it).
ROW_OPS = NORMS + (VectorOp.ROPE,)

# eps_q is refused outside [0, EPS_LIMIT): the sum of squares plus eps_q must stay below 2**63.
EPS_LIMIT = 1 << 62
# LayerNorm's centred sum of squares, at most width**3 x 255**2, stays below 2**62 up to this width.
LAYERNORM_MAX_WIDTH = 1 << 15


def head_limit(config) -> int:
    """The widest head ROPE rotates (the attention unit's widest row)."""
    return config.attention_row_words * config.axi_data_bytes


def vector_command(config) -> data.StructLayout:
    """VECTOR: ``op`` (`sw.vector`) over ``rows`` rows of ``width`` values, from buffers ``a`` (and
    ``b``) to ``dst``; row ``r`` of an activation buffer is at byte ``r x act_row_bytes(width)``,
    of OUT at ``r x out_row_bytes(width)``. Per-channel operands are at DRAM ``params``
    (`vector.operand_layout`). ADD: ``a x multiplier + b x multiplier_b``, MUL:
    ``a x b x multiplier``, REQUANT: ``a x multiplier``, each ``>> shift``; the norms and GATE
    requantise with ``multiplier``/``shift``; ROPE rotates heads of ``head_dim``."""
    from .instructions import ADDRESS_BITS
    return data.StructLayout({
        "op": VectorOp,
        "rows": unsigned(count_bits(max(config.max_tokens, config.max_seq_len))),
        "width": unsigned(count_bits(config.max_inputs)),
        "a": Buffer,
        "b": Buffer,
        "dst": Buffer,
        "params": unsigned(ADDRESS_BITS),
        "multiplier": unsigned(MULT_BITS),
        "multiplier_b": unsigned(MULT_BITS),
        "shift": unsigned(SHIFT_BITS),
        "head_dim": unsigned(count_bits(head_limit(config))),
    })


def row_words(config, width) -> int:
    """Words of ``vector_lanes`` values in a row of `width` (the last one zero-padded)."""
    return -(-width // config.vector_lanes)


def vector_in(config) -> data.ArrayLayout:
    """A word of row ``a``: ``vector_lanes`` values, int32 for REQUANT (from OUT), int8 values
    sign-extended for every other op."""
    return data.ArrayLayout(signed(32), config.vector_lanes)


def vector_b(config) -> data.ArrayLayout:
    """A word of row ``b`` (ADD, MUL): ``vector_lanes`` int8 values."""
    return data.ArrayLayout(signed(8), config.vector_lanes)


def vector_out(config) -> data.ArrayLayout:
    """A word of a result row: ``vector_lanes`` int8 values, zero beyond the row's width."""
    return data.ArrayLayout(signed(8), config.vector_lanes)


def operand_word(config) -> data.StructLayout:
    """A word of a VECTOR's operands as the unit takes them, ``vector_lanes`` channels at a time:
    the norms' int16 weights and int32 biases (``eps_q`` in the first word), GATE's int8 weights in
    ``weight``, ROPE's Q14 cos words then sin words of a row's table in ``weight``."""
    lanes = config.vector_lanes
    return data.StructLayout({
        "weight": data.ArrayLayout(signed(16), lanes),
        "bias": data.ArrayLayout(signed(32), lanes),
        "eps_q": signed(64),
    })


def operand_words(config, op: VectorOp, record, rows: int, width: int, head_dim: int) -> list[dict]:
    """The words the unit's ``operands`` stream takes for `op`, from its operands as read from DRAM
    (`record`: one record of `operand_layout`, as `records.view` gives it): the norms' channel
    weights and biases and GATE's weights, ``vector_lanes`` channels a word (``eps_q`` in the first),
    or ROPE's table, each row's cos words then sin words. Lanes past the row are zero."""
    lanes = config.vector_lanes

    def words(values, start=0, count=None):
        values = [int(v) for v in values][start:None if count is None else start + count]
        values += [0] * (-len(values) % lanes)
        return [values[i:i + lanes] for i in range(0, len(values), lanes)]

    op = VectorOp(op)
    if op in NORMS:
        return [{"weight": w, "bias": b, "eps_q": int(record["eps_q"]) if j == 0 else 0}
                for j, (w, b) in enumerate(zip(words(record["weight"]), words(record["bias"])))]
    if op is VectorOp.GATE:
        return [{"weight": w, "bias": [0] * lanes, "eps_q": 0} for w in words(record)]
    if op is VectorOp.ROPE:
        return [{"weight": w, "bias": [0] * lanes, "eps_q": 0}
                for row in range(rows) for w in words(record[row], 0, head_dim)]
    return []


# The vector unit's counters (`perf`), cleared when a command is accepted.
VECTOR_COUNTERS = data.StructLayout({
    "busy_cycles": unsigned(32),           # cycles with a command under way
    "input_stall_cycles": unsigned(32),    # cycles a word was wanted from `a`, `b` or `operands` and none came
    "output_stall_cycles": unsigned(32),   # cycles a result waited for `o` or `gates`
})


def norm_operands(width: int) -> data.StructLayout:
    """RMSNORM/LAYERNORM operands: the integer eps added to the sum of squares, then a Q weight and
    an int32 bias per channel (`sw.vector.norm_operands`)."""
    return data.StructLayout({
        "eps_q": signed(64),
        "weight": data.ArrayLayout(signed(16), width),
        "bias": data.ArrayLayout(signed(32), width),
    })


def rope_table(rows: int, head_dim: int) -> data.ArrayLayout:
    """ROPE operands: per row, ``head_dim`` int16 Q14 values, the cos of the first half, then sin."""
    return data.ArrayLayout(data.ArrayLayout(signed(16), head_dim), rows)


def gate_weights(width: int) -> data.ArrayLayout:
    """GATE operands: ``width`` int8 weights of the gate's dot product."""
    return data.ArrayLayout(signed(8), width)


def operand_layout(op: VectorOp, rows: int, width: int, head_dim: int):
    """The layout of `op`'s operands at DRAM ``params`` (None: it reads none)."""
    if op in NORMS:
        return norm_operands(width)
    if op is VectorOp.ROPE:
        return rope_table(rows, head_dim)
    if op is VectorOp.GATE:
        return gate_weights(width)
    return None


def operand_bytes(c):
    """Bytes of the operands a VECTOR body `c` reads at DRAM ``params`` (`operand_layout`; 0: none),
    for a decoded body or a view of one (`rules`' convention)."""
    norm = (c.op == VectorOp.RMSNORM) | (c.op == VectorOp.LAYERNORM)
    return (norm * (8 + 6 * c.width) + (c.op == VectorOp.ROPE) * (2 * c.rows * c.head_dim)
            + (c.op == VectorOp.GATE) * c.width)


def row_extent(config, c, out: bool = False):
    """One past the last byte the rows of body `c` take in an activation buffer, or (`out`) in OUT:
    ``(rows - 1) x`` the row stride ``+ width`` values (`buffers.act_row_bytes`,
    `buffers.out_row_bytes`), as the emulator's row reads and writes bound them."""
    if out:
        return (c.rows - 1) * out_row_bytes(config, c.width) + 4 * c.width
    return (c.rows - 1) * act_row_bytes(config, c.width) + c.width


def sources(op: VectorOp) -> tuple[Buffer, ...]:
    """The buffers `op` reads its rows from."""
    return (Buffer.OUT,) if op is VectorOp.REQUANT else ACTIVATION_BUFFERS


def targets(op: VectorOp) -> tuple[Buffer, ...]:
    """The buffers `op` writes its result to."""
    return (Buffer.GATES,) if op is VectorOp.GATE else ACTIVATION_BUFFERS


def rules(config, c):
    """The vector unit's refusals of a VECTOR body `c` (`moeaccel.formats.rules`)."""
    widest_head, pair = head_limit(config), 2 * config.vector_lanes
    requant, gate, rope = c.op == VectorOp.REQUANT, c.op == VectorOp.GATE, c.op == VectorOp.ROPE
    two = (c.op == VectorOp.ADD) | (c.op == VectorOp.MUL)

    def activation(buffer):
        return (buffer == Buffer.ACT0) | (buffer == Buffer.ACT1)

    def names(buffers) -> str:
        return " or ".join(b.name for b in buffers)

    return [
        (lambda: f"op={c.op} is no VectorOp", member(c.op, VectorOp) == 0),
        (lambda: "a buffer field holds a code no Buffer has",
         (member(c.a, Buffer) == 0) | (member(c.b, Buffer) == 0) | (member(c.dst, Buffer) == 0)),
        (lambda: f"{c.op.name}: rows={c.rows} (at least 1)", c.rows == 0),
        (lambda: f"{c.op.name}: width={c.width} (1 .. {config.max_inputs})",
         (c.width == 0) | (c.width > config.max_inputs)),
        (lambda: f"{c.op.name}: shift={c.shift} is beyond {SHIFT_MAX}", c.shift > SHIFT_MAX),
        (lambda: f"{c.op.name} reads a from {names(sources(c.op))}, not {c.a.name}",
         (requant & (c.a != Buffer.OUT)) | ((requant == 0) & (activation(c.a) == 0))),
        (lambda: f"{c.op.name} reads b from {names(sources(c.op))}, not {c.b.name}",
         two & (activation(c.b) == 0)),
        (lambda: f"{c.op.name} writes {names(targets(c.op))}, not {c.dst.name}",
         (gate & (c.dst != Buffer.GATES)) | ((gate == 0) & (activation(c.dst) == 0))),
        (lambda: f"ROPE: rows of {c.width} are not whole heads of head_dim={c.head_dim}, a "
                 f"multiple of {pair} (2 x vector_lanes) up to {widest_head}",
         rope & ((c.head_dim == 0) | (mod(c.head_dim, pair) != 0) | (c.head_dim > widest_head)
                 | (mod(c.width, c.head_dim) != 0))),
        (lambda: f"GATE: rows={c.rows} is beyond max_tokens={config.max_tokens} (GATES holds an "
                 f"entry per token)", gate & (c.rows > config.max_tokens)),
        (lambda: f"LAYERNORM: width={c.width} is beyond {LAYERNORM_MAX_WIDTH} (the centred sum of "
                 f"squares must fit 63 bits)",
         (c.op == VectorOp.LAYERNORM) & (c.width > LAYERNORM_MAX_WIDTH)),
    ]


def buffer_rules(config, c):
    """The refusals of a VECTOR instruction (body `c`) beyond the unit's own (`rules`): rows past the
    end of the buffers they are read from or written to, as the emulator bounds them."""
    requant = c.op == VectorOp.REQUANT
    act_size, out_size = config.act_buffer_bytes, buffer_bytes(config)[Buffer.OUT]
    return [
        (lambda: f"{c.op.name}: {c.rows} rows of {c.width} reach byte {row_extent(config, c, True)} "
                 f"of OUT's {out_size}",
         requant & (row_extent(config, c, True) > out_size)),
        (lambda: f"{c.op.name}: {c.rows} rows of {c.width} reach byte {row_extent(config, c)} of "
                 f"an activation buffer's {act_size}",
         row_extent(config, c) > act_size),
    ]


# The enum fields of a VECTOR body, made members before the rules read them.
_ENUMS = data.StructLayout({"op": VectorOp, "a": Buffer, "b": Buffer, "dst": Buffer})


def check(config, fields: dict) -> list[str]:
    """What the vector unit refuses in a VECTOR body (empty: it runs)."""
    fields, reasons = normalise(_ENUMS, fields)
    return reasons or check_rules(rules(config, Fields.of(fields)))
