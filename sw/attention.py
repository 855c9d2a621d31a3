"""The integer reference of attention with computation reordering: what `hw.attention` computes, bit
for bit.

Each query row takes the keys in order, one at a time, keeping a running maximum ``m``, a running sum
``s`` and an accumulator ``acc`` per head (single-pass, "online" softmax): no score matrix is ever held.
For key ``j`` of head ``h`` (unmasked):

    x   = saturate(round_shift(q . k_j * score_mult, score_shift), 24)    # Q8 logit, natural log units
    d   = x - m
    d > 0:  r = exp_fixed(-d), p = 1.0, m = x      # a new maximum: rescale what came before
    else:   r = 1.0,           p = exp_fixed(d)
    s   = round_shift(s * r, 15) + p               # Q15
    acc = round_shift(acc * r, 15) + p * v_j       # Q15 x int8, per element of the head

The first key of a row sets ``m = x``, ``s = 1.0`` and ``acc = 1.0 * v_0``. At the end, one exact
reciprocal per (row, head), ``recip = 2**40 // s``, and per element

    out = requantize(round_shift(acc * recip, 40 - 8), out_mult, out_shift)        # int8

Causal masking lets query ``i`` (at position ``seq_kv - seq_q + i``) see keys up to its position;
grouped-query attention maps query head ``h`` to key/value head ``h // (heads // kv_heads)``.
The result does not depend on how query rows are grouped: each row sees its keys in the same order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..formats import attention as attention_formats
from ..formats.attention import AttentionShape, group_keys
from ..formats.numbers import ATTENTION_LOGIT_BITS, ATTENTION_RECIP_BITS
from . import numerics as nx
from .inputs import ATTENTION_INPUT_KINDS
from .quantized import dequantize, quantize_tensor

__all__ = ["AVG_FRAC_BITS", "EXP_CLAMP", "AttentionShape", "AttentionParams", "attention_fixed",
           "attention_float", "QuantizedAttention", "group_keys", "stream_words", "traffic_bytes",
           "as_words", "check_fits", "attention_macs", "ATTENTION_INPUT_KINDS", "random_inputs"]

AVG_FRAC_BITS = 8        # acc / s is formed in Q8 of the value scale before the output requantisation
EXP_CLAMP = 4095         # exp_fixed(-d) is 0 for every d >= 2840; the hardware clamps |d| here


@dataclass(frozen=True)
class AttentionParams:
    """The two requantisations: int32 score -> Q8 logit, and Q8 average of values -> int8 output."""

    score_mult: int
    score_shift: int
    out_mult: int
    out_shift: int

    @classmethod
    def from_scales(cls, q_scale: float, k_scale: float, v_scale: float, out_scale: float,
                    head_dim: int, softmax_scale: float | None = None) -> "AttentionParams":
        """Fold ``q_scale * k_scale * softmax_scale`` (default ``1/sqrt(head_dim)``) into the Q8 logit,
        and ``v_scale / out_scale`` into the output requantisation."""
        softmax_scale = 1 / math.sqrt(head_dim) if softmax_scale is None else softmax_scale
        score_mult, score_shift = nx.quantize_multiplier(
            q_scale * k_scale * softmax_scale * (1 << nx.LOGIT_FRAC_BITS))
        out_mult, out_shift = nx.quantize_multiplier(v_scale / out_scale / (1 << AVG_FRAC_BITS))
        return cls(int(score_mult), int(score_shift), int(out_mult), int(out_shift))


def _scores(q: torch.Tensor, k: torch.Tensor, rep: int) -> torch.Tensor:
    """Exact int32 dot products ``[seq_q, heads, seq_kv]`` (float64 matmul: every partial sum is an
    integer far below 2**53)."""
    k = k.repeat_interleave(rep, dim=1)                          # [seq_kv, heads, dim]
    return torch.einsum("qhd,khd->qhk", q.to(torch.float64), k.to(torch.float64)).to(torch.int64)


def _check(q, k, v, shape: AttentionShape):
    expected = {"q": (shape.seq_q, shape.heads, shape.head_dim),
                "k": (shape.seq_kv, shape.kv_heads, shape.head_dim),
                "v": (shape.seq_kv, shape.kv_heads, shape.head_dim)}
    for name, tensor in (("q", q), ("k", k), ("v", v)):
        if tuple(tensor.shape) != expected[name]:
            raise ValueError(f"attention {name} must have shape {expected[name]} "
                             f"[rows, heads, head_dim], not {tuple(tensor.shape)}")


def attention_fixed(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, shape: AttentionShape,
                    params: AttentionParams) -> torch.Tensor:
    """int8 ``q [seq_q, heads, dim]``, ``k, v [seq_kv, kv_heads, dim]`` -> int8 ``[seq_q, heads, dim]``,
    by the online-softmax rules in the module docstring."""
    _check(q, k, v, shape)
    q, k, v = (torch.as_tensor(t, dtype=torch.int64) for t in (q, k, v))
    one = nx.GATE_ONE
    x = nx.saturate(nx.round_shift(_scores(q, k, shape.rep) * params.score_mult,
                                   params.score_shift), ATTENTION_LOGIT_BITS)
    v = v.repeat_interleave(shape.rep, dim=1)                   # [seq_kv, heads, dim]
    positions = torch.arange(shape.seq_q) + shape.offset
    m = x[:, :, 0].clone()
    total = torch.full_like(m, one)
    acc = one * v[0].unsqueeze(0).expand(shape.seq_q, -1, -1).clone()
    for j in range(1, shape.seq_kv):
        xj = x[:, :, j]
        d = xj - m
        e = nx.exp_fixed(-torch.clamp(d.abs(), max=EXP_CLAMP))
        r = torch.where(d > 0, e, torch.full_like(e, one))
        p = torch.where(d > 0, torch.full_like(e, one), e)
        if shape.causal:
            seen = (positions >= j).unsqueeze(1)                 # [seq_q, 1]
            r = torch.where(seen, r, torch.full_like(r, one))
            p = torch.where(seen, p, torch.zeros_like(p))
            d = torch.where(seen, d, torch.zeros_like(d))
        m = torch.where(d > 0, xj, m)
        total = nx.round_shift(total * r, nx.GATE_FRAC_BITS) + p
        acc = nx.round_shift(acc * r.unsqueeze(-1), nx.GATE_FRAC_BITS) + p.unsqueeze(-1) * v[j]
    recip = (1 << ATTENTION_RECIP_BITS) // total
    average = nx.round_shift(acc * recip.unsqueeze(-1), ATTENTION_RECIP_BITS - AVG_FRAC_BITS)
    return nx.requantize(average, params.out_mult, params.out_shift)


def attention_float(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, shape: AttentionShape,
                    softmax_scale: float | None = None) -> torch.Tensor:
    """Float attention ``[seq_q, heads, dim]`` by `torch.nn.functional.scaled_dot_product_attention`
    (causal with the queries at the last positions, grouped-query heads repeated)."""
    rep = shape.rep
    qf = q.to(torch.float64).permute(1, 0, 2)                            # [heads, seq_q, dim]
    kf = k.to(torch.float64).repeat_interleave(rep, dim=1).permute(1, 0, 2)
    vf = v.to(torch.float64).repeat_interleave(rep, dim=1).permute(1, 0, 2)
    mask = None
    if shape.causal:
        positions = torch.arange(shape.seq_q) + shape.offset
        mask = positions.unsqueeze(1) >= torch.arange(shape.seq_kv).unsqueeze(0)
    out = torch.nn.functional.scaled_dot_product_attention(qf, kf, vf, attn_mask=mask,
                                                           scale=softmax_scale)
    return out.permute(1, 0, 2)


@dataclass
class QuantizedAttention:
    """Float Q, K, V quantised per tensor (symmetric int8), the integer attention, and its float
    equivalent on the same int8 inputs (what the integer algorithm approximates)."""

    shape: AttentionShape
    q_scale: float
    k_scale: float
    v_scale: float
    out_scale: float

    @classmethod
    def calibrate(cls, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, shape: AttentionShape,
                  ) -> "QuantizedAttention":
        scale = [max(float(t.abs().max()), 1e-8) / nx.INT8_MAX for t in (q, k, v)]
        # the output is a convex combination of value rows: the value scale always holds it
        return cls(shape, scale[0], scale[1], scale[2], scale[2])

    @property
    def params(self) -> AttentionParams:
        return AttentionParams.from_scales(self.q_scale, self.k_scale, self.v_scale,
                                           self.out_scale, self.shape.head_dim)

    def quantize(self, q, k, v):
        return (quantize_tensor(q, self.q_scale), quantize_tensor(k, self.k_scale),
                quantize_tensor(v, self.v_scale))

    def __call__(self, q_q, k_q, v_q) -> torch.Tensor:
        return attention_fixed(q_q, k_q, v_q, self.shape, self.params)

    def reference(self, q_q, k_q, v_q) -> torch.Tensor:
        """Float SDPA of the dequantised int8 inputs, in output LSBs (``/ out_scale``)."""
        return attention_float(dequantize(q_q, self.q_scale), dequantize(k_q, self.k_scale),
                               dequantize(v_q, self.v_scale), self.shape) / self.out_scale


# -- the order the hardware takes its data in -----------------------------------------------------------

def _rows_as_words(t: torch.Tensor, word: int) -> torch.Tensor:
    """``[rows, heads, dim]`` -> ``[rows, heads * ceil(dim / word), word]``, heads zero-padded."""
    rows, heads, dim = t.shape
    padded = -(-dim // word) * word
    out = torch.zeros(rows, heads, padded, dtype=torch.int64)
    out[:, :, :dim] = torch.as_tensor(t, dtype=torch.int64)
    return out.reshape(rows, -1, word)


def as_words(t: torch.Tensor, word: int) -> list[list[int]]:
    """``[rows, heads, dim]`` int8 -> its rows' bus words in order (Q, K, V in memory; O out of the
    unit), each a list of `word` values, heads zero-padded to whole words."""
    return _rows_as_words(t, word).reshape(-1, word).tolist()


def stream_words(q, k, v, shape: AttentionShape, group: int, word: int):
    """The bus words the attention unit takes, in order: for each group of `group` query rows, the
    rows' Q words, then for each key ``j < group_keys(...)`` key row j's words then value row j's.
    Each word is a list of `word` int8 values."""
    _check(q, k, v, shape)
    qw, kw, vw = (_rows_as_words(t, word).tolist() for t in (q, k, v))
    for first in range(0, shape.seq_q, group):
        rows = min(group, shape.seq_q - first)
        for row in qw[first:first + rows]:
            yield from row
        for j in range(group_keys(shape, first, rows)):
            yield from kw[j]
            yield from vw[j]


def traffic_bytes(shape: AttentionShape, group: int, word: int) -> dict:
    """DRAM bytes of one attention call, streaming K and V once per query group: Q read once, O
    written once (rows padded to whole bus words)."""
    row_q = shape.heads * shape.head_words(word) * word
    row_kv = shape.kv_heads * shape.head_words(word) * word
    groups = [(first, min(group, shape.seq_q - first)) for first in range(0, shape.seq_q, group)]
    kv_rows = sum(group_keys(shape, first, rows) for first, rows in groups)
    read_q, read_kv, write_o = shape.seq_q * row_q, 2 * kv_rows * row_kv, shape.seq_q * row_q
    return {"q": read_q, "kv": read_kv, "o": write_o, "total": read_q + read_kv + write_o,
            "kv_rows": kv_rows, "groups": len(groups)}


def check_fits(shape: AttentionShape, config) -> None:
    """Refuse, naming the limits, a call the `AccelConfig`'s attention unit cannot hold (the unit's
    own rules, `formats.attention.check`, on the call's command)."""
    fields = attention_formats.command_fields(config, shape, AttentionParams(nx.MULT_MIN, 0,
                                                                             nx.MULT_MIN, 0))
    reasons = attention_formats.check(config, fields)
    if reasons:
        raise ValueError(f"attention of {shape.seq_q} x {shape.seq_kv}, {shape.heads} heads of "
                         f"{shape.head_dim} does not fit the {config.name} configuration: "
                         + "; ".join(reasons))


def attention_macs(shape: AttentionShape) -> int:
    """Useful multiply-accumulates: q . k and p x v for every (query, visible key, head, element)."""
    positions = torch.arange(shape.seq_q) + shape.offset
    visible = (torch.clamp(positions + 1, max=shape.seq_kv).sum().item() if shape.causal
               else shape.seq_q * shape.seq_kv)
    return 2 * visible * shape.heads * shape.head_dim


def random_inputs(shape: AttentionShape, kind: str = "random", seed: int = 0):
    """int8 ``q, k, v`` and `AttentionParams` for a test or benchmark case.

    ``random``: uniform int8 with the scales of unit-variance data; ``extreme``: every value -128 or
    127 and a logit scale so large that the Q8 logits saturate (a naive exp would overflow);
    ``peaked``: random, with a few keys whose scores dwarf the rest, arriving late so the running
    maximum jumps and the accumulators are rescaled; ``flat``: Q all zero, so every key weighs the
    same and the running sum reaches its largest value (``keys x 1.0``).
    """
    if kind not in ATTENTION_INPUT_KINDS:
        raise ValueError(f"attention input kind must be one of {', '.join(ATTENTION_INPUT_KINDS)}, "
                         f"not {kind!r}")
    g = torch.Generator().manual_seed(seed)
    q_shape = (shape.seq_q, shape.heads, shape.head_dim)
    kv_shape = (shape.seq_kv, shape.kv_heads, shape.head_dim)
    if kind == "extreme":
        q, k, v = (torch.where(torch.rand(s, generator=g) < 0.5, nx.INT8_MIN, nx.INT8_MAX)
                   for s in (q_shape, kv_shape, kv_shape))
        return q, k, v, AttentionParams.from_scales(1.0, 1.0, 0.05, 0.05, shape.head_dim)
    q = torch.randint(-127, 128, q_shape, generator=g)
    k = torch.randint(-127, 128, kv_shape, generator=g)
    v = torch.randint(-128, 128, kv_shape, generator=g)
    if kind == "flat":
        q.zero_()
    if kind == "peaked":       # keys in the second half that match query 0 (its kv heads' first)
        count = max(1, shape.seq_kv // 8)
        late = shape.seq_kv // 2 + torch.randperm(shape.seq_kv - shape.seq_kv // 2, generator=g)[:count]
        k[late] = q[0, ::shape.rep]
    scale = 3.0 / 127          # the int8 range spans three standard deviations
    return q, k, v, AttentionParams.from_scales(scale, scale, scale, scale, shape.head_dim)
