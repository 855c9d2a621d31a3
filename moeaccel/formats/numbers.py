"""The number formats of the datapaths: integer ranges, the requantisation multiplier and shift, the
fixed-point formats of logits and gate weights, and the widths of the reciprocals.

These are the widths every layout in `moeaccel.formats` is built from and the constants
`sw.numerics` computes with (it imports them from here); torch-free, so that the formats can be read
anywhere.
"""

from __future__ import annotations

__all__ = ["INT8_MIN", "INT8_MAX", "INT16_MIN", "INT16_MAX", "INT32_MIN", "INT32_MAX",
           "MULT_BITS", "MULT_MIN", "MULT_MAX", "SHIFT_BITS", "SHIFT_MAX", "LOGIT_FRAC_BITS",
           "LOGIT_BITS", "GATE_FRAC_BITS", "GATE_ONE", "GATE_BITS", "BIAS_BITS",
           "ROUTER_RECIP_BITS", "ATTENTION_LOGIT_BITS", "ATTENTION_RECIP_BITS", "index_bits",
           "count_bits"]

INT8_MIN, INT8_MAX = -128, 127
INT16_MIN, INT16_MAX = -(1 << 15), (1 << 15) - 1
INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1

# Requantisation multiplier: an unsigned 15-bit mantissa, normalised to [2**14, 2**15).
MULT_BITS = 15
MULT_MIN, MULT_MAX = 1 << (MULT_BITS - 1), (1 << MULT_BITS) - 1
SHIFT_BITS = 6
SHIFT_MAX = 47          # (33-bit sum) x (15-bit multiplier) is at most 48 bits: no wider shift is useful

LOGIT_FRAC_BITS = 8     # router logits are int16 fixed point with 8 fractional bits (range +-128)
LOGIT_BITS = 16
GATE_FRAC_BITS = 15     # gate weights and probabilities are unsigned Q15: 1.0 == 32768
GATE_ONE = 1 << GATE_FRAC_BITS
GATE_BITS = GATE_FRAC_BITS + 1          # a Q15 gate weight, 0 .. 1.0 inclusive
BIAS_BITS = GATE_FRAC_BITS + 3          # a sigmoid_bias selection bias, Q15 in [-4, 4)

ROUTER_RECIP_BITS = 46  # the router's reciprocal 2**46 // sum, for sums in [2**15, 2**31)
ATTENTION_LOGIT_BITS = 24   # attention logits: signed Q8, saturated to 24 bits (range +-32768)
ATTENTION_RECIP_BITS = 40   # attention's reciprocal 2**40 // s, for sums s in [2**15, 2**31)


def index_bits(count: int) -> int:
    """Bits of an index below `count` (at least one)."""
    return max(1, (count - 1).bit_length())


def count_bits(limit: int) -> int:
    """Bits of a count from 0 to `limit` inclusive."""
    return limit.bit_length()
