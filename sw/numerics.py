"""The integer arithmetic of the hardware, bit for bit: rounding, saturation, requantisation, lookup
tables and the fixed-point exp/softmax/sigmoid.

Every function takes and returns integer tensors (``torch.int64``, wide enough that no intermediate
here can overflow) and is the definition the RTL and the emulator must match. `docs/numerics.md` states
the same rules in prose. The widths and fixed-point formats are `moeaccel.formats.numbers`.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

__all__ = [
    "INT8_MIN", "INT8_MAX", "INT32_MIN", "INT32_MAX",
    "MULT_BITS", "MULT_MIN", "MULT_MAX", "SHIFT_BITS", "SHIFT_MAX", "LOGIT_FRAC_BITS",
    "GATE_FRAC_BITS", "GATE_ONE", "ROUTER_RECIP_BITS", "ATTENTION_LOGIT_BITS", "ATTENTION_RECIP_BITS",
    "saturate", "round_shift", "requantize", "quantize_multiplier", "epilogue",
    "activation_table", "apply_table", "ACTIVATIONS",
    "EXP2_TABLE", "exp_fixed", "normalize", "SIGMOID_TABLE", "sigmoid_fixed", "topk_indices",
]

from ..formats.numbers import (ATTENTION_LOGIT_BITS, ATTENTION_RECIP_BITS, GATE_FRAC_BITS, GATE_ONE,
                               INT8_MAX, INT8_MIN, INT16_MAX, INT16_MIN, INT32_MAX, INT32_MIN,
                               LOGIT_FRAC_BITS, MULT_BITS, MULT_MAX, MULT_MIN, ROUTER_RECIP_BITS,
                               SHIFT_BITS, SHIFT_MAX)


def _int(x) -> torch.Tensor:
    return torch.as_tensor(x, dtype=torch.int64)


def saturate(x, bits: int = 8, signed: bool = True) -> torch.Tensor:
    """Clamp to the range of a `bits`-wide integer."""
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    return torch.clamp(_int(x), lo, hi)


def round_shift(x, shift) -> torch.Tensor:
    """``x / 2**shift`` rounded half towards +infinity: ``(x + 2**(shift-1)) >> shift`` (arithmetic
    shift); ``shift == 0`` returns `x` unchanged."""
    x, shift = _int(x), _int(shift)
    if torch.any(shift < 0):
        raise ValueError("round_shift: shift must be non-negative")
    half = torch.where(shift > 0, torch.ones_like(shift) << torch.clamp(shift - 1, min=0),
                       torch.zeros_like(shift))
    return (x + half) >> shift


def requantize(acc, multiplier, shift, bits: int = 8) -> torch.Tensor:
    """``saturate(round_shift(acc * multiplier, shift), bits)``: the one requantisation rule."""
    return saturate(round_shift(_int(acc) * _int(multiplier), shift), bits)


def quantize_multiplier(real) -> tuple[torch.Tensor, torch.Tensor]:
    """Represent positive real scale factor(s) as ``multiplier * 2**-shift`` with the multiplier in
    ``[2**14, 2**15)`` and ``0 <= shift <= 47``.

    Scales too large (>= 2**15) or too small (< 2**-33) for that range are refused, naming the value.
    """
    values = torch.as_tensor(real, dtype=torch.float64)
    flat = values.reshape(-1).tolist()
    mults, shifts = [], []
    for value in flat:
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"requantisation scale must be positive and finite, not {value!r}")
        mantissa, exponent = math.frexp(value)            # value = mantissa * 2**exponent, m in [0.5, 1)
        mult = round(mantissa * (1 << MULT_BITS))         # in [2**14, 2**15]
        shift = MULT_BITS - exponent
        if mult == 1 << MULT_BITS:                        # rounding carried into the next power of two
            mult >>= 1
            shift -= 1
        if shift < 0:
            raise ValueError(f"requantisation scale {value:.6g} is too large: at most {2**15 - 1} "
                             f"can be represented (multiplier {MULT_BITS} bits, shift >= 0)")
        if shift > SHIFT_MAX:
            raise ValueError(f"requantisation scale {value:.6g} is too small: at least 2**-33 can be "
                             f"represented (shift <= {SHIFT_MAX})")
        mults.append(mult)
        shifts.append(shift)
    shape = values.shape
    return (torch.tensor(mults, dtype=torch.int64).reshape(shape),
            torch.tensor(shifts, dtype=torch.int64).reshape(shape))


# -- lookup tables ------------------------------------------------------------------------------------

def _gelu(x: float) -> float:
    return 0.5 * x * (1.0 + math.erf(x / math.sqrt(2.0)))


def _silu(x: float) -> float:
    return x / (1.0 + math.exp(-x)) if x >= -700 else 0.0


ACTIVATIONS: dict[str, Callable[[float], float]] = {
    "identity": lambda x: x,
    "relu": lambda x: max(x, 0.0),
    "gelu": _gelu,
    "silu": _silu,
}


def activation_table(function: str | Callable[[float], float], in_scale: float,
                     out_scale: float) -> torch.Tensor:
    """The 256-entry int8 -> int8 table of an activation: entry ``q + 128`` holds
    ``saturate(floor(f(q * in_scale) / out_scale + 1/2))``, evaluated in float64.

    The table is data: the hardware holds exactly these bytes, so the function applied is exact.
    """
    fn = ACTIVATIONS[function] if isinstance(function, str) else function
    if not (in_scale > 0 and out_scale > 0):
        raise ValueError(f"activation table scales must be positive, not {in_scale!r}, {out_scale!r}")
    entries = [math.floor(fn(q * in_scale) / out_scale + 0.5) for q in range(INT8_MIN, INT8_MAX + 1)]
    return saturate(torch.tensor(entries, dtype=torch.int64))


def apply_table(table, x) -> torch.Tensor:
    """Look int8 values up in a 256-entry table (index ``x + 128``)."""
    table, x = _int(table), _int(x)
    if table.shape != (256,):
        raise ValueError(f"activation table must have 256 entries, not shape {tuple(table.shape)}")
    return table[x + 128]


def epilogue(acc, bias, multiplier, shift, table=None) -> torch.Tensor:
    """The shared epilogue: ``int32 acc + int32 bias`` (exact, 33 bits), requantise to int8, then the
    activation table if one is given. Per-channel operands broadcast along the last axis."""
    y = requantize(_int(acc) + _int(bias), multiplier, shift)
    return apply_table(table, y) if table is not None else y


# -- fixed-point exp, softmax and sigmoid -------------------------------------------------------------

# exp(d) for d <= 0 is computed as 2**(-z) with z = -d * log2(e) in Q8 (8 fractional bits):
#   z = (-d * LOG2E_Q12 + 2**11) >> 12,   exp = EXP2_TABLE[z & 255] >> (z >> 8)
LOG2E_Q12 = round(math.log2(math.e) * (1 << 12))          # 5909
EXP2_TABLE = torch.tensor([math.floor((1 << 15) * 2.0 ** (-f / 256) + 0.5) for f in range(256)],
                          dtype=torch.int64)                # Q15, 32768 .. 16428
EXP_ZERO_SHIFT = 16                                         # 2**-16 of Q15 is below one LSB


def exp_fixed(d) -> torch.Tensor:
    """``exp(d / 2**8)`` in Q15 for int16 fixed-point ``d <= 0`` (8 fractional bits); exp(0) == 32768."""
    d = _int(d)
    if torch.any(d > 0):
        raise ValueError("exp_fixed: the argument must be <= 0 (subtract the running maximum first)")
    z = (-d * LOG2E_Q12 + (1 << 11)) >> 12
    whole = z >> 8
    value = EXP2_TABLE[z & 255] >> torch.clamp(whole, max=EXP_ZERO_SHIFT)
    return torch.where(whole >= EXP_ZERO_SHIFT, torch.zeros_like(value), value)


def normalize(values, dim: int = -1) -> torch.Tensor:
    """Divide non-negative Q15 values by their sum along `dim`, giving Q15 weights.

    One reciprocal per row, ``r = 2**46 // sum`` (exact integer division), then per element
    ``round_shift(v * r, 31)``. A row whose sum is zero gives zeros.
    """
    values = _int(values)
    total = values.sum(dim=dim, keepdim=True)
    recip = torch.where(total > 0, (1 << ROUTER_RECIP_BITS) // torch.clamp(total, min=1),
                        torch.zeros_like(total))
    return round_shift(values * recip, ROUTER_RECIP_BITS - GATE_FRAC_BITS)


def softmax_fixed(logits, dim: int = -1) -> torch.Tensor:
    """Softmax of int16 Q8 logits in Q15: subtract the maximum, `exp_fixed`, `normalize`."""
    logits = _int(logits)
    shifted = logits - logits.max(dim=dim, keepdim=True).values
    return normalize(exp_fixed(shifted), dim=dim)


# sigmoid of Q8 logits: clamp to [-8, 8), linear interpolation in a 257-entry Q15 table with step 1/16.
SIGMOID_TABLE = torch.tensor(
    [math.floor((1 << 15) / (1.0 + math.exp(-(i - 128) / 16)) + 0.5) for i in range(257)],
    dtype=torch.int64)


def sigmoid_fixed(logits) -> torch.Tensor:
    """``sigmoid(x / 2**8)`` in Q15 for int16 Q8 `logits`."""
    x = torch.clamp(_int(logits), -(8 << LOGIT_FRAC_BITS), (8 << LOGIT_FRAC_BITS) - 1) \
        + (8 << LOGIT_FRAC_BITS)
    index, frac = x >> 4, x & 15
    low, high = SIGMOID_TABLE[index], SIGMOID_TABLE[index + 1]
    return low + (((high - low) * frac + 8) >> 4)


def topk_indices(scores, k: int) -> torch.Tensor:
    """Indices of the `k` largest scores along the last axis, largest first; among equal scores the
    lower index wins (and comes first)."""
    scores = _int(scores)
    if not 1 <= k <= scores.shape[-1]:
        raise ValueError(f"k must be between 1 and {scores.shape[-1]} experts, not {k}")
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices
    return order[..., :k]
