"""AccelConfig: presets are valid and bad fields are refused with a message naming the field."""

import pytest

from moeaccel.config import PRESETS, AccelConfig, ConfigError, SparsityPattern, preset


@pytest.mark.parametrize("name", PRESETS)
def test_presets_are_valid(name):
    config = preset(name)
    assert config.name == name
    assert config.mac_units == config.mac_rows * config.mac_cols
    assert config.patterns[0].is_dense and config.supports("dense")


def test_preset_sizes_required_by_the_design():
    assert preset("pynq-z2").mac_units <= 220                      # xc7z020 has 220 DSP48E1
    assert preset("pynq-z2").max_experts >= 64 and preset("pynq-z2").max_k >= 8
    assert preset("zcu104").max_experts >= 256 and preset("zcu104").max_k >= 8
    assert all(config.max_seq_len >= 1024 for config in PRESETS.values())
    assert all(config.supports(p) for config in PRESETS.values() for p in ("1:4", "2:4", "4:8"))


def test_unknown_preset_lists_the_names():
    with pytest.raises(ConfigError, match=r"^no preset named 'zcu102'; presets are: kv260, pynq-z2, "
                                          r"tiny, zcu104$"):
        preset("zcu102")


@pytest.mark.parametrize("changes, message", [
    (dict(mac_rows=12), r"mac_rows must be a power of two from 1 to 128, not 12$"),
    (dict(mac_cols=0), r"mac_cols must be a power of two from 1 to 128, not 0$"),
    (dict(act_bits=16), r"act_bits must be 8 \(the int8 activation datapath\), not 16$"),
    (dict(acc_bits=48), r"acc_bits must be 32 \(int32 accumulation\), not 48$"),
    (dict(weight_banks=3), r"weight_banks must be 2 \(double-buffered expert weights\), not 3$"),
    (dict(weight_buffer_bytes=1000), r"weight_buffer_bytes must be a power of two of at least 256, "
                                     r"not 1000$"),
    (dict(max_k=9, max_experts=8), r"max_k must be at most max_experts=8, not 9$"),
    (dict(vector_lanes=6), r"vector_lanes must be a power of two from 1 to 64, not 6$"),
    (dict(vector_lanes=128), r"vector_lanes must be a power of two from 1 to 64, not 128$"),
    (dict(vector_lanes=64, max_d_model=64, axi_data_width=64),
     r"vector_lanes=64: ROPE rotates heads of whole pairs of lane words, so 2 x vector_lanes must "
     r"not exceed the widest head, 64$"),
    (dict(max_d_ff=1 << 17), r"max_d_ff must be at most 65536 \(int32 accumulation of int8 "
                             r"products\), not 131072$"),
    (dict(axi_data_width=96), r"axi_data_width must be one of 32, 64, 128, 256, 512, not 96$"),
    (dict(clock_mhz=0), r"clock_mhz must be between 1 and 1000, not 0$"),
    (dict(sparsity=(SparsityPattern(4, 16),)), r"sparsity pattern 4:16 has groups wider than "
                                               r"mac_cols=8 \(a group must fit in one row of the "
                                               r"array\)$"),
    (dict(sparsity=("2:4",)), r"sparsity must be a tuple of SparsityPattern, not \('2:4',\)$"),
    (dict(max_tokens=0), r"max_tokens must be a positive integer, not 0$"),
    (dict(sparsity=(SparsityPattern(3, 4),)), r"sparsity pattern 3:4: N must be a power of two "
                                              r"\(a row of the array holds whole groups\)$"),
    (dict(weight_buffer_bytes=1024), r"weight_buffer_bytes=1024 cannot hold one weight block: 32 "
                                     r"words of 40 bytes \(1280 bytes\) are needed for "
                                     r"max_d_model/max_d_ff=256; raise weight_buffer_bytes or lower "
                                     r"max_d_model/max_d_ff$"),
    (dict(act_buffer_bytes=256, max_d_model=128, max_d_ff=512, weight_buffer_bytes=4096),
     r"act_buffer_bytes=256 cannot hold one token of 512 activations \(max_d_model/max_d_ff\)$"),
])
def test_bad_fields_are_refused_by_name(changes, message):
    with pytest.raises(ConfigError, match=r"^tiny: " + message):
        preset("tiny").replace(**changes)


@pytest.mark.parametrize("text, message", [
    ("2-4", r"^sparsity pattern must be 'N:M' \(e.g. '2:4'\) or 'dense', not '2-4'$"),
    ("2:3", r"^sparsity group size M must be a power of two, not 3$"),
    ("5:4", r"^sparsity N must be between 1 and M=4, not 5$"),
])
def test_bad_sparsity_patterns(text, message):
    with pytest.raises(ConfigError, match=message):
        SparsityPattern.parse(text)


def test_patterns_and_derived_figures():
    config = preset("tiny")
    assert [str(p) for p in config.patterns] == ["dense", "1:4", "2:4", "4:8"]
    assert SparsityPattern.parse("dense") == SparsityPattern(1, 1)
    assert SparsityPattern.parse("2:4").density == 0.5
    assert not config.replace(sparsity=()).supports("2:4")
    assert config.axi_data_bytes == 8
    assert config.max_ratio == 4 and config.act_word_bytes == 32
    assert config.weight_bank_words == 32                 # 256 inputs / 8 lanes
    assert config.weight_word_bits == 4 * 8 * 8 + 4 * 8 * 2   # 1:4 has the most index bits
    assert config.max_tiles == 128                        # 2 * 256 SwiGLU rows / 4 rows a tile
    assert config.summary()["sparsity"] == ["1:4", "2:4", "4:8"]
    with pytest.raises(Exception):
        config.mac_rows = 8                                          # frozen
    assert isinstance(AccelConfig(), AccelConfig)
