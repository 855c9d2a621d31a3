"""The integer rules of sw.numerics: each against an independent statement of the rule."""

import math
from fractions import Fraction

import pytest
import torch
from hypothesis import given, settings, strategies as st

from moeaccel.sw import numerics as nx


def _round_half_up(fraction: Fraction) -> int:
    return math.floor(fraction + Fraction(1, 2))


@given(st.integers(-(1 << 40), 1 << 40), st.integers(0, 47))
def test_round_shift_is_round_half_up_division(x, shift):
    assert int(nx.round_shift(x, shift)) == _round_half_up(Fraction(x, 1 << shift))


@pytest.mark.parametrize("x, shift, expected", [
    (5, 1, 3), (-5, 1, -2), (3, 1, 2), (-3, 1, -1), (-4, 1, -2), (7, 0, 7), (-1, 3, 0), (-5, 3, -1),
])
def test_round_shift_ties_go_up(x, shift, expected):
    assert int(nx.round_shift(x, shift)) == expected


@given(st.integers(-(1 << 32), (1 << 32) - 1), st.integers(nx.MULT_MIN, nx.MULT_MAX),
       st.integers(0, nx.SHIFT_MAX))
def test_requantize_saturates_to_int8(acc, multiplier, shift):
    exact = _round_half_up(Fraction(acc * multiplier, 1 << shift))
    assert int(nx.requantize(acc, multiplier, shift)) == max(-128, min(127, exact))


@given(st.floats(min_value=2.0 ** -33, max_value=2.0 ** 15 - 1, allow_nan=False))
def test_quantize_multiplier_is_close_and_in_range(real):
    multiplier, shift = nx.quantize_multiplier(real)
    assert nx.MULT_MIN <= int(multiplier) <= nx.MULT_MAX
    assert 0 <= int(shift) <= nx.SHIFT_MAX
    assert abs(int(multiplier) / 2 ** int(shift) - real) <= real * 2.0 ** -nx.MULT_BITS


@pytest.mark.parametrize("real, message", [
    (0.0, r"^requantisation scale must be positive and finite, not 0\.0$"),
    (-1.0, r"^requantisation scale must be positive and finite, not -1\.0$"),
    (1e6, r"^requantisation scale 1e\+06 is too large"),
    (1e-12, r"^requantisation scale 1e-12 is too small"),
])
def test_quantize_multiplier_refuses(real, message):
    with pytest.raises(ValueError, match=message):
        nx.quantize_multiplier(real)


def test_activation_tables_match_the_functions():
    table = nx.activation_table("relu", 0.05, 0.05)
    assert table.tolist() == [max(q, 0) for q in range(-128, 128)]
    identity = nx.activation_table("identity", 0.1, 0.1)
    assert identity.tolist() == list(range(-128, 128))
    gelu = nx.activation_table("gelu", 4 / 128, 4 / 127)
    for q in (-128, -40, -1, 0, 1, 64, 127):
        x = q * 4 / 128
        assert int(gelu[q + 128]) == round(0.5 * x * (1 + math.erf(x / math.sqrt(2))) / (4 / 127))
    saturating = nx.activation_table("identity", 1.0, 0.5)
    assert int(saturating[0]) == -128 and int(saturating[255]) == 127


def test_epilogue_is_bias_requantise_table():
    acc = torch.tensor([[1000, -1000, 0, 50000]])
    bias = torch.tensor([24, -24, 0, -1])
    multiplier, shift = torch.tensor([16384] * 4), torch.tensor([20] * 4)   # x 2**-6
    table = nx.activation_table("relu", 1.0, 1.0)
    assert nx.epilogue(acc, bias, multiplier, shift).tolist() == [[16, -16, 0, 127]]
    assert nx.epilogue(acc, bias, multiplier, shift, table).tolist() == [[16, 0, 0, 127]]


def test_exp_fixed_tracks_exp():
    d = torch.arange(-(16 << 8), 1)
    exact = torch.exp(d.double() / 256) * 32768
    assert int(nx.exp_fixed(torch.tensor(0))) == 32768
    assert float((nx.exp_fixed(d) - exact).abs().max()) <= 32768 * 2 ** -9
    assert int(nx.exp_fixed(torch.tensor(-(32768)))) == 0
    with pytest.raises(ValueError, match="must be <= 0"):
        nx.exp_fixed(torch.tensor(1))


def test_softmax_and_normalize():
    logits = torch.randint(-3000, 3000, (200, 9))
    probs = nx.softmax_fixed(logits)
    exact = torch.softmax(logits.double() / 256, dim=-1) * 32768
    assert float((probs - exact).abs().max()) <= 32
    assert probs.sum(-1).sub(32768).abs().max() <= 9          # each element rounds once
    assert nx.normalize(torch.tensor([[0, 0]])).tolist() == [[0, 0]]
    assert nx.normalize(torch.tensor([[5, 0]])).tolist() == [[32768, 0]]


def test_sigmoid_fixed_tracks_sigmoid():
    x = torch.arange(-(8 << 8), 8 << 8)
    exact = torch.sigmoid(x.double() / 256) * 32768
    # interpolation (h**2/8 * max|f"| = 1.5 LSB) plus the table's and the result's rounding
    assert float((nx.sigmoid_fixed(x) - exact).abs().max()) <= 2.5
    assert int(nx.sigmoid_fixed(torch.tensor(-32768))) == int(nx.SIGMOID_TABLE[0])
    assert int(nx.sigmoid_fixed(torch.tensor(32767))) == int(nx.sigmoid_fixed(torch.tensor(2047)))


def test_topk_tie_rule_lower_index_wins():
    scores = torch.tensor([[3, 7, 7, 1, 7], [0, 0, 0, 0, 0]])
    assert nx.topk_indices(scores, 2).tolist() == [[1, 2], [0, 1]]
    assert nx.topk_indices(scores, 5).tolist() == [[1, 2, 4, 0, 3], [0, 1, 2, 3, 4]]
    with pytest.raises(ValueError, match=r"^k must be between 1 and 5 experts, not 6$"):
        nx.topk_indices(scores, 6)


@settings(max_examples=200)
@given(st.lists(st.integers(-4, 4), min_size=2, max_size=32), st.data())
def test_topk_matches_sort_by_value_then_index(values, data):
    k = data.draw(st.integers(1, len(values)))
    expected = sorted(range(len(values)), key=lambda i: (-values[i], i))[:k]
    assert nx.topk_indices(torch.tensor([values]), k)[0].tolist() == expected
