"""The vector unit's formats: its operations, the per-channel operands a VECTOR reads from DRAM, and
`check`, the commands it refuses."""

from __future__ import annotations

from amaranth.hdl import signed
from amaranth.lib import data, enum

from .buffers import ACTIVATION_BUFFERS, Buffer
from .numbers import SHIFT_MAX
from .rules import Fields, check_rules, mod, normalise

__all__ = ["VectorOp", "norm_operands", "rope_table", "gate_weights", "operand_layout",
           "sources", "targets", "rules", "check"]


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


def sources(op: VectorOp) -> tuple[Buffer, ...]:
    """The buffers `op` reads its rows from."""
    return (Buffer.OUT,) if op is VectorOp.REQUANT else ACTIVATION_BUFFERS


def targets(op: VectorOp) -> tuple[Buffer, ...]:
    """The buffers `op` writes its result to."""
    return (Buffer.GATES,) if op is VectorOp.GATE else ACTIVATION_BUFFERS


def rules(config, c):
    """The vector unit's refusals of a VECTOR body `c` (`moeaccel.formats.rules`)."""
    head_limit = config.attention_row_words * config.axi_data_bytes
    requant, gate, rope = c.op == VectorOp.REQUANT, c.op == VectorOp.GATE, c.op == VectorOp.ROPE
    two = (c.op == VectorOp.ADD) | (c.op == VectorOp.MUL)

    def activation(buffer):
        return (buffer == Buffer.ACT0) | (buffer == Buffer.ACT1)

    def names(buffers) -> str:
        return " or ".join(b.name for b in buffers)

    return [
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
        (lambda: f"ROPE: rows of {c.width} are not whole heads of an even head_dim={c.head_dim} "
                 f"(2 .. {head_limit})",
         rope & ((c.head_dim < 2) | (mod(c.head_dim, 2) != 0) | (c.head_dim > head_limit)
                 | (mod(c.width, c.head_dim) != 0))),
    ]


# The enum fields of a VECTOR body, made members before the rules read them.
_ENUMS = data.StructLayout({"op": VectorOp, "a": Buffer, "b": Buffer, "dst": Buffer})


def check(config, fields: dict) -> list[str]:
    """What the vector unit refuses in a VECTOR body (empty: it runs)."""
    fields, reasons = normalise(_ENUMS, fields)
    return reasons or check_rules(rules(config, Fields.of(fields)))
