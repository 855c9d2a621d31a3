"""Payload layouts of the streams between blocks, as `lib.data` layouts: the one definition that the
gateware, the emulator, the host and the testbenches encode and decode with.

Field widths come from `sw.numerics`, the definition of the arithmetic, never restated here.
"""

from amaranth.hdl import signed, unsigned
from amaranth.lib import data

from ..sw import numerics as nx
from ..sw.sparsity import code_bits

__all__ = ["EPILOGUE_LANE", "TABLE_WRITE", "epilogue_in", "epilogue_out", "weight_word"]

# One output channel's operands: the int32 accumulator and its per-channel epilogue parameters.
EPILOGUE_LANE = data.StructLayout({
    "acc": signed(32),
    "bias": signed(32),
    "multiplier": unsigned(nx.MULT_BITS),
    "shift": unsigned(nx.SHIFT_BITS),
})

# One entry of the 256-entry activation table: entry `index` is the output for input `index - 128`.
TABLE_WRITE = data.StructLayout({
    "index": unsigned(8),
    "value": signed(8),
})


def epilogue_in(lanes: int) -> data.StructLayout:
    """A row of `lanes` accumulators with their parameters; `apply_table` selects the activation
    table (else the requantised value passes through)."""
    return data.StructLayout({
        "lanes": data.ArrayLayout(EPILOGUE_LANE, lanes),
        "apply_table": unsigned(1),
    })


def epilogue_out(lanes: int) -> data.ArrayLayout:
    """A row of `lanes` int8 results."""
    return data.ArrayLayout(signed(8), lanes)


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
