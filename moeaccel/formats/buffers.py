"""The on-chip buffers a program addresses: their names (`Buffer`), what each holds and its size in
bytes (`buffer_bytes`), and the strides of rows in them."""

from __future__ import annotations

from amaranth.hdl import signed
from amaranth.lib import data, enum

from . import records
from .epilogue import ACTIVATION_TABLE, CHANNEL_PARAMS
from .router import SELECTION_BIAS, TOKEN_GATE, dispatch_table, router_record

__all__ = ["Buffer", "ACTIVATION_BUFFERS", "buffer_bytes", "round_up", "act_row_bytes",
           "out_row_bytes",
           "act_row", "out_value", "out_dtype"]


class Buffer(enum.Enum, shape=4):
    """On-chip buffers a LOAD fills or a STORE drains."""
    ACT0 = 0                  # activation buffer 0 (int8 rows)
    ACT1 = 1                  # activation buffer 1 (int8 rows: hidden values, gathered tokens)
    WEIGHT = 2                # the weight banks: packed M:N words (`sw.sparsity.pack`) a LINEAR reads
    PARAMS = 3                # per-channel epilogue parameters (`CHANNEL_PARAMS` records)
    TABLE = 4                 # the 256-entry activation table (entry q + 128, int8)
    GATES = 5                 # the gate table of an accumulating pass (`TOKEN_GATE` records)
    OUT = 6                   # the int32 output rows experts accumulate into
    ROUTER_WEIGHTS = 7        # router weights and their logit requantisation (`router_record`)
    ROUTER_BIAS = 8           # sigmoid_bias selection biases (`SELECTION_BIAS` records)
    DISPATCH = 9              # the dispatch table (`dispatch_table`): counts, then queues


ACTIVATION_BUFFERS = (Buffer.ACT0, Buffer.ACT1)

def act_row(config, width: int) -> data.ArrayLayout:
    """A row of `width` int8 activations as DRAM holds it (tokens, attention's Q, K, V and O rows),
    packed."""
    return data.ArrayLayout(signed(config.act_bits), width)


def out_value(config):
    """The shape of an OUT value: the accumulator's int32."""
    return signed(config.acc_bits)


def out_dtype(config):
    """The numpy dtype of an OUT value, as the buffer's bytes hold it."""
    return records.dtype(out_value(config))


def buffer_bytes(config) -> dict[Buffer, int]:
    """Capacity of each on-chip buffer in bytes, from the configuration and the records it holds."""
    return {
        Buffer.ACT0: config.act_buffer_bytes, Buffer.ACT1: config.act_buffer_bytes,
        Buffer.WEIGHT: config.weight_banks * config.weight_buffer_bytes,
        Buffer.PARAMS: config.max_tiles * config.mac_rows * CHANNEL_PARAMS.size,
        Buffer.TABLE: ACTIVATION_TABLE.size // 8,
        Buffer.GATES: config.max_tokens * TOKEN_GATE.size,
        Buffer.OUT: config.out_buffer_bytes,
        Buffer.ROUTER_WEIGHTS: config.max_experts * router_record(config).size // 8,
        Buffer.ROUTER_BIAS: config.max_experts * SELECTION_BIAS.size,
        Buffer.DISPATCH: dispatch_table(config).size // 8,
    }


def round_up(value, multiple: int):
    """`value` rounded up to a multiple of `multiple`: an int, or (`multiple` a power of two) an
    Amaranth value."""
    if multiple & (multiple - 1) == 0:
        shift = multiple.bit_length() - 1
        return ((value + (multiple - 1)) >> shift) << shift
    if not isinstance(value, int):
        raise TypeError(f"rows in hardware are rounded to powers of two, not to {multiple}")
    return -(-value // multiple) * multiple


def act_row_bytes(config, width):
    """Bytes between rows of `width` int8 values in an activation buffer (whole words)."""
    return round_up(width, config.act_word_bytes)


def out_row_bytes(config, width):
    """Bytes between rows of `width` int32 values in OUT (whole tiles of ``mac_rows``)."""
    return round_up(width, config.mac_rows) * records.size(out_value(config))
