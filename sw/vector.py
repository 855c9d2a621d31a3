"""The vector operations of a decoder layer in integers (the `VECTOR` instruction), and their float
counterparts: residual add, element-wise multiply, RMSNorm, LayerNorm, rotary embedding,
requantisation, and the sigmoid gate of a shared expert.

Every operation works on rows of int8 values (int32 for `requant`) and gives int8 (Q15 for
`sigmoid_gate`), through the one requantisation rule of `sw.numerics`.

The norms divide by a square root without a divider per element: each row's sum of squares ``s``
is normalised by an even shift into ``[2**30, 2**32)``, its integer square root taken and one
reciprocal formed (`rsqrt_fixed`); then each element is ``x * inv`` scaled so that
``|x| / sqrt(s) <= 1`` becomes a Q16 value, times the int16 weight, plus an int32 bias,
requantised. ``eps`` enters as an integer added to ``s``.

``*_operands`` turn float parameters and scales into the integers; ``*_float`` are the float
references the bounds in `tests/test_vector.py` are measured against.
"""

from __future__ import annotations

import math

import torch

from . import numerics as nx

__all__ = ["NORM_FRAC_BITS", "ROPE_FRAC_BITS", "RSQRT_BITS", "isqrt", "rsqrt_fixed", "add",
           "multiply", "requant", "rmsnorm", "layernorm", "rope", "sigmoid_gate",
           "add_operands", "norm_operands", "rope_table", "gate_operands",
           "rmsnorm_float", "layernorm_float", "rope_float"]

NORM_FRAC_BITS = 16      # x / sqrt(sum of squares) as a Q16 value, at most 1.0
ROPE_FRAC_BITS = 14      # cos and sin as int16 Q14
RSQRT_BITS = 47          # inv = 2**47 // isqrt(normalised s), in (2**31, 2**32]
_NORM_LOW = 30           # s is normalised into [2**30, 2**32)


def isqrt(values) -> torch.Tensor:
    """Exact integer square roots ``floor(sqrt(v))`` of non-negative int64 values."""
    values = torch.as_tensor(values, dtype=torch.int64)
    if torch.any(values < 0):
        raise ValueError("isqrt: values must be non-negative")
    return torch.tensor([math.isqrt(int(v)) for v in values.reshape(-1).tolist()],
                        dtype=torch.int64).reshape(values.shape)


def rsqrt_fixed(s) -> tuple[torch.Tensor, torch.Tensor]:
    """``1 / sqrt(s) ~= inv / 2**k`` for non-negative int64 `s`: ``s`` shifted by an even ``e`` into
    ``[2**30, 2**32)``, ``inv = 2**47 // isqrt(s << e)``, ``k = 47 - e/2``. ``s == 0`` gives
    ``inv == 0`` (a row of zeros stays zero)."""
    s = torch.as_tensor(s, dtype=torch.int64)
    bits = torch.tensor([int(v).bit_length() for v in s.reshape(-1).tolist()],
                        dtype=torch.int64).reshape(s.shape)
    # e even, with s << e in [2**30, 2**32): bit length 31 or 32 after the shift.
    e = ((_NORM_LOW + 2 - bits) // 2) * 2
    shifted = torch.where(e >= 0, s << e.clamp(min=0), s >> (-e).clamp(min=0))
    root = isqrt(shifted)
    inv = torch.where(s > 0, (1 << RSQRT_BITS) // root.clamp(min=1), torch.zeros_like(s))
    return inv, RSQRT_BITS - e // 2


def _rows(x, what: str) -> torch.Tensor:
    x = torch.as_tensor(x, dtype=torch.int64)
    if x.ndim != 2:
        raise ValueError(f"{what}: rows must be a 2-D [rows, width] tensor, not shape "
                         f"{list(x.shape)}")
    return x


def add(a, b, multiplier_a: int, multiplier_b: int, shift: int) -> torch.Tensor:
    """Residual add of int8 rows at two scales: ``saturate(round_shift(a*ma + b*mb, shift))``."""
    a, b = nx._int(a), nx._int(b)
    return nx.saturate(nx.round_shift(a * multiplier_a + b * multiplier_b, shift))


def multiply(a, b, multiplier: int, shift: int) -> torch.Tensor:
    """Element-wise product of int8 rows, requantised: ``requantize(a * b, multiplier, shift)``."""
    return nx.requantize(nx._int(a) * nx._int(b), multiplier, shift)


def requant(acc, multiplier: int, shift: int) -> torch.Tensor:
    """int32 rows to int8: the requantisation rule."""
    return nx.requantize(acc, multiplier, shift)


def _normalise(c: torch.Tensor, s: torch.Tensor, weight, bias, multiplier: int,
               shift: int) -> torch.Tensor:
    inv, k = rsqrt_fixed(s)                                  # [rows]
    t = nx.round_shift(c * inv.unsqueeze(1), (k - NORM_FRAC_BITS).unsqueeze(1))   # |t| <= 2**16
    u = t * nx._int(weight) + nx._int(bias)
    return nx.requantize(u, multiplier, shift)


def rmsnorm(x, weight, bias, eps_q: int, multiplier: int, shift: int) -> torch.Tensor:
    """RMSNorm of int8 rows: ``s = sum(x**2) + eps_q``, then `_normalise` (weights int16, biases
    int32, zero for a plain RMSNorm)."""
    x = _rows(x, "rmsnorm")
    return _normalise(x, (x * x).sum(1) + eps_q, weight, bias, multiplier, shift)


def layernorm(x, weight, bias, eps_q: int, multiplier: int, shift: int) -> torch.Tensor:
    """LayerNorm of int8 rows with exact centring: ``c = n*x - sum(x)``, ``s = sum(c**2) + eps_q``,
    then `_normalise` as RMSNorm."""
    x = _rows(x, "layernorm")
    c = x * x.shape[1] - x.sum(1, keepdim=True)
    return _normalise(c, (c * c).sum(1) + eps_q, weight, bias, multiplier, shift)


def rope(x, table, head_dim: int) -> torch.Tensor:
    """Rotary embedding of int8 rows of whole heads (``rotate_half`` pairing: element ``i`` with
    ``i + head_dim/2``). `table` ``[rows, head_dim]`` int16: each row's Q14 cos for the first half
    of a head, then its sin."""
    x = _rows(x, "rope")
    rows, width = x.shape
    if head_dim < 2 or head_dim % 2 or width % head_dim:
        raise ValueError(f"rope: rows of {width} are not whole heads of an even head_dim "
                         f"{head_dim}")
    half = head_dim // 2
    table = nx._int(table).reshape(rows, 1, head_dim)
    cos, sin = table[..., :half], table[..., half:]
    heads = x.reshape(rows, -1, head_dim)
    x1, x2 = heads[..., :half], heads[..., half:]
    y1 = nx.round_shift(x1 * cos - x2 * sin, ROPE_FRAC_BITS)
    y2 = nx.round_shift(x2 * cos + x1 * sin, ROPE_FRAC_BITS)
    return nx.saturate(torch.cat([y1, y2], dim=-1).reshape(rows, width))


def sigmoid_gate(x, weight, multiplier: int, shift: int) -> torch.Tensor:
    """A shared expert's Q15 gate per row: ``sigmoid_fixed(requantize(x . w, m, s, 16))`` (the Q8
    logit of `QuantizedMoE.shared_gate_q15`)."""
    x = _rows(x, "sigmoid_gate")
    acc = (x.to(torch.float64) @ nx._int(weight).to(torch.float64)).to(torch.int64)
    return nx.sigmoid_fixed(nx.requantize(acc, multiplier, shift, bits=16))


# -- operands from float parameters -------------------------------------------------------------------

def add_operands(scale_a: float, scale_b: float, out_scale: float) -> tuple[int, int, int]:
    """``(multiplier_a, multiplier_b, shift)`` of ``a*scale_a + b*scale_b`` at `out_scale`: one shift,
    the larger ratio's multiplier in ``[2**14, 2**15)``."""
    big = max(scale_a, scale_b) / out_scale
    _, shift = nx.quantize_multiplier(big)
    shift = int(shift)
    return (round(scale_a / out_scale * 2 ** shift), round(scale_b / out_scale * 2 ** shift), shift)


def norm_operands(weight: torch.Tensor, bias: torch.Tensor | None, eps: float, in_scale: float,
                  out_scale: float, centred: bool) -> dict:
    """The integers of an RMSNorm (`centred` False) or LayerNorm over rows of ``n`` inputs at
    `in_scale`: int16 weights (per-tensor scale), int32 biases, ``eps_q``, multiplier and shift."""
    weight = weight.detach().to(torch.float64)
    n = weight.numel()
    peak = float(weight.abs().max())
    w_scale = peak / 32767 if peak > 0 else 1.0
    weight_q = torch.floor(weight / w_scale + 0.5).to(torch.int64)
    # y = t / 2**16 * sqrt(n) * w: the scale of u = t * w_q is sqrt(n) * w_scale / 2**16.
    u_scale = math.sqrt(n) * w_scale / (1 << NORM_FRAC_BITS)
    bias_q = torch.zeros(n, dtype=torch.int64) if bias is None else \
        torch.floor(bias.detach().to(torch.float64) / u_scale + 0.5).to(torch.int64)
    # s counts squares of x (RMS) or of c = n*x - sum x (LayerNorm): eps in those units.
    eps_q = math.floor(eps * (n ** 3 if centred else n) / in_scale ** 2 + 0.5)
    multiplier, shift = nx.quantize_multiplier(u_scale / out_scale)
    return {"weight": weight_q, "bias": nx.saturate(bias_q, 32), "eps_q": eps_q,
            "multiplier": int(multiplier), "shift": int(shift)}


def rope_table(positions, head_dim: int, theta: float = 10000.0) -> torch.Tensor:
    """``[rows, head_dim]`` int16: Q14 cos then sin of each row's position (`rope`'s table)."""
    positions = torch.as_tensor(positions, dtype=torch.float64).reshape(-1, 1)
    half = head_dim // 2
    freqs = theta ** (-torch.arange(half, dtype=torch.float64) * 2 / head_dim)
    angles = positions * freqs
    one = 1 << ROPE_FRAC_BITS
    return torch.cat([torch.floor(torch.cos(angles) * one + 0.5),
                      torch.floor(torch.sin(angles) * one + 0.5)], dim=1).to(torch.int64)


def gate_operands(weight: torch.Tensor, in_scale: float) -> dict:
    """A shared-expert gate ``Linear(d, 1)`` as int8 weights and the Q8 logit's requantisation."""
    from .quantized import QuantizedLinear
    layer = QuantizedLinear.from_float(weight.reshape(1, -1), None, in_scale,
                                       2.0 ** -nx.LOGIT_FRAC_BITS)
    return {"weight": layer.weight[0], "multiplier": int(layer.multiplier[0]),
            "shift": int(layer.shift[0])}


# -- float references -----------------------------------------------------------------------------------

def rmsnorm_float(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    x = x.to(torch.float64)
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight.to(torch.float64)


def layernorm_float(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                    eps: float) -> torch.Tensor:
    return torch.nn.functional.layer_norm(x.to(torch.float64), (x.shape[-1],),
                                          weight.to(torch.float64), bias.to(torch.float64), eps)


def rope_float(x: torch.Tensor, positions, head_dim: int, theta: float = 10000.0) -> torch.Tensor:
    x = x.to(torch.float64)
    rows = x.shape[0]
    half = head_dim // 2
    freqs = theta ** (-torch.arange(half, dtype=torch.float64) * 2 / head_dim)
    angles = torch.as_tensor(positions, dtype=torch.float64).reshape(-1, 1) * freqs
    cos, sin = torch.cos(angles).unsqueeze(1), torch.sin(angles).unsqueeze(1)
    heads = x.reshape(rows, -1, head_dim)
    x1, x2 = heads[..., :half], heads[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).reshape(rows, -1)
