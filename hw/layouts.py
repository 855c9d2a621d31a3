"""Payload layouts of the streams between blocks, as `lib.data` layouts: the one definition that the
gateware, the emulator, the host and the testbenches encode and decode with.

Field widths come from `sw.numerics`, the definition of the arithmetic, never restated here.
"""

from amaranth.hdl import signed, unsigned
from amaranth.lib import data

from ..sw import numerics as nx
from ..sw.sparsity import code_bits

__all__ = ["CHANNEL_PARAMS", "EPILOGUE_LANE", "TABLE_WRITE", "epilogue_in", "epilogue_out", "weight_word",
           "pattern_bits", "mac_in", "mac_out"]

# Per-channel epilogue parameters.
CHANNEL_PARAMS = data.StructLayout({
    "bias": signed(32),
    "multiplier": unsigned(nx.MULT_BITS),
    "shift": unsigned(nx.SHIFT_BITS),
})

# One output channel's operands: the int32 accumulator, its parameters, and whether the activation
# table applies to it (else the requantised value passes through).
EPILOGUE_LANE = data.StructLayout({
    "acc": signed(32),
    "params": CHANNEL_PARAMS,
    "apply_table": unsigned(1),
})

# One entry of the 256-entry activation table: entry `index` is the output for input `index - 128`.
TABLE_WRITE = data.StructLayout({
    "index": unsigned(8),
    "value": signed(8),
})


def epilogue_in(lanes: int, tag_bits: int = 0) -> data.StructLayout:
    """A row of `lanes` accumulators with their parameters, and a tag that travels with the row."""
    return data.StructLayout({
        "lanes": data.ArrayLayout(EPILOGUE_LANE, lanes),
        "tag": unsigned(tag_bits),
    })


def epilogue_out(lanes: int, tag_bits: int = 0) -> data.StructLayout:
    """A row of `lanes` int8 results, with the tag its input row carried."""
    return data.StructLayout({
        "values": data.ArrayLayout(signed(8), lanes),
        "tag": unsigned(tag_bits),
    })


def weight_word(rows: int, cols: int, pattern) -> data.StructLayout:
    """One word of a weight block: for each of `rows` output channels, `cols` kept int8 values (lane
    `l` belongs to group ``l // N`` of the chunk) and, unless dense, one code per group naming which
    `N` of its `M` inputs were kept (the rank of the index set among ``combinations(range(M), N)``).

    Words are what one cycle of the MAC array consumes; `sw.sparsity.pack` writes them, bytes
    little-endian, each padded to whole bus beats.
    """
    fields = {"values": data.ArrayLayout(data.ArrayLayout(signed(8), cols), rows)}
    if code_bits(pattern):
        fields["codes"] = data.ArrayLayout(
            data.ArrayLayout(unsigned(code_bits(pattern)), cols // pattern.n), rows)
    return data.StructLayout(fields)


def pattern_bits(config) -> int:
    """Width of a pattern selector: an index into ``config.patterns`` (0 is dense)."""
    return max(1, (len(config.patterns) - 1).bit_length())


def mac_in(config, tag_bits: int = 0) -> data.StructLayout:
    """One cycle of work for the MAC array: an activation window, a weight word, the pattern, and
    whether this word starts (`first`) or ends (`last`) an output row; the tag travels along."""
    return data.StructLayout({
        "window": data.ArrayLayout(signed(8), config.act_word_bytes),
        "weights": unsigned(config.weight_word_bits),
        "pattern": unsigned(pattern_bits(config)),
        "first": unsigned(1),
        "last": unsigned(1),
        "tag": unsigned(tag_bits),
    })


def mac_out(config, tag_bits: int = 0) -> data.StructLayout:
    """A finished row of ``mac_rows`` int32 dot products, with the tag of its last word."""
    return data.StructLayout({
        "sums": data.ArrayLayout(signed(32), config.mac_rows),
        "tag": unsigned(tag_bits),
    })
