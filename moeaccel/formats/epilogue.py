"""The epilogue's formats: per-channel parameters (on chip and as PARAMS records), the rows it takes
and gives, and the activation table."""

from __future__ import annotations

from amaranth.hdl import signed, unsigned
from amaranth.lib import data

from .numbers import INT8_MAX, INT8_MIN, MULT_BITS, SHIFT_BITS
from .records import Pair

__all__ = ["REQUANT", "CHANNEL_PARAMS", "EPILOGUE_LANE", "TABLE_ENTRIES", "ACTIVATION_TABLE", "TABLE_WRITE",
           "table_word_write", "epilogue_in", "epilogue_out", "IDENTITY_TABLE"]

# A requantisation by multiplier and shift (`sw.numerics.requantize`): a 15-bit multiplier and a 6-bit
# shift on chip, a uint16 and a uint8 in DRAM.
REQUANT = Pair("requantisation", {
    "multiplier": (unsigned(MULT_BITS), unsigned(16)),
    "shift": (unsigned(SHIFT_BITS), unsigned(8)),
})

# One output channel's bias and requantisation; in DRAM and in the PARAMS buffer an 8-byte record,
# channel c (tile x mac_rows + row) at byte 8 c.
CHANNEL_PARAMS = Pair("channel parameters", {
    "bias": (signed(32), signed(32)),
    **REQUANT.fields,
}, dram_bytes=8)

# One output channel's operands: the int32 accumulator, its parameters, and whether the activation
# table applies to it (else the requantised value passes through).
EPILOGUE_LANE = data.StructLayout({
    "acc": signed(32),
    "params": CHANNEL_PARAMS.onchip(),
    "apply_table": unsigned(1),
})

# The activation table: entry q + 128 is the output for int8 input q (the TABLE buffer's bytes).
TABLE_ENTRIES = INT8_MAX - INT8_MIN + 1
ACTIVATION_TABLE = data.ArrayLayout(signed(8), TABLE_ENTRIES)
IDENTITY_TABLE = tuple(range(INT8_MIN, INT8_MAX + 1))

# One entry of the table written: entry `index` is the output for input `index - 128`.
TABLE_WRITE = data.StructLayout({
    "index": unsigned(8),
    "value": signed(8),
})


def table_word_write(entries: int) -> data.StructLayout:
    """`entries` consecutive entries of the table written at once (a power of two): word `index`
    holds entries ``index x entries ..``; with one entry, `TABLE_WRITE`."""
    if entries == 1:
        return TABLE_WRITE
    if entries & (entries - 1) or not 1 < entries <= TABLE_ENTRIES:
        raise ValueError(f"a table word holds a power of two of entries up to {TABLE_ENTRIES}, "
                         f"not {entries}")
    return data.StructLayout({
        "index": unsigned((TABLE_ENTRIES // entries - 1).bit_length() or 1),
        "values": data.ArrayLayout(signed(8), entries),
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
