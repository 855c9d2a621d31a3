"""Combinational pieces of the integer arithmetic of `sw.numerics`, shared by every datapath."""

from amaranth.hdl import Const, Mux, Value, signed

from ..sw import numerics as nx

__all__ = ["round_shift_saturate"]


def round_shift_saturate(value: Value, shift: Value, max_shift: int, bits: int = 8) -> Value:
    """``saturate(round_shift(value, shift), bits)`` (`sw.numerics`: round half towards +inf).

    `value` must satisfy ``|value| < 2**max_shift``: every shift beyond `max_shift` then rounds it to
    zero, which bounds the widths here.
    """
    half = ((Const(1, 1) << shift) >> 1)[:max_shift]
    rounded = Mux(shift > max_shift, 0, (value + half) >> shift)
    low, high = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return Mux(rounded > high, high, Mux(rounded < low, low, rounded))[:bits].as_signed()
