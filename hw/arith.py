"""The integer arithmetic every datapath shares: the rounding, exp, sigmoid and reciprocal of
`sw.numerics`, and a balanced adder tree."""

from amaranth.hdl import Array, Cat, Const, Mux, Value, signed

from ..sw import numerics as nx

__all__ = ["round_shift", "round_shift_saturate", "exp_fixed", "sigmoid_fixed",
           "reciprocal_step", "tree_sum"]


def tree_sum(terms) -> Value:
    """The sum of `terms` as a balanced adder tree: neighbours added pairwise, level by level
    (depth ``ceil(log2 n)``, not a chain of ``n - 1`` adders). Each adder is one bit wider than
    its widest operand, so the sum is exact."""
    terms = list(terms)
    if not terms:
        raise ValueError("tree_sum needs at least one term")
    while len(terms) > 1:
        terms = [terms[i] + terms[i + 1] if i + 1 < len(terms) else terms[i]
                 for i in range(0, len(terms), 2)]
    return terms[0]


def round_shift(value: Value, shift: int) -> Value:
    """``sw.numerics.round_shift`` by a constant ``shift > 0``: add half, shift right."""
    return (value + (1 << (shift - 1))) >> shift


def round_shift_saturate(value: Value, shift: Value, max_shift: int, bits: int = 8) -> Value:
    """``saturate(round_shift(value, shift), bits)`` (`sw.numerics`: round half towards +inf).

    `value` must satisfy ``|value| < 2**max_shift``: every shift beyond `max_shift` then rounds it to
    zero, which bounds the widths here.
    """
    half = ((Const(1, 1) << shift) >> 1)[:max_shift]
    rounded = Mux(shift > max_shift, 0, (value + half) >> shift)
    low, high = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return Mux(rounded > high, high, Mux(rounded < low, low, rounded))[:bits].as_signed()


def exp_fixed(d: Value) -> Value:
    """``sw.numerics.exp_fixed``: exp of a non-positive Q8 value, in Q15 (combinational)."""
    z = ((-d) * nx.LOG2E_Q12 + (1 << 11)) >> 12
    table = Array(Const(int(v), 16) for v in nx.EXP2_TABLE)
    whole = z >> 8
    return Mux(whole >= nx.EXP_ZERO_SHIFT, 0, table[z[:8]] >> whole[:5])


def sigmoid_fixed(logit: Value) -> Value:
    """``sw.numerics.sigmoid_fixed``: sigmoid of a Q8 logit, in Q15 (combinational)."""
    limit = 8 << nx.LOGIT_FRAC_BITS
    x = (Mux(logit < -limit, -limit, Mux(logit > limit - 1, limit - 1, logit)) + limit)[:12]
    index, frac = x[4:], x[:4]
    table = Array(Const(int(v), 16) for v in nx.SIGMOID_TABLE)
    low, high = table[index], table[index + 1]
    return low + (((high - low) * frac + 8) >> 4)


def reciprocal_step(m, first: Value, remainder: Value, quotient: Value, divisor: Value) -> None:
    """One cycle of the restoring division ``2**n // divisor``: the dividend's only set bit enters
    on the `first` cycle, a zero on each later one; after ``n + 1`` cycles `quotient` holds the
    result. Shared by the router's and the attention unit's reciprocals."""
    shifted = Cat(first, remainder)
    with m.If(shifted >= divisor):
        m.d.sync += [remainder.eq(shifted - divisor), quotient.eq(Cat(1, quotient))]
    with m.Else():
        m.d.sync += [remainder.eq(shifted), quotient.eq(Cat(0, quotient))]
