"""M:N sparsity in sw/: pruning, compression, the sparse matmul and the packed blocks."""

import pytest
import torch
from hypothesis import given, settings, strategies as st

from moeaccel.config import SparsityPattern, preset
from moeaccel.formats.expert_ffn import weight_word
from moeaccel.sw import sparsity as sp

PATTERNS = [SparsityPattern(1, 1), SparsityPattern(1, 4), SparsityPattern(2, 4),
            SparsityPattern(4, 8)]


@pytest.mark.parametrize("pattern", PATTERNS, ids=str)
def test_prune_keeps_the_largest_n_of_every_m(pattern):
    weight = torch.randn(7, 37)
    pruned = sp.prune(weight, pattern)
    padded = torch.zeros(7, -(-37 // pattern.m) * pattern.m)
    padded[:, :37] = weight
    for row in range(7):
        for start in range(0, padded.shape[1], pattern.m):
            group = padded[row, start:start + pattern.m]
            kept = set(torch.argsort(group.abs(), descending=True, stable=True)[:pattern.n].tolist())
            for offset in range(pattern.m):
                if start + offset < 37:
                    want = weight[row, start + offset] if offset in kept else 0.0
                    assert float(pruned[row, start + offset]) == float(want)


def test_prune_ties_keep_the_lower_index():
    weight = torch.tensor([[3, -3, 3, 1, 5, 5, 5, 5]])
    assert sp.prune(weight, SparsityPattern(2, 4)).tolist() == [[3, -3, 0, 0, 5, 5, 0, 0]]


def test_code_bits():
    assert [p.code_bits for p in PATTERNS] == [0, 2, 3, 7]
    assert SparsityPattern(2, 4).combinations[5] == (2, 3)


def test_compress_refuses_unpruned_weights():
    with pytest.raises(ValueError, match=r"^weights are not 2:4-sparse: row 1, inputs 4..7 keep 3 "
                                         r"non-zeros \(prune them first\)$"):
        sp.compress(torch.tensor([[1, 0, 0, 1, 0, 0, 0, 0], [0, 0, 0, 0, 1, 1, 1, 0]]),
                    SparsityPattern(2, 4))


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(PATTERNS), st.integers(1, 9), st.integers(1, 40), st.integers(1, 5),
       st.integers(0, 2 ** 31))
def test_sparse_matmul_equals_dense_matmul_of_pruned_weights(pattern, rows, inputs, tokens, seed):
    generator = torch.Generator().manual_seed(seed)
    weight = sp.prune(torch.randint(-128, 128, (rows, inputs), generator=generator), pattern)
    x = torch.randint(-128, 128, (tokens, inputs), generator=generator)
    values, indices = sp.compress(weight, pattern)
    assert torch.equal(sp.decompress(values, indices, pattern, inputs), weight)
    assert torch.equal(sp.sparse_matmul(x, values, indices, pattern), x @ weight.T)


@settings(max_examples=25, deadline=None)
@given(st.sampled_from(["tiny", "pynq-z2"]), st.sampled_from(PATTERNS), st.integers(1, 20),
       st.integers(1, 70), st.integers(0, 2 ** 31))
def test_pack_unpack_round_trip(config_name, pattern, rows, inputs, seed):
    config = preset(config_name)
    generator = torch.Generator().manual_seed(seed)
    weight = sp.prune(torch.randint(-128, 128, (rows, inputs), generator=generator), pattern)
    blocks = sp.pack(weight, pattern, config)
    assert len(blocks.data) == blocks.words * blocks.word_bytes
    assert blocks.word_bytes % config.axi_data_bytes == 0
    assert torch.equal(sp.unpack(blocks, config), weight)


def test_packed_word_matches_the_layout_encoding():
    """The fast packer writes exactly what `weight_word(...).const(...)` encodes."""
    config, pattern = preset("tiny"), SparsityPattern(2, 4)
    weight = sp.prune(torch.randint(-128, 128, (4, 16), generator=torch.Generator().manual_seed(1)),
                      pattern)
    values, indices = sp.compress(weight, pattern)
    code_of = {combo: code for code, combo in enumerate(pattern.combinations)}
    layout = weight_word(config.mac_rows, config.mac_cols, pattern)
    word = layout.const({
        "values": [values[row, :4].reshape(-1).tolist() for row in range(4)],
        "codes": [[code_of[tuple(indices[row, group].tolist())] for group in range(4)]
                  for row in range(4)],
    }).as_bits()
    blocks = sp.pack(weight, pattern, config)
    assert int.from_bytes(blocks.data[:blocks.word_bytes], "little") == word


def test_two_of_four_moves_under_six_tenths_of_the_dense_bytes():
    config = preset("pynq-z2")
    weight = torch.randint(-128, 128, (512, 256))
    dense = sp.pack(weight, SparsityPattern(1, 1), config)
    sparse = sp.pack(sp.prune(weight, SparsityPattern(2, 4)), SparsityPattern(2, 4), config)
    assert len(sparse.data) <= 0.6 * len(dense.data)
    assert sparse.words * 2 == dense.words


def test_pack_refuses_patterns_not_built():
    config = preset("tiny").replace(sparsity=(SparsityPattern(2, 4),))
    with pytest.raises(ValueError, match=r"^sparsity 1:4 is not built into the tiny configuration "
                                         r"\(it has dense, 2:4\)$"):
        sp.pack(torch.zeros(4, 8, dtype=torch.int64), SparsityPattern(1, 4), config)
