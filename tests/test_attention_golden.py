"""The integer attention reference: its float bound, its stream order and traffic formula, and the
refusals of shapes it cannot take."""

import gc
import re
import warnings

import pytest
import torch
from amaranth.hdl import UnusedElaboratable

from moeaccel.config import preset
from moeaccel.sw import numerics as nx
from moeaccel.cycles import attention_cycles
from moeaccel.sw.attention import (AttentionParams, AttentionShape, attention_fixed, attention_macs,
                                   check_fits, group_keys, random_inputs, stream_words,
                                   traffic_bytes)
from moeaccel.sw.attention_accuracy import BOUND_LSB, CASES, measure


@pytest.mark.parametrize("name,shape,spread", CASES, ids=[c[0] for c in CASES])
def test_integer_attention_within_bound_of_float_sdpa(name, shape, spread):
    result = measure(shape, spread, seed=7)
    assert result["max_lsb"] <= BOUND_LSB, result
    assert result["mean_lsb"] < 0.3, result          # the output rounding alone averages 0.25


def two_pass(q, k, v, shape, params):
    """The same fixed-point softmax done the usual way (max first, then the sum): a second,
    independent reading of the rules, equal to the online one up to the rescale roundings."""
    k = k.repeat_interleave(shape.rep, dim=1)
    v = v.repeat_interleave(shape.rep, dim=1)
    scores = torch.einsum("qhd,khd->qhk", q.double(), k.double()).long()
    x = nx.saturate(nx.round_shift(scores * params.score_mult, params.score_shift), 24)
    if shape.causal:
        positions = torch.arange(shape.seq_q) + shape.offset
        hidden = (torch.arange(shape.seq_kv).unsqueeze(0) > positions.unsqueeze(1)).unsqueeze(1)
        x = torch.where(hidden, torch.full_like(x, -(1 << 23)), x)
    p = nx.exp_fixed(torch.clamp(x - x.max(-1, keepdim=True).values, min=-4095))
    if shape.causal:
        p = torch.where(hidden, torch.zeros_like(p), p)
    out = torch.einsum("qhk,khd->qhd", p.double(), v.double()) / p.sum(-1, keepdim=True).double()
    return out * params.out_mult / 2.0 ** (params.out_shift - 8)


@pytest.mark.parametrize("kind", ["random", "extreme", "peaked"])
def test_online_softmax_agrees_with_two_pass(kind):
    shape = AttentionShape(9, 40, 4, 2, 24, causal=True)
    q, k, v, params = random_inputs(shape, kind, seed=3)
    online = attention_fixed(q, k, v, shape, params).double()
    reference = two_pass(q, k, v, shape, params).clamp(-128, 127)
    assert (online - reference).abs().max() <= 1.0


def test_first_key_alone_passes_the_value_through():
    """One key: the softmax weight is exactly 1, so the output is V requantised."""
    shape = AttentionShape(1, 1, 2, 1, 8)
    q, k, v, params = random_inputs(shape, "random", seed=1)
    out = attention_fixed(q, k, v, shape, params)
    assert torch.equal(out[0], v[0].repeat_interleave(2, dim=0))


def test_causal_rows_ignore_later_keys():
    shape = AttentionShape(6, 6, 2, 2, 8, causal=True)
    q, k, v, params = random_inputs(shape, "random", seed=2)
    base = attention_fixed(q, k, v, shape, params)
    k2, v2 = k.clone(), v.clone()
    k2[4:], v2[4:] = 127, -128                       # keys 4 and 5: only rows 4 and 5 see them
    changed = attention_fixed(q, k2, v2, shape, params)
    assert torch.equal(base[:4], changed[:4])
    assert not torch.equal(base[4:], changed[4:])


def test_extreme_logits_do_not_overflow():
    shape = AttentionShape(4, 16, 2, 2, 32)
    q, k, v, params = random_inputs(shape, "extreme", seed=4)
    scores = torch.einsum("qhd,khd->qhk", q.double(), k.double())
    assert float(scores.abs().max()) * params.score_mult / 2 ** params.score_shift > 1 << 23
    out = attention_fixed(q, k, v, shape, params).double()
    assert (out - two_pass(q, k, v, shape, params).clamp(-128, 127)).abs().max() <= 1.0


@pytest.mark.parametrize("shape", [AttentionShape(10, 10, 4, 2, 12, causal=True),
                                   AttentionShape(7, 3, 2, 1, 8), AttentionShape(1, 9, 8, 8, 16, True)],
                         ids=str)
def test_stream_and_traffic_formula_agree(shape):
    q, k, v, _ = random_inputs(shape, "random", seed=5)
    words = list(stream_words(q, k, v, shape, group=4, word=8))
    traffic = traffic_bytes(shape, group=4, word=8)
    assert len(words) * 8 == traffic["q"] + traffic["kv"]
    assert traffic["o"] == traffic["q"]
    assert all(len(w) == 8 for w in words)
    # keys a group needs, counted from the mask itself: those any of its rows sees
    positions = torch.arange(shape.seq_q) + shape.offset
    keys = torch.arange(shape.seq_kv)
    needed = 0
    for first in range(0, shape.seq_q, 4):
        rows = positions[first:first + 4]
        seen = (keys.unsqueeze(0) <= rows.unsqueeze(1)) if shape.causal else \
            torch.ones(len(rows), shape.seq_kv, dtype=torch.bool)
        last_seen = int(seen.any(0).nonzero().max()) + 1          # streamed up to the last one
        needed += last_seen
        assert group_keys(shape, first, len(rows)) == last_seen
    assert traffic["kv_rows"] == needed


def test_on_chip_memories_do_not_grow_with_the_sequence_length():
    """The unit's memories, elaborated for sequence limits of 256 and 4096: the same depths; the
    words widen by the four bits a 16x longer sum needs, nothing more."""
    from amaranth.lib import memory
    from moeaccel.hw.attention import Attention

    def memories(max_seq_len):
        with warnings.catch_warnings():
            # the module is only inspected, never elaborated into a design: collect it here
            warnings.simplefilter("ignore", UnusedElaboratable)
            module = Attention(preset("tiny").replace(max_seq_len=max_seq_len)).elaborate(None)
            subs = {name: sub[0] if isinstance(sub, tuple) else sub
                    for name, sub in module._named_submodules.items()}
            found = {name: (sub.depth, sub.shape.size if hasattr(sub.shape, "size")
                            else sub.shape.width)
                     for name, sub in subs.items() if isinstance(sub, memory.Memory)}
            del module, subs
            gc.collect()
        return found
    short, long = memories(256), memories(4096)
    assert short.keys() == long.keys() and len(short) == 2 * 4 + 2
    for name in short:
        assert short[name][0] == long[name][0], name
        assert 0 <= long[name][1] - short[name][1] <= 4 * 8 * 4, name


def test_cycle_model_counts_every_key_row_once_per_group():
    shape = AttentionShape(512, 512, 8, 8, 64)
    cycles = attention_cycles(shape, group=4, word=8)
    assert cycles["keys"] == 128 * 512 * 2 * 8 * 8
    assert attention_macs(shape) == 2 * 512 * 512 * 8 * 64
    causal = AttentionShape(8, 8, 1, 1, 8, causal=True)
    assert attention_macs(causal) == 2 * 36 * 8


@pytest.mark.parametrize("fields,message", [
    (dict(seq_q=0), r"^attention seq_q must be a positive integer, not 0$"),
    (dict(heads=6, kv_heads=4), r"^attention heads=6 must be a multiple of kv_heads=4 "),
    (dict(seq_q=9, seq_kv=8, causal=True), r"^causal attention needs seq_q <= seq_kv "),
])
def test_shape_refuses_bad_fields(fields, message):
    base = dict(seq_q=4, seq_kv=8, heads=4, kv_heads=4, head_dim=8, causal=False)
    with pytest.raises(ValueError, match=message):
        AttentionShape(**{**base, **fields})


@pytest.mark.parametrize("shape,message", [
    (AttentionShape(2048, 2048, 2, 2, 8), r"^attention of 2048 x 2048, 2 heads of 8 does not fit the "
                                          r"tiny configuration: seq_q=2048 \(1 \.\. max_seq_len=1024\); "
                                          r"seq_kv=2048 \(1 \.\. max_seq_len=1024\)$"),
    (AttentionShape(4, 4, 32, 32, 8), r"^attention of 4 x 4, 32 heads of 8 does not fit the tiny "
                                      r"configuration: kv_heads=32 x rep=1 heads \(1 \.\. "
                                      r"max_heads=8\)"),
    (AttentionShape(4, 4, 4, 4, 64), r"^attention of 4 x 4, 4 heads of 64 does not fit the tiny "
                                     r"configuration: rows of 4 heads x 8 words, more than the 16 "
                                     r"words of 8 int8 a row holds \(max_d_model=128\)$"),
])
def test_check_fits_names_the_limit(shape, message):
    with pytest.raises(ValueError, match=message):
        check_fits(shape, preset("tiny"))


def test_reference_refuses_mismatched_tensors():
    shape = AttentionShape(2, 3, 2, 1, 8)
    q, k, v, params = random_inputs(shape, "random")
    with pytest.raises(ValueError, match=re.escape("attention k must have shape (3, 1, 8)")):
        attention_fixed(q, k[:, :, :4], v, shape, params)
